"""Protects mixed precision without a GPU: --dtype=bfloat16 and --dtype=float16 run on the CPU
through torch.autocast("cpu") and torch.amp.GradScaler("cpu"), the code path CUDA takes. The demo
config learns in both dtypes and sample_bio/chat_bio generate from the result under the same
dtype; a non-finite loss skips its update and backs the fp16 loss scale off; the scaler state is
in the checkpoint, is restored on resume, and an interrupted fp16 run resumes bit for bit."""

import os
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from wigglegpt import checkpoint
import train_bio
from conftest import ROOT
from wigglegpt.settings import load_settings
from wigglegpt.distributed import Dist
from test_train import load, metrics, tiny


def demo_settings(tmp_path, dtype):
    """config/shakespeare_bio.py shrunk to seconds: a 1-layer, 32-wide model, 12 iterations."""
    overrides = dict(dtype=dtype, device="cpu", out_dir=str(tmp_path / dtype), data_root=os.path.join(ROOT, "data"),
                     n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4, max_iters=12, eval_interval=12,
                     eval_iters=2, log_interval=1, warmup_iters=2, lr_decay_iters=12, learning_rate=1e-2, min_lr=1e-3)
    return load_settings(train_bio.SETTINGS, [os.path.join(ROOT, "config", "shakespeare_bio.py"),
                                              *[f"--{k}={v}" for k, v in overrides.items()]])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_demo_learns_in_mixed_precision_and_samples_under_it(tmp_path, dtype, capsys):
    s = demo_settings(tmp_path, dtype)
    summary = train_bio.train(s)
    assert summary["reason"] == "max_iters"
    assert f"device cpu, dtype {dtype}" in capsys.readouterr().out
    records = metrics(s.out_dir)
    assert records[0]["dtype"] == dtype
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < losses[0] - 1.0  # from ~10.8: clearly learning
    ckpt = load(os.path.join(s.out_dir, "ckpt.pt"))
    if dtype == "float16":
        assert ckpt["scaler"]["scale"] > 0 and "_growth_tracker" in ckpt["scaler"]
    else:
        assert ckpt["scaler"] == {}  # bf16 needs no loss scaling

    path = os.path.join(s.out_dir, "ckpt.pt")
    commands = [["sample_bio.py", f"--ckpt={path}", "--start=ROMEO:", "--num_samples=1", "--max_new_tokens=6"],
                ["chat_bio.py", f"--ckpt={path}", "--prompt=Hello", "--max_new_tokens=6", "--seed=1"]]

    def run(command):
        return subprocess.run([sys.executable, *command, "--device=cpu", f"--dtype={dtype}"], cwd=ROOT,
                              capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    with ThreadPoolExecutor(max_workers=2) as pool:
        sample, chat = pool.map(run, commands)
    assert sample.returncode == 0 and sample.stdout.startswith("ROMEO:"), sample.stderr
    assert "Traceback" not in sample.stderr + chat.stderr
    assert chat.returncode == 0 and chat.stdout.strip() and "Traceback" not in chat.stderr, chat.stderr


def fp16_run(tmp_path, **overrides):
    s = train_bio.as_settings(tiny(tmp_path, dtype="float16", **overrides))
    train_bio.check_settings(s)
    return train_bio.setup_run(s, Dist(), "cpu")


def test_non_finite_loss_skips_the_step_and_backs_the_scale_off(tmp_path):
    run = fp16_run(tmp_path)
    assert run.scaler.is_enabled() and isinstance(run.ctx, torch.autocast)
    forward = run.train_model.forward
    run.train_model.forward = lambda x, y, **kw: [out * float("nan") if i else out
                                                   for i, out in enumerate(forward(x, y, **kw))]
    weights = {k: v.clone() for k, v in run.raw_model.state_dict().items()}
    scale = run.scaler.get_scale()
    loss, _ = train_bio.train_step(run, 1e-2, types.SimpleNamespace(requested=False))
    assert loss != loss  # NaN
    assert run.scaler.get_scale() == scale * run.scaler.get_backoff_factor()
    assert all(torch.equal(v, run.raw_model.state_dict()[k]) for k, v in weights.items())
    assert all(p.grad is None for p in run.raw_model.parameters()) and not run.optimizer.state
    del run.train_model.forward  # the real forward again: this step counts
    loss, _ = train_bio.train_step(run, 1e-2, types.SimpleNamespace(requested=False))
    assert loss == loss and run.optimizer.state
    assert not torch.equal(weights["lm_head.weight"], run.raw_model.state_dict()["lm_head.weight"])


def test_interrupted_fp16_run_resumes_exactly_with_its_loss_scale(tmp_path):
    s = tiny(tmp_path, dtype="float16", dropout=0.1, max_iters=6)
    train_bio.train({**s, "out_dir": str(tmp_path / "whole")})
    train_bio.train({**s, "max_iters": 3})
    train_bio.train({**s, "init_from": "resume"})

    def losses(out_dir):
        return {r["iter"]: r["loss"] for r in metrics(out_dir) if r["kind"] == "train"}
    assert losses(s["out_dir"]) == losses(tmp_path / "whole") and len(losses(s["out_dir"])) == 6
    a, b = load(tmp_path / "whole" / "ckpt.pt"), load(os.path.join(s["out_dir"], "ckpt.pt"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["scaler"] == b["scaler"] and a["scaler"]["scale"] > 0

    # the scale a run had backed off to is the one it continues with
    path = os.path.join(s["out_dir"], "ckpt.pt")
    b["scaler"]["scale"] = 1024.0
    checkpoint.save_checkpoint(b, path)
    run = fp16_run(tmp_path, init_from="resume")
    assert run.scaler.get_scale() == 1024.0 and run.state.iter_num == 6
