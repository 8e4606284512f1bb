"""Protects every writer against a full disk or a missing permission: training through the real
command line (a checkpoint write that fails with ENOSPC is one line on stderr that names the file
and what to do, exit code 2, the previous ckpt.pt and ckpt_best.pt intact, no temporary file),
wigglegpt.checkpoint's save on a permission error, and the data-prep writers (TokenWriter, the progress
record, meta.json in finish): the old dataset survives and --resume completes the interrupted one.
The same on a REAL full filesystem (a small tmpfs mounted by the test when it runs as root, as CI
does; skipped with the reason elsewhere): training stops with one line and resumes once space is
freed, torch.save's ENOSPC (a RuntimeError from its zip writer) still names the cause, metrics.jsonl
on a full and on a read-only filesystem, data preparation resumed to byte-identical bins, an export
(safetensors and tokenizers report ENOSPC in errors of their own) that keeps the folder it would
replace, and a download into the Hugging Face cache that leaves no partial file to be taken."""

import contextlib
import errno
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from wigglegpt import checkpoint, dataprep, metrics
from conftest import ROOT, require_module, tiny_config
from model_bio import GPT
from wigglegpt.common import UserError
from test_hub import fake_hub  # noqa: F401  (the fixture)
from test_train import TRAIN, argv, cli_env, load, tiny

DISK_FULL = OSError(errno.ENOSPC, "No space left on device")


def test_training_on_a_full_disk_stops_with_one_line_and_keeps_the_checkpoints(tmp_path):
    s = tiny(tmp_path, max_iters=8, eval_interval=4)
    child = tmp_path / "full_disk.py"
    child.write_text(
        "import errno, sys, torch\n"
        f"sys.path.insert(0, {ROOT!r})\n"
        "real_save, calls = torch.save, []\n"
        "def save(obj, f, *args, **kwargs):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:  # the second checkpoint: the disk fills up half way\n"
        "        f.write(b'half a checkpoint')\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "    return real_save(obj, f, *args, **kwargs)\n"
        "torch.save = save\n"
        "import train_bio\n"
        "from wigglegpt.common import run_main\n"
        "run_main(lambda: train_bio.main(sys.argv[1:]))\n")
    r = subprocess.run([sys.executable, str(child), *argv(s)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=cli_env())
    ckpt = os.path.join(s["out_dir"], "ckpt.pt")
    assert r.returncode == 2, r.stderr
    assert r.stderr == (f"error: could not write {ckpt}: No space left on device; free some disk space, then "
                        f"continue from the last good {ckpt} with --init_from=resume\n")
    assert sorted(os.listdir(s["out_dir"])) == ["ckpt.pt", "ckpt_best.pt", "metrics.jsonl"]  # no temporary file
    assert load(ckpt)["iter_num"] == 0 and load(os.path.join(s["out_dir"], "ckpt_best.pt"))["iter_num"] == 0


def test_checkpoint_save_without_permission(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    checkpoint.save_checkpoint(checkpoint.checkpoint_dict(GPT(tiny_config()), iter_num=1), path)

    def no_permission(name, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", name)
    monkeypatch.setattr(checkpoint, "open", no_permission, raising=False)
    with pytest.raises(UserError, match=r"could not write .*ckpt\.pt: Permission denied; make the folder writable"):
        checkpoint.save_checkpoint(checkpoint.checkpoint_dict(GPT(tiny_config()), iter_num=2), path)
    assert checkpoint.load_checkpoint(path)["iter_num"] == 1 and os.listdir(tmp_path) == ["ckpt.pt"]


# ---------------------------------------------------------------------------------------
# data preparation

ROWS = [{"text": f"document {i}: " + "the quick brown fox jumps over the lazy dog " * (5 + i % 7)} for i in range(120)]


def prepare(out_dir, rows=ROWS, **kwargs):
    return dataprep.prepare(iter(rows), dataprep.TextEncoder("text"), str(out_dir), source="test rows",
                                recipe={"kind": "text"}, val_fraction=0.1, batch_size=10, flush_bytes=2000, **kwargs)


def fail_fsync(monkeypatch, predicate):
    """os.fsync raises ENOSPC for the files predicate(path, nth call for that path) picks."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to name the file behind a descriptor")
    real, calls = os.fsync, {}

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        calls[path] = calls.get(path, 0) + 1
        if predicate(path, calls[path]):
            raise DISK_FULL
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)


def files(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def test_data_prep_first_chunk_fails_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    fail_fsync(monkeypatch, lambda path, n: path.endswith("train.partial.bin"))
    with pytest.raises(UserError, match=r"could not write .*train\.partial\.bin: No space left on device; "
                                        r"free some disk space, then run again with --overwrite"):
        prepare(tmp_path / "out")
    assert not (tmp_path / "out").exists()  # not even the folder this run made


def test_data_prep_fails_mid_run_then_resumes_to_the_same_output(tmp_path, monkeypatch, capsys):
    prepare(tmp_path / "clean")
    fail_fsync(monkeypatch, lambda path, n: path.endswith("train.partial.bin") and n == 3)
    with pytest.raises(UserError, match=r"train\.partial\.bin: No space left on device; free some disk space, "
                                        r"then continue with --resume after the last saved chunk"):
        prepare(tmp_path / "out")
    monkeypatch.undo()
    prepare(tmp_path / "out", resume=True)
    clean, resumed = files(tmp_path / "clean"), files(tmp_path / "out")
    assert sorted(resumed) == ["meta.json", "train.bin", "val.bin"]
    assert resumed["train.bin"] == clean["train.bin"] and resumed["val.bin"] == clean["val.bin"]


def test_data_prep_meta_fails_and_the_old_dataset_survives(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    prepare(out, rows=ROWS[:40])
    old = files(out)
    fail_fsync(monkeypatch, lambda path, n: path.endswith("meta.json.tmp"))
    with pytest.raises(UserError, match=r"meta\.json: No space left on device; free some disk space, then "
                                        r"continue with --resume"):
        prepare(out, overwrite=True)
    now = files(out)
    assert {k: now[k] for k in old} == old  # train.bin, val.bin and meta.json as they were
    assert "meta.json.tmp" not in now and "prepare.progress" in now
    monkeypatch.undo()
    meta = prepare(out, resume=True)
    assert meta["train_docs"] + meta["val_docs"] == len(ROWS)
    assert np.fromfile(out / "train.bin", dtype=np.uint16).size == meta["train_tokens"]


# ---------------------------------------------------------------------------------------
# a real full filesystem: a small tmpfs, mounted here when the tests run as root (as CI does)

@contextlib.contextmanager
def small_filesystem(path, size_kb):
    """A tmpfs of size_kb KiB at path for the with block; the test is skipped, saying why, where
    one cannot be mounted (not root, or no mount permission in this container)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a real full filesystem needs root to mount a small tmpfs (CI runs as root)")
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def resize(path, size_kb):
    subprocess.run(["mount", "-o", f"remount,size={size_kb}k", str(path)], check=True, capture_output=True)


def test_training_on_a_really_full_filesystem_is_one_line_and_resumes_after(tmp_path):
    # the checkpoint's size, from the same run on the ordinary disk
    sized = tiny(tmp_path, max_iters=4, eval_interval=4, out_dir=str(tmp_path / "sized"))
    assert subprocess.run([sys.executable, TRAIN, *argv(sized)], cwd=ROOT, capture_output=True,
                          env=cli_env(), timeout=120).returncode == 0
    size_kb = os.path.getsize(tmp_path / "sized" / "ckpt.pt") // 1024
    with small_filesystem(tmp_path / "small", size_kb * 3 // 2 + 32) as small:
        # room for one checkpoint (and its best-file link) but not for the next one beside it
        s = tiny(tmp_path, max_iters=8, eval_interval=4, out_dir=str(small / "out"))
        r = subprocess.run([sys.executable, TRAIN, *argv(s)], cwd=ROOT, capture_output=True, text=True,
                           timeout=120, env=cli_env())
        ckpt = os.path.join(s["out_dir"], "ckpt.pt")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr == (f"error: could not write {ckpt}: No space left on device; free some disk space, then "
                            f"continue from the last good {ckpt} with --init_from=resume\n")
        assert sorted(os.listdir(s["out_dir"])) == ["ckpt.pt", "ckpt_best.pt", "metrics.jsonl"]  # no temporary file
        assert load(ckpt)["iter_num"] == 4
        resize(small, size_kb * 4 + 64)  # space freed: the run carries on from its last good checkpoint
        r = subprocess.run([sys.executable, TRAIN, *argv({**s, "init_from": "resume"})], cwd=ROOT,
                           capture_output=True, text=True, timeout=120, env=cli_env())
        assert r.returncode == 0, r.stderr
        assert load(ckpt)["iter_num"] == 8


def test_every_writer_on_a_really_full_or_read_only_filesystem(tmp_path):
    with small_filesystem(tmp_path / "small", 256) as small:
        path = str(small / "ckpt.pt")
        ckpt = checkpoint.checkpoint_dict(GPT(tiny_config()), iter_num=1)
        checkpoint.save_checkpoint(ckpt, path)
        good = open(path, "rb").read()
        with open(small / "filler", "wb", buffering=0) as f:  # the rest of the filesystem, to the last byte
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as e:
                assert e.errno == errno.ENOSPC
        # torch.save reports ENOSPC from its zip writer as a RuntimeError; the message must still say why
        with pytest.raises(UserError, match=r"could not write .*ckpt\.pt: No space left on device; free some disk"):
            checkpoint.save_checkpoint({**ckpt, "iter_num": 2}, path)
        assert open(path, "rb").read() == good and sorted(os.listdir(small)) == ["ckpt.pt", "filler"]
        with pytest.raises(UserError, match=r"could not write .*metrics\.jsonl: No space left on device"):
            for i in range(10_000):  # a line fits in what a page leaves: write until the disk says no
                metrics.write_metrics(str(small), {"kind": "train", "iter": i, "pad": "x" * 500})
        os.remove(small / "filler")
        subprocess.run(["mount", "-o", "remount,ro", str(small)], check=True, capture_output=True)
        with pytest.raises(UserError, match=r"could not write .*ckpt\.pt: Read-only file system; make the folder "
                                            r"writable or choose another one"):
            checkpoint.save_checkpoint(ckpt, path)
        with pytest.raises(UserError, match=r"could not write .*metrics\.jsonl: Read-only file system"):
            metrics.write_metrics(str(small), {"kind": "end"})
        assert open(path, "rb").read() == good


def test_data_prep_on_a_really_full_filesystem_then_resumed_is_byte_identical(tmp_path):
    corpus = os.path.join(ROOT, "data", "shakespeare", "shakespeare_complete.txt.gz")
    script = os.path.join(ROOT, "prepare_openwebtext_streaming.py")
    common = [f"--data_files={corpus}", "--text_sample_by=paragraph", "--num_threads=1", "--flush_mb=0.25"]
    assert subprocess.run([sys.executable, script, *common, f"--out_dir={tmp_path / 'ref'}"], cwd=ROOT,
                          capture_output=True, timeout=300).returncode == 0
    with small_filesystem(tmp_path / "small", 1024) as small:  # about a third of the bins
        out = small / "shk"
        r = subprocess.run([sys.executable, script, *common, f"--out_dir={out}"], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr == (f"error: could not write {out / 'train.partial.bin'}: No space left on device; free some "
                            "disk space, then continue with --resume after the last saved chunk\n")
        resize(small, 16 * 1024)
        r = subprocess.run([sys.executable, script, *common, f"--out_dir={out}", "--resume"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert files(out).keys() == files(tmp_path / "ref").keys()
        for name in ("train.bin", "val.bin"):
            assert files(out)[name] == files(tmp_path / "ref")[name]


def test_an_export_on_a_really_full_filesystem_is_one_line_and_keeps_the_old_folder(tmp_path):
    for module in ("safetensors", "tokenizers"):  # what writing an export needs
        require_module(module, "pip install -r requirements-optional.txt")
    ckpt = tmp_path / "ckpt.pt"
    checkpoint.save_checkpoint(checkpoint.checkpoint_dict(GPT(tiny_config(vocab_size=50304))), str(ckpt))
    command = [sys.executable, os.path.join(ROOT, "export_bio.py"), f"--ckpt={ckpt}"]
    sized = subprocess.run([*command, f"--out={tmp_path / 'sized'}"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert sized.returncode == 0, sized.stderr
    size_kb = sum(os.path.getsize(tmp_path / "sized" / f) for f in os.listdir(tmp_path / "sized")) // 1024
    with small_filesystem(tmp_path / "small", size_kb * 3 // 2) as small:  # one export, not a second beside it
        out = small / "exported"
        assert subprocess.run([*command, f"--out={out}"], cwd=ROOT, capture_output=True, timeout=120).returncode == 0
        before = {f: (out / f).read_bytes() for f in os.listdir(out)}
        r = subprocess.run([*command, f"--out={out}", "--overwrite=True", "--dtype=bfloat16"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr == (f"error: could not write {out}: No space left on device; free some disk space, "
                            "then run again\n")
        assert os.listdir(small) == ["exported"]  # no temporary folder
        assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before


def test_a_download_on_a_really_full_filesystem_is_one_line_and_never_a_partial_file(tmp_path, fake_hub):
    from test_hub import BIG, resolve_command
    env, _ = fake_hub
    with small_filesystem(tmp_path / "small", 1024) as small:  # room for a small file, not for BIG (4 MiB)
        env = {**env, "HF_HUB_CACHE": str(small / "hub")}
        first = resolve_command(env, "hf://owner/repo/ckpt.pt")
        assert first.returncode == 0, first.stderr
        r = resolve_command(env, "hf://owner/big/big.pt")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr == (f"error: could not write {small / 'hub'}: No space left on device; free some disk "
                            "space, then run again to download hf://owner/big/big.pt\n")
        assert not list(small.rglob("*.incomplete"))  # the part downloaded is not left filling the disk
        offline = {**env, "HF_HUB_OFFLINE": "1"}
        assert resolve_command(offline, "hf://owner/repo/ckpt.pt").stdout == first.stdout  # the cache still serves
        missing = resolve_command(offline, "hf://owner/big/big.pt")
        assert missing.returncode == 2 and "is not in the Hugging Face cache" in missing.stderr, missing.stderr
        resize(small, 16 * 1024)
        done = resolve_command(env, "hf://owner/big/big.pt")
        assert done.returncode == 0 and open(done.stdout.strip(), "rb").read() == BIG, done.stderr
