"""Protects the evaluation inside training (train_bio.py through its real command line): every
eval record carries train_bpb and val_bpb of its eval batches, hellaswag_interval writes
{"kind": "hellaswag", iter, acc, acc_norm, n, tokens} records at its iterations and at the end
(not again at a resumed run's first iteration), and a bad HellaSwag file stops the run before
any training with one error line."""

import json
import math
import os
import subprocess
import sys

import numpy as np

from wigglegpt import tokenizer
from conftest import ROOT

ROWS = [dict(ctx="The cat sat on the", endings=["mat.", "moon, far from every other cat.", "dog.", "roof"], label=0),
        dict(ctx="She opened the door and", endings=["left.", "smiled at the visitor.", "ran", "shut it."], label=1),
        dict(ctx="He poured the tea", endings=["into a cup.", "on the cat.", "slowly", "and sat down."], label=3)]


def write_files(tmp_path):
    data = tmp_path / "data" / "text"
    data.mkdir(parents=True)
    ids = np.array(tokenizer.encode("Some words to learn, over and over again. " * 200), dtype=np.uint16)
    ids.tofile(data / "train.bin")
    ids[:600].tofile(data / "val.bin")
    (tmp_path / "hs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))


def train_cli(tmp_path, *extra):
    if not (tmp_path / "data").exists():
        write_files(tmp_path)
    settings = dict(data_root=tmp_path / "data", dataset="text", out_dir=tmp_path / "out", device="cpu", n_layer=1,
                    n_head=2, n_embd=16, block_size=16, vocab_size=50304, batch_size=2, gradient_accumulation_steps=1,
                    max_iters=5, eval_interval=2, eval_iters=2, warmup_iters=1, lr_decay_iters=5, learning_rate=1e-3,
                    min_lr=1e-4, hellaswag_interval=2, hellaswag_file=tmp_path / "hs.jsonl")
    args = [f"--{k}={v}" for k, v in settings.items()] + list(extra)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, os.path.join(ROOT, "train_bio.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=180, env=env)


def records(tmp_path):
    with open(tmp_path / "out" / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_training_logs_bpb_and_hellaswag(tmp_path):
    r = train_cli(tmp_path)
    assert r.returncode == 0, r.stderr
    logged = records(tmp_path)
    evals = [x for x in logged if x["kind"] == "eval"]
    assert [x["iter"] for x in evals] == [0, 2, 4, 5]
    for x in evals:
        # these tokens average more than one byte each; ln-2 conversion puts bpb below loss * 1.443
        assert math.isfinite(x["train_bpb"]) and math.isfinite(x["val_bpb"])
        assert 0 < x["val_bpb"] < x["val_loss"] / math.log(2)
    hs = [x for x in logged if x["kind"] == "hellaswag"]
    assert [x["iter"] for x in hs] == [0, 2, 4, 5]
    for x in hs:
        assert set(x) == {"kind", "iter", "acc", "acc_norm", "n", "tokens"}
        assert x["n"] == 3 and x["acc"] in (0, 1 / 3, 2 / 3, 1) and x["acc_norm"] in (0, 1 / 3, 2 / 3, 1)
    assert hs[-1]["tokens"] == 5 * 2 * 16
    assert "hellaswag acc" in r.stdout

    r = train_cli(tmp_path, "--init_from=resume", "--max_iters=6", "--lr_decay_iters=6")
    assert r.returncode == 0, r.stderr
    hs = [x for x in records(tmp_path) if x["kind"] == "hellaswag"]
    assert [x["iter"] for x in hs] == [0, 2, 4, 5, 6]  # not twice at 5

    # a checkpoint saved before HellaSwag ran at its iteration (Ctrl-C) scores it on resume
    from wigglegpt import checkpoint
    path = str(tmp_path / "out" / "ckpt.pt")
    ckpt = checkpoint.load_checkpoint(path)
    assert ckpt["last_hellaswag_iter"] == 6
    ckpt["last_hellaswag_iter"] = 4
    checkpoint.save_checkpoint(ckpt, path)
    r = train_cli(tmp_path, "--init_from=resume", "--max_iters=6", "--lr_decay_iters=6")
    assert r.returncode == 0, r.stderr
    hs = [x for x in records(tmp_path) if x["kind"] == "hellaswag"]
    assert [x["iter"] for x in hs] == [0, 2, 4, 5, 6, 6]


def test_bad_hellaswag_file_stops_before_training(tmp_path):
    write_files(tmp_path)
    (tmp_path / "hs.jsonl").write_text(json.dumps({**ROWS[0], "endings": ["only one"]}) + "\n")
    r = train_cli(tmp_path)
    assert r.returncode == 2
    assert not (tmp_path / "out" / "metrics.jsonl").exists()
    assert r.stderr.strip().count("\n") == 0 and "hs.jsonl, line 1: 'endings'" in r.stderr
