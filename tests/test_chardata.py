"""Protects nanoGPT's character-level data folders (wigglegpt/chardata.py): meta.pkl is read
safely (a pickle that asks for a global, os.system say, is refused without running it; a cut-off
file, missing keys, stoi/itos that disagree, a vocab_size below the ids and a vocabulary that does
not cover the bins are one line each); prepare_shakespeare_char.py writes exactly nanoGPT's layout
(re-derived here) and the demo folder is built on first use; a char-level run through the real
command takes vocab_size from meta.pkl and keeps the vocabulary in its checkpoint (resume too);
sample_bio.py gives the prompt back and writes only the vocabulary's characters; eval_bio's bits
per byte count the characters' UTF-8 bytes; chat (--web too), export, HellaSwag and lm_eval refuse
a char model in one line; analyze_bio.py reads it; and GPT-2 token data without meta.pkl trains as
before. Tiny models on tiny data made here, except the vendored corpus the prepare test reads."""

import gzip
import json
import math
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import analyze_bio
import chat_bio
import eval_bio
import export_bio
import prepare_shakespeare_char
import sample_bio
import train_bio
from conftest import ROOT, require_module, tiny_config
from model_bio import GPT
from wigglegpt import chardata, checkpoint, dataprep, evaluate
from wigglegpt.common import UserError, run_main
from wigglegpt.data import ensure_demo
from wigglegpt.settings import load_settings

TEXT = "le café du 日本, voilà! 😀 ROMEO: to be or not to be.\n"  # 1-, 2-, 3- and 4-byte characters
CHARS = sorted(set(TEXT))
BLOCK = 32
RUN = ["--n_layer=1", "--n_head=2", "--n_embd=32", f"--block_size={BLOCK}", "--batch_size=4",
       "--gradient_accumulation_steps=1", "--eval_iters=2", "--learning_rate=1e-2", "--min_lr=1e-3",
       "--warmup_iters=0", "--compile=False", "--device=cpu", "--seed=0"]


def write_char_folder(folder, chars=CHARS, text=TEXT, n_train=3000, n_val=1200, meta=None):
    """A nanoGPT-style char folder: meta.pkl of chars (or the given meta dict), bins of text repeated."""
    os.makedirs(folder, exist_ok=True)
    vocab = chardata.CharVocab(chars)
    with open(os.path.join(folder, "meta.pkl"), "wb") as f:
        f.write(pickle.dumps(meta) if meta is not None else chardata.meta_bytes(vocab))
    ids = chardata.encode_array(text * (1 + (n_train + n_val) // len(text)), vocab)
    ids[:n_train].tofile(os.path.join(folder, "train.bin"))
    ids[n_train:n_train + n_val].tofile(os.path.join(folder, "val.bin"))
    return folder


def one_line_error(capsys, main, argv):
    """Run main(argv) as the command line does; it must fail with exit 2 and one 'error:' line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        run_main(lambda: main(argv))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert stopped.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("chars")
    write_char_folder(root / "data" / "chars")
    return root


@pytest.fixture(scope="module")
def run(root):
    """A tiny char-level run through the real command line; vocab_size is not given."""
    out = root / "run"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train_bio.py"), f"--data_root={root / 'data'}",
                        "--dataset=chars", f"--out_dir={out}", "--max_iters=40", "--eval_interval=40",
                        "--lr_decay_iters=40", "--log_interval=10", *RUN],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    return dict(out=out, ckpt=str(out / "ckpt.pt"), stdout=r.stdout)


# ---------------------------------------------------------------------------------------
# meta.pkl

def nanogpt_meta(chars):
    """The dict nanoGPT's data/shakespeare_char/prepare.py pickles."""
    return {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}


def test_a_good_meta_pkl_reads_as_its_vocabulary(tmp_path):
    path = tmp_path / "meta.pkl"
    path.write_bytes(pickle.dumps(nanogpt_meta(CHARS)))
    vocab = chardata.read_meta(str(path))
    assert vocab.itos == CHARS and vocab.vocab_size == len(CHARS)
    assert vocab.decode(vocab.encode(TEXT)) == TEXT
    assert vocab.byte_lengths()[vocab.stoi["😀"]] == 4 and vocab.byte_lengths()[vocab.stoi["é"]] == 2
    padded = {**nanogpt_meta(CHARS), "vocab_size": 64}  # padding ids past the characters: allowed
    path.write_bytes(pickle.dumps(padded))
    assert chardata.read_meta(str(path)).vocab_size == 64


class RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_meta_pkl_with_a_global_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "it_ran"
    for payload in (RunsAShellCommand(marker), {**nanogpt_meta(CHARS), "stoi": RunsAShellCommand(marker)}):
        path = tmp_path / "meta.pkl"
        path.write_bytes(pickle.dumps(payload))
        with pytest.raises(UserError, match=r"asks to load (posix|os)\.system, which is refused") as e:
            chardata.read_meta(str(path))
        assert str(path) in str(e.value) and "\n" not in str(e.value)
        assert not marker.exists()


@pytest.mark.parametrize("name, content, words", [
    ("truncated", pickle.dumps(nanogpt_meta(CHARS))[:40], "is not a readable meta.pkl"),
    ("not a pickle", b"vocab_size = 65\n", "is not a readable meta.pkl"),
    ("a list", pickle.dumps(CHARS), "holds a list, not nanoGPT's dict"),
    ("missing itos", pickle.dumps({"vocab_size": 2, "stoi": {"a": 0, "b": 1}}), "has no 'itos'"),
    ("disagree", pickle.dumps({"vocab_size": 2, "stoi": {"a": 0, "b": 1}, "itos": {0: "a", 1: "c"}}),
     "stoi and itos disagree"),
    ("stoi short", pickle.dumps({"vocab_size": 2, "stoi": {"a": 0}, "itos": {0: "a", 1: "b"}}),
     "stoi and itos disagree"),
    ("vocab_size below the ids", pickle.dumps({**nanogpt_meta("abc"), "vocab_size": 2}),
     "vocab_size 2 is smaller than its ids"),
    ("ids with a gap", pickle.dumps({"vocab_size": 3, "stoi": {"a": 0, "b": 2}, "itos": {0: "a", 2: "b"}}),
     "must run 0 .. 1"),
    ("a word, not a character", pickle.dumps(nanogpt_meta(["ab", "c"])), "not one character"),
])
def test_a_bad_meta_pkl_is_one_line_naming_it(tmp_path, name, content, words):
    path = tmp_path / "meta.pkl"
    path.write_bytes(content)
    with pytest.raises(UserError) as e:
        chardata.read_meta(str(path))
    assert words in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value), name


def test_a_vocabulary_that_does_not_cover_the_bins_is_one_line(tmp_path, capsys):
    folder = write_char_folder(tmp_path / "data" / "short", meta=nanogpt_meta(CHARS[:5]))  # bins hold more ids
    line = one_line_error(capsys, train_bio.main, [f"--data_root={tmp_path / 'data'}", "--dataset=short",
                                                   f"--out_dir={tmp_path / 'out'}", "--max_iters=1", *RUN])
    assert "does not cover the bins" in line and os.path.join(str(folder), "meta.pkl") in line
    assert not os.path.exists(tmp_path / "out")


# ---------------------------------------------------------------------------------------
# prepare_shakespeare_char.py

def test_prepare_writes_nanogpts_layout_and_the_demo_is_built_on_first_use(tmp_path, capsys):
    out = tmp_path / "shakespeare_char"
    prepare_shakespeare_char.main([f"--out_dir={out}"])
    assert sorted(os.listdir(out)) == ["meta.pkl", "train.bin", "val.bin"]  # nothing else, no temporary file
    with gzip.open(dataprep.SHAKESPEARE_GZ, "rt", encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    n = len(text)
    with open(out / "meta.pkl", "rb") as f:
        assert pickle.load(f) == nanogpt_meta(chars)
    for name, part in (("train.bin", text[:int(n * 0.9)]), ("val.bin", text[int(n * 0.9):])):
        ids = np.fromfile(out / name, dtype=np.uint16)
        assert len(ids) == len(part) and np.array_equal(ids, np.array([stoi[c] for c in part], dtype=np.uint16))
    assert "84 characters" in capsys.readouterr().out
    assert "already holds" in one_line_error(capsys, prepare_shakespeare_char.main, [f"--out_dir={out}"])

    before = {name: os.stat(out / name).st_mtime_ns for name in os.listdir(out)}
    ensure_demo(str(out), "shakespeare_char")  # there already: untouched
    assert {name: os.stat(out / name).st_mtime_ns for name in os.listdir(out)} == before
    fresh = tmp_path / "data" / "shakespeare_char"
    ensure_demo(str(fresh), "shakespeare_char")  # what train_bio.py and eval_bio.py do on first use
    assert all((fresh / name).read_bytes() == (out / name).read_bytes() for name in before)


# ---------------------------------------------------------------------------------------
# training, sampling, evaluation of a char model

def test_a_char_run_takes_vocab_size_from_meta_and_keeps_the_vocabulary(run):
    assert f"character-level data: {len(CHARS)} characters in" in run["stdout"]
    assert f"vocab_size {len(CHARS)} (from meta.pkl)" in run["stdout"]
    ckpt = torch.load(run["ckpt"], map_location="cpu", weights_only=True)
    assert ckpt["config"]["vocab_size"] == len(CHARS)
    assert ckpt["tokenizer"] == {"kind": "char", "itos": CHARS}
    with open(run["out"] / "metrics.jsonl", encoding="utf-8") as f:
        start = json.loads(f.readline())
    assert start["config"]["vocab_size"] == 50304 and start["derived"]["vocab_size"] == len(CHARS)  # as given; derived


def test_resume_and_fine_tune_keep_the_vocabulary(run, root, tmp_path, capsys):
    out = tmp_path / "resumed"
    os.makedirs(out)
    shutil.copy(run["ckpt"], out / "ckpt.pt")
    common = dict(data_root=str(root / "data"), dataset="chars", n_layer=1, n_head=2, n_embd=32, block_size=BLOCK,
                  batch_size=4, gradient_accumulation_steps=1, eval_iters=1, warmup_iters=0, compile=False,
                  device="cpu", learning_rate=1e-3, min_lr=1e-4)
    train_bio.train(dict(common, init_from="resume", out_dir=str(out), max_iters=42, eval_interval=42,
                         lr_decay_iters=42))
    assert f"vocab_size {len(CHARS)} (the checkpoint's)" in capsys.readouterr().out
    resumed = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=True)
    assert resumed["iter_num"] == 42 and resumed["tokenizer"] == {"kind": "char", "itos": CHARS}
    tuned = tmp_path / "tuned"
    train_bio.train(dict(common, init_from=run["ckpt"], out_dir=str(tuned), max_iters=1, eval_interval=1,
                         lr_decay_iters=1))
    assert torch.load(tuned / "ckpt.pt", map_location="cpu", weights_only=True)["tokenizer"]["itos"] == CHARS


def test_vocab_size_given_below_meta_is_refused_and_above_pads(root, tmp_path, capsys):
    args = [f"--data_root={root / 'data'}", "--dataset=chars", "--max_iters=1", "--eval_interval=1",
            "--lr_decay_iters=1", *RUN]
    line = one_line_error(capsys, train_bio.main, [*args, f"--out_dir={tmp_path / 'a'}", "--vocab_size=8"])
    assert f"vocab_size=8 is smaller than the vocab_size {len(CHARS)} of" in line
    run_main(lambda: train_bio.main([*args, f"--out_dir={tmp_path / 'b'}", "--vocab_size=64"]))
    assert "vocab_size 64 (given)" in capsys.readouterr().out
    ckpt = torch.load(tmp_path / "b" / "ckpt.pt", map_location="cpu", weights_only=True)
    assert ckpt["config"]["vocab_size"] == 64 and ckpt["tokenizer"]["itos"] == CHARS


def test_a_char_model_and_gpt2_token_data_do_not_mix(run, root, tmp_path, capsys):
    gpt2_data = tmp_path / "data" / "tokens"
    os.makedirs(gpt2_data)
    for split in ("train", "val"):
        np.resize(np.arange(60, dtype=np.uint16), 3000).tofile(gpt2_data / f"{split}.bin")
    line = one_line_error(capsys, train_bio.main, [f"--data_root={tmp_path / 'data'}", "--dataset=tokens",
                                                   f"--init_from={run['ckpt']}", f"--out_dir={tmp_path / 'o1'}",
                                                   "--max_iters=1", *RUN])
    assert "is a character-level model, but" in line and "has no meta.pkl" in line
    gpt2_model = tmp_path / "gpt2.pt"
    checkpoint.save_checkpoint(checkpoint.checkpoint_dict(GPT(tiny_config(vocab_size=50304, block_size=BLOCK,
                                                                          n_layer=1, n_head=2))), str(gpt2_model))
    line = one_line_error(capsys, train_bio.main, [f"--data_root={root / 'data'}", "--dataset=chars",
                                                   f"--init_from={gpt2_model}", f"--out_dir={tmp_path / 'o2'}",
                                                   "--max_iters=1", *RUN])
    assert "is character-level data (meta.pkl), but" in line and "reads GPT-2 tokens" in line


def samples_of(stdout):
    return stdout.split(f"\n{sample_bio.SEPARATOR}\n")


def test_sample_gives_the_prompt_back_and_writes_only_its_characters(run):
    prompt = "le café 日本"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "sample_bio.py"), f"--ckpt={run['ckpt']}",
                        f"--start={prompt}", "--num_samples=2", "--max_new_tokens=40", "--device=cpu"],
                       cwd=ROOT, capture_output=True, text=True, encoding="utf-8", timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"})
    assert r.returncode == 0, r.stderr
    samples = samples_of(r.stdout)
    assert len(samples) == 2
    for sample in samples:
        assert sample.startswith(prompt) and set(sample) <= set(CHARS)
    # 40 new ids are 40 characters; the last sample ends with the closing newline
    assert len(samples[0]) == len(prompt) + 40 and len(samples[1]) == len(prompt) + 41


def test_sample_starts_at_a_newline_and_names_a_character_it_lacks(run, tmp_path, capsys):
    common = [f"--ckpt={run['ckpt']}", "--num_samples=1", "--max_new_tokens=12", "--device=cpu"]
    sample_bio.main([*common, "--start="])
    out = capsys.readouterr().out
    assert len(out) >= 12 and set(out) <= set(CHARS)
    sample_bio.main([*common, "--start=ROMEO:", "--preset=original"])  # no special tokens for a char model
    assert capsys.readouterr().out.startswith("ROMEO:")
    line = one_line_error(capsys, sample_bio.main, [*common, "--start=Zebra"])
    assert "'Z' (U+005A), which is not among the" in line
    no_newline = tmp_path / "ab.pt"
    model = GPT(tiny_config(vocab_size=2, block_size=BLOCK, n_layer=1, n_head=2))
    checkpoint.save_checkpoint(checkpoint.checkpoint_dict(model, tokenizer={"kind": "char", "itos": ["a", "b"]}),
                               str(no_newline))
    line = one_line_error(capsys, sample_bio.main, [f"--ckpt={no_newline}", "--device=cpu"])
    assert "newline" in line and "--start" in line


def test_eval_bpb_counts_the_characters_utf8_bytes(run, root):
    folder = str(root / "data" / "chars")
    results = eval_bio.main([f"--ckpt={run['ckpt']}", f"--data_root={root / 'data'}", "--dataset=chars",
                             "--eval_windows=6", "--eval_batch_size=3", "--seed=5", "--device=cpu"])
    got = {metric: value for _, metric, value, _ in results}
    model, _ = checkpoint.load_model(run["ckpt"])
    x, y = evaluate.val_windows(folder, 6, BLOCK, seed=5)
    with torch.no_grad():
        logits, _ = model.eval()(x, y)
    nats = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
    n_bytes = sum(len(CHARS[i].encode("utf-8")) for i in y.flatten().tolist())
    assert n_bytes > y.numel()  # multi-byte characters in the targets: bytes, not characters, are counted
    assert got["loss"] == pytest.approx(nats / y.numel(), rel=1e-5)
    assert got["bpb"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)


def test_chat_web_export_hellaswag_and_lm_eval_refuse_a_char_model_in_one_line(run, tmp_path, capsys):
    ckpt = f"--ckpt={run['ckpt']}"
    for main, argv in ((chat_bio.main, [ckpt, "--prompt=hi", "--device=cpu"]),
                       (chat_bio.main, [ckpt, "--web", "--port=0", "--device=cpu"]),
                       (export_bio.main, [ckpt, f"--out={tmp_path / 'export'}"]),
                       (export_bio.main, [ckpt, f"--out={tmp_path / 'original'}", "--format=original"]),
                       (eval_bio.main, [ckpt, "--tasks=val,hellaswag", f"--hellaswag_file={tmp_path / 'h.jsonl'}",
                                        "--device=cpu"])):
        line = one_line_error(capsys, main, argv)
        assert "is a character-level model" in line and "needs GPT-2 BPE" in line, line
    assert not os.path.exists(tmp_path / "export") and not os.path.exists(tmp_path / "original")
    require_module("lm_eval", "pip install -r requirements-optional.txt")
    import lm_eval_bio
    with pytest.raises(UserError, match="is a character-level model"):
        lm_eval_bio.make_lm(ckpt=run["ckpt"], device="cpu")


def test_analyze_reads_a_char_checkpoint(run, capsys):
    analyze_bio.main([f"--ckpt={run['ckpt']}"])
    assert "omega" in capsys.readouterr().out


def test_the_char_configs_differ_only_in_use_bio_mlp():
    a, b = (vars(load_settings(train_bio.SETTINGS, [os.path.join(ROOT, "config", f"shakespeare_char_{kind}.py")]))
            for kind in ("bio", "gelu"))
    assert {k for k in a if a[k] != b[k]} == {"use_bio_mlp", "out_dir"} and a["use_bio_mlp"] and not b["use_bio_mlp"]
    assert a["dataset"] == "shakespeare_char" and a["use_rmsnorm"] and a["use_rope"] and a["dropout"] == 0.0


# ---------------------------------------------------------------------------------------
# GPT-2 tokens, as before

def test_gpt2_token_data_without_meta_pkl_trains_as_before(tmp_path, capsys):
    folder = tmp_path / "data" / "tokens"
    os.makedirs(folder)
    for split in ("train", "val"):
        np.resize(np.arange(60, dtype=np.uint16), 3000).tofile(folder / f"{split}.bin")
    train_bio.train(dict(data_root=str(tmp_path / "data"), dataset="tokens", out_dir=str(tmp_path / "out"),
                         n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=2, gradient_accumulation_steps=1,
                         max_iters=1, eval_interval=1, eval_iters=1, warmup_iters=0, lr_decay_iters=1,
                         compile=False, device="cpu"))
    assert "character-level" not in capsys.readouterr().out
    ckpt = torch.load(tmp_path / "out" / "ckpt.pt", map_location="cpu", weights_only=True)
    assert ckpt["config"]["vocab_size"] == 50304 and "tokenizer" not in ckpt
