"""Protects torch.compile: every model variant (sparse gate kind x gradient checkpointing x
oscillating/GELU MLP) is captured whole by Dynamo, with no graph break and no skipped frame;
a compiled CPU training run (Inductor, through train_bio.py) matches the eager run's losses
and firing shares; a compiled model generates the same greedy tokens as the eager one."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch._dynamo.utils import counters

from conftest import tiny_config
from wigglegpt.engine import generate
from model_bio import GPT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VARIANTS = [dict(use_sparse_gate=gate, sparse_gate_kind=kind, gradient_checkpointing=ckpt, use_bio_mlp=bio)
            for gate, kind in [(False, "lightweight"), (True, "lightweight"), (True, "event_layer")]
            for ckpt in (False, True) for bio in (True, False) if bio or kind != "event_layer" or not gate]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_dynamo_captures_every_variant_in_one_graph(variant):
    torch.manual_seed(0)
    torch._dynamo.reset()
    counters.clear()
    model = GPT(tiny_config(n_layer=2, **variant))
    compiled = torch.compile(model, backend="eager")  # Dynamo's capture only: fast, no C++ build
    idx = torch.randint(0, 96, (2, 16))
    _, loss = compiled(idx, idx)
    loss.backward()
    assert dict(counters["graph_break"]) == {}
    assert counters["frames"]["total"] == counters["frames"]["ok"] == 1  # GPT.forward, not skipped
    assert counters["stats"]["unique_graphs"] == 1
    _, eager_loss = model(idx, idx)
    assert torch.allclose(loss, eager_loss, atol=1e-6)
    if variant["use_sparse_gate"]:
        share = model.firing_share()  # one compiled + one eager forward, same weights and batch
        assert share is not None and 0.0 <= share <= 1.0


def train_records(tmp_path, compile):
    out = tmp_path / f"compile_{compile}"
    command = [sys.executable, "train_bio.py", "config/shakespeare_bio.py", f"--compile={compile}",
               f"--out_dir={out}", "--device=cpu", "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32",
               "--batch_size=4", "--max_iters=3", "--eval_interval=3", "--eval_iters=1", "--log_interval=1",
               "--warmup_iters=1", "--use_sparse_gate=True", "--gradient_checkpointing=True"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(out / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def test_compiled_training_matches_eager(tmp_path):
    """Inductor on the CPU, the sparse gate and gradient checkpointing on: the combination
    whose module mutation used to make Dynamo skip the whole forward."""
    eager, compiled = train_records(tmp_path, False), train_records(tmp_path, True)
    assert compiled[0]["config"]["compile"] is True and eager[0]["config"]["compile"] is False
    pick = lambda records, kind, keys: [r[k] for r in records if r["kind"] == kind for k in keys]
    for kind, keys in [("train", ("loss", "firing_share")), ("eval", ("train_loss", "val_loss"))]:
        a, b = pick(eager, kind, keys), pick(compiled, kind, keys)
        assert len(a) == len(b) > 0
        assert a == pytest.approx(b, abs=2e-4), kind
    assert pick(compiled, "train", ("loss",))[-1] < pick(compiled, "train", ("loss",))[0]  # it learns


def test_compiled_model_generates_the_same_greedy_tokens():
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = GPT(tiny_config(n_layer=1, n_head=2)).eval()
    prompt = [5, 17, 3, 80, 41]
    eager = list(generate(model, prompt, 8, temperature=0))
    compiled = list(generate(torch.compile(model), prompt, 8, temperature=0))  # Inductor: prefill + decode
    assert compiled == eager and len(eager) == 8
