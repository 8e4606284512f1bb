"""Protects wigglegpt/hub.py: hf:// names resolve through huggingface_hub on a Hub cache the test lays
out the way huggingface_hub stores downloads (HF_HUB_CACHE, HF_HUB_OFFLINE=1, no network): a file,
the repo's one checkpoint or export folder, another revision's snapshot (a branch or a commit hash),
a real checkpoint that loads; two models, an uncached file, a malformed name and a missing
huggingface_hub are one line each. A fake Hub on 127.0.0.1 (HF_ENDPOINT, nothing leaves the
machine) serves real downloads into the cache, then read offline, and the Hub's errors (no such
repo, revision or file, a gated repo); an endpoint that does not answer is the no-network line.
Downloads of a large file killed at random points are never served part way from the cache, and
one whose connection drops half way asks again and gets the whole file."""

import hashlib
import http.server
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import numpy as np
import pytest
import torch

from conftest import ROOT, require_module, tiny_config
from model_bio import GPT
from wigglegpt import hub
from wigglegpt.checkpoint import checkpoint_dict, load_checkpoint, load_model, save_checkpoint
from wigglegpt.common import UserError

INSTALL = "pip install huggingface_hub"
MAIN = hashlib.sha1(b"main").hexdigest()  # commit hashes are 40 hex digits
DEV = hashlib.sha1(b"dev").hexdigest()
EXPORT = {"config.json": b'{"model_type": "wigglegpt"}', "model.safetensors": b"weights"}
BIG = random.Random(0).randbytes(4 << 20)  # a checkpoint large enough to be killed while it downloads
CHUNK = 64 << 10  # bodies larger than this are sent slowly, chunk by chunk, as over a real network


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache that huggingface_hub uses, offline."""
    require_module("huggingface_hub", INSTALL)
    from huggingface_hub import constants
    root = tmp_path / "hub"
    root.mkdir()
    for var, value in (("HF_HOME", tmp_path / "home"), ("HF_HUB_CACHE", root), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(var, str(value))
    # huggingface_hub reads its environment once, when first imported: point it there too
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return root


def put(cache, repo_id, files, commit=MAIN, ref="main"):
    """Files of repo_id at commit, cached as huggingface_hub caches a download: refs/<ref> holds the
    commit hash, snapshots/<commit>/<path> the file (a plain file, as huggingface_hub keeps it where
    symlinks into blobs/ are not available). Returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    if ref:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    for path, data in files.items():
        target = repo / "snapshots" / commit / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return repo / "snapshots" / commit


def one_line_error(name, revision=None):
    with pytest.raises(UserError) as info:
        hub.resolve(name, revision)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_the_layout_is_the_one_huggingface_hub_reads(cache):
    hf = require_module("huggingface_hub", INSTALL)
    main = put(cache, "owner/repo", {"ckpt_pretrain.pt": b"main"})
    dev = put(cache, "owner/repo", {"ckpt_pretrain.pt": b"dev"}, commit=DEV, ref="dev")
    (repo,) = hf.scan_cache_dir(cache).repos
    assert repo.repo_id == "owner/repo"
    assert {(r.commit_hash, tuple(r.refs)) for r in repo.revisions} == {(MAIN, ("main",)), (DEV, ("dev",))}
    assert hf.try_to_load_from_cache("owner/repo", "ckpt_pretrain.pt") == str(main / "ckpt_pretrain.pt")
    assert hf.try_to_load_from_cache("owner/repo", "ckpt_pretrain.pt", revision="dev") == str(dev / "ckpt_pretrain.pt")


def test_names():
    assert hub.is_hub_name("hf://owner/repo") and not hub.is_hub_name("owner/repo")
    assert not hub.is_hub_name("resume") and not hub.is_hub_name(None)
    assert hub.split_name("hf://owner/repo") == ("owner/repo", None)
    assert hub.split_name("hf://owner/repo/") == ("owner/repo", None)
    assert hub.split_name("hf://owner/repo/sub/ckpt.pt") == ("owner/repo", "sub/ckpt.pt")


@pytest.mark.parametrize("name", ["hf://", "hf://owner", "hf://owner/", "hf://owner//ckpt.pt", "owner/repo"])
def test_a_malformed_name_is_one_line(name):
    message = one_line_error(name)
    assert repr(name) in message and "hf://OWNER/REPO" in message


def test_a_name_the_hub_cannot_hold_is_one_line(cache):
    message = one_line_error("hf://own er/repo")
    assert "not a valid Hub name" in message and "hf://OWNER/REPO" in message


def test_a_file_name_resolves_to_the_cached_file(cache):
    snapshot = put(cache, "owner/repo", {"ckpt_pretrain.pt": b"a", "ckpt_finetune.pt": b"b", "sub/x.pt": b"c"})
    assert hub.resolve("hf://owner/repo/ckpt_pretrain.pt") == str(snapshot / "ckpt_pretrain.pt")
    assert hub.resolve("hf://owner/repo/sub/x.pt") == str(snapshot / "sub" / "x.pt")


def test_the_repo_name_picks_its_one_checkpoint(cache):
    snapshot = put(cache, "owner/repo", {"ckpt_pretrain.pt": b"a", "README.md": b"# card", ".gitattributes": b""})
    assert hub.resolve("hf://owner/repo") == str(snapshot / "ckpt_pretrain.pt")


def test_two_checkpoints_are_one_line_naming_both(cache):
    put(cache, "owner/repo", {"ckpt_pretrain.pt": b"a", "ckpt_finetune.pt": b"b", "README.md": b""})
    message = one_line_error("hf://owner/repo")
    assert "hf://owner/repo/ckpt_finetune.pt, hf://owner/repo/ckpt_pretrain.pt" in message
    put(cache, "owner/empty", {"README.md": b""})
    assert "no checkpoint" in one_line_error("hf://owner/empty") and "README.md" in one_line_error("hf://owner/empty")


def test_an_export_folder_is_picked_and_resolved_as_a_folder(cache):
    snapshot = put(cache, "owner/repo", {**{f"export/{f}": data for f, data in EXPORT.items()}, "README.md": b""})
    folder = str(snapshot / "export")
    assert hub.resolve("hf://owner/repo") == folder
    assert hub.resolve("hf://owner/repo/export") == folder
    assert hub.resolve("hf://owner/repo/export/model.safetensors") == folder
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]


def test_an_export_at_the_root_beside_a_checkpoint(cache):
    snapshot = put(cache, "owner/repo", {**EXPORT, "ckpt.pt": b"a"})
    message = one_line_error("hf://owner/repo")
    assert "hf://owner/repo/ckpt.pt, hf://owner/repo/model.safetensors" in message
    assert hub.resolve("hf://owner/repo/model.safetensors") == str(snapshot)
    assert hub.resolve("hf://owner/repo/ckpt.pt") == str(snapshot / "ckpt.pt")


def test_a_folder_cached_in_part_is_not_an_export_offline(cache):
    put(cache, "owner/repo", {"export/config.json": EXPORT["config.json"]})
    message = one_line_error("hf://owner/repo/export")
    assert "not in the Hugging Face cache" in message


def test_a_revision_resolves_that_snapshot(cache):
    put(cache, "owner/repo", {"ckpt.pt": b"main"})
    dev = put(cache, "owner/repo", {"ckpt.pt": b"dev", "extra.pt": b"x"}, commit=DEV, ref="dev")
    old = put(cache, "owner/repo", {"ckpt.pt": b"old"}, commit="0" * 40, ref=None)  # a hash no ref names
    assert open(hub.resolve("hf://owner/repo/ckpt.pt"), "rb").read() == b"main"
    assert hub.resolve("hf://owner/repo/ckpt.pt", revision="dev") == str(dev / "ckpt.pt")
    assert hub.resolve("hf://owner/repo/ckpt.pt", revision=DEV) == str(dev / "ckpt.pt")
    assert hub.resolve("hf://owner/repo", revision="0" * 40) == str(old / "ckpt.pt")
    assert hub.resolve("hf://owner/repo") == hub.resolve("hf://owner/repo/ckpt.pt")  # main has one model
    assert "2 models" in one_line_error("hf://owner/repo", revision="dev")  # dev has two


def test_what_the_cache_lacks_offline_is_one_line(cache):
    put(cache, "owner/repo", {"ckpt_pretrain.pt": b"a"})
    for name, revision in (("hf://owner/repo/ckpt_finetune.pt", None), ("hf://owner/other/ckpt.pt", None),
                           ("hf://owner/other", None), ("hf://owner/repo/ckpt_pretrain.pt", "v2")):
        message = one_line_error(name, revision)
        assert message.startswith(name) and "not in the Hugging Face cache" in message, message
        assert str(cache) in message and "HF_HUB_OFFLINE" in message, message
        assert (f"revision {revision!r}" in message) == bool(revision), message


def test_without_huggingface_hub_the_line_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import huggingface_hub fails
    with pytest.raises(UserError, match="huggingface_hub, which is not installed: pip install huggingface_hub"):
        hub.resolve("hf://owner/repo/ckpt.pt")


def test_a_real_checkpoint_from_the_cache_loads(cache, tmp_path):
    torch.manual_seed(0)
    model = GPT(tiny_config()).eval()
    snapshot = put(cache, "edeneldith/WiggleGPT", {"README.md": b""})
    save_checkpoint(checkpoint_dict(model, iter_num=3), str(snapshot / "ckpt_pretrain.pt"))
    path = hub.resolve("hf://edeneldith/WiggleGPT/ckpt_pretrain.pt")
    assert load_checkpoint(path)["iter_num"] == 3
    loaded, _ = load_model(hub.resolve("hf://edeneldith/WiggleGPT"))
    idx = torch.randint(0, 96, (1, 8))
    assert torch.equal(model(idx)[0], loaded.eval()(idx)[0])


# ---------------------------------------------------------------------------------------
# a fake Hub on 127.0.0.1: downloads and the Hub's own errors, through huggingface_hub's HTTP code

class FakeHub(http.server.BaseHTTPRequestHandler):
    """Just enough of the Hub's HTTP API for huggingface_hub: model info, the tree listing and
    resolve (HEAD and GET), with the Hub's error headers (X-Error-Code)."""
    repos = {  # repo_id: (gated, {revision: (commit, {path: bytes})})
        "owner/repo": (False, {"main": (MAIN, {"ckpt.pt": b"main weights", "README.md": b"# card",
                                               **{f"export/{f}": d for f, d in EXPORT.items()}}),
                               "dev": (DEV, {"ckpt.pt": b"dev weights"})}),
        "owner/gated": (True, {"main": (MAIN, {"ckpt.pt": b"secret"})}),
        "owner/big": (False, {"main": (MAIN, {"big.pt": BIG})}),
    }
    down = False  # True: every request is a 503, as when the Hub is down
    sent = 0  # bytes of large bodies sent so far
    cut_at = None  # an offset: the next large body stops there once, as when the connection drops
    gets = []  # the Range header of each file GET (None: the whole file)

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.answer(send_body=False)

    def do_GET(self):
        self.answer(send_body=True)

    def answer(self, send_body):
        if self.down:
            return self.send(503)
        parts = urllib.parse.urlsplit(self.path).path.strip("/").split("/")
        api = parts[:2] == ["api", "models"]
        parts = [urllib.parse.unquote(p) for p in parts[2 if api else 0:]]
        repo_id, kind, revision, path = "/".join(parts[:2]), *(parts[2:4] + ["", "main"])[:2], "/".join(parts[4:])
        if repo_id not in self.repos:
            return self.send(404, error="RepoNotFound")
        gated, revisions = self.repos[repo_id]
        found = [c for name, c in revisions.items() if revision in (name, c[0])] if kind else [revisions["main"]]
        if not found:
            return self.send(404, error="RevisionNotFound")
        commit, files = found[0]
        headers = {"X-Repo-Commit": commit}
        if api and kind in ("", "revision"):
            info = {"id": repo_id, "sha": commit, "siblings": [{"rfilename": f} for f in files]}
            return self.send(200, json.dumps(info).encode(), headers, send_body)
        if api and kind == "tree":
            tree = [{"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                    for f, d in files.items()]
            return self.send(200, json.dumps(tree).encode(), headers, send_body)
        if gated:
            return self.send(403, error="GatedRepo")
        if path not in files:
            return self.send(404, error="EntryNotFound", headers=headers)
        data = files[path]
        headers.update({"ETag": f'"{hashlib.sha1(data).hexdigest()}"', "Accept-Ranges": "bytes"})
        if send_body:
            FakeHub.gets.append(self.headers.get("Range"))
        if asked := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "")):  # a resumed download
            start, end = int(asked[1]), min(int(asked[2] or len(data) - 1), len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self.send(206, data[start:end + 1], headers, send_body)
        return self.send(200, data, headers, send_body)

    def send(self, status, body=b"", headers=None, send_body=True, error=None):
        self.send_response(status)
        for key, value in {**(headers or {}), **({"X-Error-Code": error} if error else {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body and len(body) > CHUNK:
            self.stream(body)
        elif send_body:
            self.wfile.write(body)

    def stream(self, body):
        for at in range(0, len(body), CHUNK):
            if at == FakeHub.cut_at:
                FakeHub.cut_at = None
                return  # the connection closes short of Content-Length
            try:
                self.wfile.write(body[at:at + CHUNK])
            except OSError:  # the client was killed
                return
            FakeHub.sent += len(body[at:at + CHUNK])
            time.sleep(0.015)


@pytest.fixture
def fake_hub(tmp_path):
    """(environment for a command that talks to the fake Hub, its cache folder)."""
    require_module("huggingface_hub", INSTALL)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}", HF_HUB_OFFLINE="0",
               HF_HOME=str(tmp_path / "home"), HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_DISABLE_TELEMETRY="1")
    yield env, tmp_path / "hub"
    server.shutdown()
    server.server_close()


RESOLVE = [sys.executable, "-c", "import sys; from wigglegpt.common import run_main; from wigglegpt.hub import "
           "resolve; run_main(lambda: print(resolve(sys.argv[1], sys.argv[2] or None)))"]


def resolve_command(env, name, revision=""):
    """resolve() in a fresh process (huggingface_hub reads the environment there), errors as the
    scripts print them."""
    return subprocess.run([*RESOLVE, name, revision], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_downloads_go_into_the_cache_and_are_served_from_it_offline(fake_hub):
    env, cache = fake_hub
    done = resolve_command(env, "hf://owner/repo/ckpt.pt")
    assert done.returncode == 0, done.stderr
    path = done.stdout.strip()
    assert path.startswith(str(cache)) and open(path, "rb").read() == b"main weights"
    dev = resolve_command(env, "hf://owner/repo/ckpt.pt", "dev")
    assert dev.returncode == 0 and open(dev.stdout.strip(), "rb").read() == b"dev weights", dev.stderr
    export = resolve_command(env, "hf://owner/repo/export")
    assert export.returncode == 0, export.stderr
    assert sorted(os.listdir(export.stdout.strip())) == ["config.json", "model.safetensors"]
    two = resolve_command(env, "hf://owner/repo")
    assert two.returncode == 2 and "hf://owner/repo/ckpt.pt, hf://owner/repo/export" in two.stderr
    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:1"}
    for name, revision, expected in (("hf://owner/repo/ckpt.pt", "", path), ("hf://owner/repo/ckpt.pt", "dev", dev.stdout),
                                     ("hf://owner/repo/export", "", export.stdout)):
        again = resolve_command(offline, name, revision)
        assert (again.returncode, again.stdout) == (0, expected.strip() + "\n"), again.stderr


@pytest.mark.parametrize("name, revision, says", [
    ("hf://owner/missing/ckpt.pt", "", "no model repository owner/missing on the Hub"),
    ("hf://owner/repo/ckpt.pt", "v9", "owner/repo has no revision 'v9'"),
    ("hf://owner/repo/nope.pt", "", "owner/repo has no file 'nope.pt'; its models: hf://owner/repo/ckpt.pt"),
    ("hf://owner/gated/ckpt.pt", "", "owner/gated is gated: accept its terms on https://huggingface.co/owner/gated, "
                                     "then log in with `hf auth login`"),
])
def test_the_hubs_errors_are_one_line(fake_hub, name, revision, says):
    done = resolve_command(fake_hub[0], name, revision)
    assert done.returncode == 2 and done.stderr.startswith(f"error: {name}"), done.stderr
    assert says in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_without_a_network_the_cache_still_serves_and_the_rest_is_one_line(fake_hub):
    env, cache = fake_hub
    assert resolve_command(env, "hf://owner/repo/ckpt.pt").returncode == 0
    with socket.socket() as s:  # a port nothing listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        unreachable = {**env, "HF_ENDPOINT": f"http://127.0.0.1:{s.getsockname()[1]}"}
    done = resolve_command(unreachable, "hf://owner/repo/ckpt.pt")
    assert done.returncode == 0 and open(done.stdout.strip(), "rb").read() == b"main weights", done.stderr
    assert resolve_command(unreachable, "hf://owner/repo").returncode == 0  # the cache holds one model
    for name in ("hf://owner/repo/ckpt_finetune.pt", "hf://owner/other"):
        done = resolve_command(unreachable, name)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert f"error: {name} could not be downloaded (the Hub cannot be reached)" in done.stderr
        assert str(cache) in done.stderr


def test_when_the_hub_is_down_the_cache_still_serves(fake_hub, monkeypatch):
    env, _ = fake_hub
    cached = resolve_command(env, "hf://owner/repo/ckpt.pt")
    assert cached.returncode == 0, cached.stderr
    monkeypatch.setattr(FakeHub, "down", True)
    done = resolve_command(env, "hf://owner/repo/ckpt.pt")
    assert (done.returncode, done.stdout) == (0, cached.stdout), done.stderr
    done = resolve_command(env, "hf://owner/repo/ckpt_finetune.pt")
    assert done.returncode == 2 and "could not be downloaded" in done.stderr and done.stderr.count("\n") == 1


def test_downloads_killed_at_random_points_never_leave_part_of_a_file(fake_hub, monkeypatch):
    """kill -9 at random points of several downloads of a large file (named by the file or by the
    repo): after each, offline, the cache has nothing to give (never part of the file); the run that
    finishes, its connection cut once half way, asks again and gives the Hub's bytes, then offline too."""
    env = fake_hub[0]
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    want = hashlib.sha256(BIG).hexdigest()
    rng = random.Random("download-kills")
    kills, mid_download = 5, 0
    for attempt in range(kills):
        name = ("hf://owner/big/big.pt", "hf://owner/big")[attempt % 2]  # the repo's one model
        monkeypatch.setattr(FakeHub, "sent", 0)
        target = rng.randrange(len(BIG))
        victim = subprocess.Popen([*RESOLVE, name, ""], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while FakeHub.sent < target and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        victim.kill()
        _, err = victim.communicate(timeout=30)
        assert victim.returncode in (0, -signal.SIGKILL), err.decode(errors="replace")[-2000:]  # 0: done first
        again = resolve_command(offline, name)
        if again.returncode == 0:  # it had finished before the kill: the whole file
            assert hashlib.sha256(open(again.stdout.strip(), "rb").read()).hexdigest() == want
            continue
        assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
        assert "not in the Hugging Face cache" in again.stderr, again.stderr
        mid_download += victim.returncode == -signal.SIGKILL
    assert mid_download >= kills // 2, f"only {mid_download} of {kills} kills came while it downloaded"
    monkeypatch.setattr(FakeHub, "cut_at", len(BIG) // 2)
    monkeypatch.setattr(FakeHub, "gets", [])
    done = resolve_command(env, name)
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(open(done.stdout.strip(), "rb").read()).hexdigest() == want
    # the second GET: from the start, or (Range) from what was written; huggingface_hub 2.4 writes in
    # 10 MiB reads, so it starts this 4 MiB file over
    assert FakeHub.cut_at is None and len(FakeHub.gets) == 2, FakeHub.gets
    again = resolve_command(offline, name)
    assert (again.returncode, again.stdout) == (0, done.stdout), again.stderr


# ---------------------------------------------------------------------------------------
# through the real command lines: every script that loads a model takes hf:// names

def tiny_checkpoint_bytes(tmp_path, seed):
    torch.manual_seed(seed)
    model = GPT(tiny_config(vocab_size=50304))
    with torch.no_grad():  # weights far from the init, so two seeds write different text
        for p in model.parameters():
            p.normal_(std=0.5)
    path = tmp_path / f"tiny{seed}.pt"
    save_checkpoint(checkpoint_dict(model), str(path))
    return path.read_bytes()


def test_the_scripts_load_hub_names_offline_from_the_cache(cache, tmp_path):
    put(cache, "owner/wiggle", {"ckpt_pretrain.pt": tiny_checkpoint_bytes(tmp_path, 0)})
    put(cache, "owner/wiggle", {"ckpt_pretrain.pt": tiny_checkpoint_bytes(tmp_path, 1)}, commit=DEV, ref="dev")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # HF_HUB_CACHE and HF_HUB_OFFLINE=1 from the fixture

    def run(script, *args):
        return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)

    sampling = ["--start=Hello", "--max_new_tokens=8", "--num_samples=1", "--temperature=0", "--device=cpu"]
    main = run("sample_bio.py", "--init_from=hf://owner/wiggle/ckpt_pretrain.pt", *sampling)
    assert main.returncode == 0 and main.stdout.startswith("Hello"), main.stderr
    assert run("sample_bio.py", "--init_from=hf://owner/wiggle", *sampling).stdout == main.stdout  # its one checkpoint
    dev = run("sample_bio.py", "--init_from=hf://owner/wiggle/ckpt_pretrain.pt", "--revision=dev", *sampling)
    assert dev.returncode == 0 and dev.stdout != main.stdout  # the other commit's weights
    chat = run("chat_bio.py", "--init_from=hf://owner/wiggle/ckpt_pretrain.pt", "--prompt=Hi", "--max_new_tokens=4",
               "--device=cpu")
    assert chat.returncode == 0, chat.stderr
    missing = run("sample_bio.py", "--init_from=hf://owner/wiggle/ckpt_finetune.pt", *sampling)
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and len(lines) == 1 and "Traceback" not in missing.stderr, missing.stderr
    assert "hf://owner/wiggle/ckpt_finetune.pt" in lines[0] and "HF_HUB_OFFLINE" in lines[0], lines[0]
    data = tmp_path / "data" / "pat"
    data.mkdir(parents=True)
    for split in ("train", "val"):
        np.resize(np.arange(64, dtype=np.uint16), 4000).tofile(data / f"{split}.bin")
    tune = run("train_bio.py", "--init_from=hf://owner/wiggle/ckpt_pretrain.pt", f"--data_root={tmp_path / 'data'}",
               "--dataset=pat", f"--out_dir={tmp_path / 'out'}", "--device=cpu", "--block_size=16", "--batch_size=2",
               "--gradient_accumulation_steps=1", "--max_iters=1", "--eval_interval=1", "--eval_iters=1",
               "--warmup_iters=0", "--lr_decay_iters=2", "--compile=False")
    assert tune.returncode == 0, tune.stderr
    assert "fine-tuning from hf://owner/wiggle/ckpt_pretrain.pt" in tune.stdout
