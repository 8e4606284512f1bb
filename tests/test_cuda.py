"""Protects what only a CUDA GPU can show (every test is skipped without one): bf16 and fp16
training steps through train_bio, fused AdamW, pinned host batches, KV-cache generation under
autocast agreeing with a full recompute, torch.compile training, batch_size='auto' with the
memory estimate printed, a real out-of-memory backed off from, the batch search's one-sequence
warm-up and the CUDA context counted in the estimate, the eager activation's parameter-gradient
sums staying fp32 under allow_tf32, 'auto' dtype following the card's real bf16
support, and the 124M benchmark section sizing its batch to the card."""

import os
import re

import pytest
import torch

from wigglegpt import common, gpu
import train_bio
from conftest import require_module, tiny_config
from wigglegpt.engine import generate
from model_bio import GPT
from wigglegpt.distributed import Dist
from wigglegpt.common import autocast_for, pick_dtype
from test_train import metrics, tiny

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DTYPES = ["float16", "bfloat16"]


def skip_without_bf16(dtype):
    if dtype == "bfloat16" and not common.has_native_bf16("cuda"):
        pytest.skip(f"{torch.cuda.get_device_name()} has no hardware bfloat16")


def test_auto_dtype_follows_the_hardware():
    expected = "bfloat16" if torch.cuda.get_device_capability() >= (8, 0) else "float16"
    assert pick_dtype("auto", "cuda") == expected


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_steps_in_mixed_precision(tmp_path, dtype, capsys):
    skip_without_bf16(dtype)
    summary = train_bio.train(tiny(tmp_path, device="cuda", dtype=dtype, max_iters=6, eval_interval=3))
    assert summary["reason"] == "max_iters" and summary["iter"] == 6
    out = capsys.readouterr().out
    assert f"dtype {dtype}" in out and "memory estimate:" in out
    losses = [r["loss"] for r in metrics(summary["out_dir"]) if r["kind"] == "train"]
    assert all(loss == loss for loss in losses) and losses[-1] < losses[0]


def test_fused_adamw_and_pinned_batches(tmp_path, monkeypatch):
    s = train_bio.as_settings(tiny(tmp_path, device="cuda"))
    train_bio.check_settings(s)
    run = train_bio.setup_run(s, Dist(), "cuda")
    assert run.optimizer.defaults["fused"] is True
    pinned = []
    real_pin = torch.Tensor.pin_memory

    def pin(tensor, *args, **kwargs):
        out = real_pin(tensor, *args, **kwargs)
        pinned.append(out.is_pinned())
        return out
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    x, y = run.data.batch("train", torch.Generator().manual_seed(0))
    assert x.is_cuda and y.is_cuda and pinned == [True, True]


@pytest.mark.parametrize("dtype", DTYPES)
def test_kv_cache_generation_under_autocast_matches_full_recompute(dtype):
    skip_without_bf16(dtype)
    torch.manual_seed(0)
    model = GPT(tiny_config(block_size=64)).cuda().eval()
    autocast = autocast_for("cuda", dtype)
    prompt = torch.randint(0, 96, (5,)).tolist()
    tokens = list(generate(model, prompt, 24, temperature=0, use_cache=True, autocast=autocast))
    assert len(tokens) == 24
    context = list(prompt)
    with torch.no_grad():
        for token in tokens:  # each cached pick is the recomputed argmax, up to rounding at near-ties
            with autocast:
                logits, _ = model(torch.tensor([context], device="cuda"))
            logits = logits[0, -1].float()
            assert logits[token] >= logits.max() - 0.05 * logits.abs().max()
            context.append(token)


def test_compiled_training(tmp_path):
    require_module("triton", "pip install triton (Linux) or pip install triton-windows (Windows)")
    summary = train_bio.train(tiny(tmp_path, device="cuda", compile=True, max_iters=3, eval_interval=3))
    assert summary["reason"] == "max_iters"
    ckpt = torch.load(os.path.join(summary["out_dir"], "ckpt.pt"), map_location="cpu", weights_only=True)
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])


def test_batch_size_auto_on_the_gpu(tmp_path, capsys):
    s = tiny(tmp_path, device="cuda", batch_size="auto", tokens_per_iter=16 * 8, max_iters=2, eval_interval=2)
    summary = train_bio.train(s)
    out = capsys.readouterr().out
    assert "batch_size='auto': batch_size 8 x gradient_accumulation_steps 1 x block_size 16" in out  # tiny: all fits
    assert summary["tokens"] == 2 * 128 and "memory estimate:" in out


def test_batch_search_backs_off_from_a_real_out_of_memory():
    model = GPT(tiny_config()).cuda()
    free, _ = torch.cuda.mem_get_info()
    too_big = int(free * 0.95)

    def trial(batch, checkpointing):
        if batch > 2:  # a real CUDA OOM, as a batch too large would raise
            torch.empty(too_big * 2, dtype=torch.uint8, device="cuda")
        gpu.cuda_trial(model, 0, 32, "cuda", autocast_for("cuda", "float16"))(batch, checkpointing)
    assert gpu.find_batch_size(trial, 8, log=lambda line: None) == (2, False)


def test_gpu_benchmark_section_fits_the_card():
    import bench_bio
    rows = {row[0]: row for row in bench_bio.bench_gpu_124m(quick=True)}
    for how in ("eager", "compiled"):
        for mlp in ("Wiggle", "GELU"):
            what, tokens, _, detail = rows[f"124M {mlp} {how} training tokens/s (GPU)"]
            assert float(tokens.replace(",", "")) > 0 and re.search(r"B=\d+, T=1024", detail)
            assert ("MFU unknown" in detail) == (gpu.peak_flops_for(torch.cuda.get_device_name()) is None)
        assert rows[f"124M tokens/s Wiggle / GELU, {how} (GPU)"][1].endswith("x")


class RecordingBatches(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.batches = model, model.config, []

    def forward(self, idx, targets, **kwargs):
        self.batches.append(idx.shape[0])
        return self.model(idx, targets, **kwargs)


def test_auto_batch_warms_up_with_one_sequence_on_the_gpu():
    model = RecordingBatches(GPT(tiny_config()).cuda())
    found = gpu.auto_batch(model, 32, 8, "float16", "cuda", autocast_for("cuda", "float16"), False,
                               log=lambda line: None)
    assert found == (8, False) and model.batches == [1, 8]  # tiny: everything fits after the warm-up


def test_the_estimate_counts_what_the_card_holds_outside_pytorch():
    torch.ones(1, device="cuda")  # the context exists
    outside = gpu.memory_outside_allocator("cuda")
    assert 50 * 2**20 < outside < torch.cuda.mem_get_info()[1]  # the context alone is a few hundred MB
    line = gpu.startup_memory_report(GPT(tiny_config()).cuda(), 32, 4, "float16", "cuda")[0]
    assert "CUDA context and other programs" in line and "on the card" in line


def test_eager_parameter_gradient_sums_are_fp32_even_with_tf32_on(monkeypatch):
    from model_bio import OscillateFunction
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)  # as training sets it
    torch.manual_seed(0)
    x = torch.randn(64, 512, 3072, device="cuda")
    params = [torch.randn(3072, device="cuda", requires_grad=True) for _ in range(3)]
    g = torch.randn_like(x)
    got = torch.autograd.grad(OscillateFunction.apply(x, *params), params, g)
    x64, p64 = x.double(), [p.detach().double().requires_grad_() for p in params]
    want = torch.autograd.grad(torch.sin(p64[0] * x64 + p64[1]) * torch.tanh(x64) + p64[2], p64, g.double())
    for a, b in zip(got, want):
        assert ((a.double() - b).norm() / b.norm()).item() < 1e-5  # a TF32 sum would be off by ~1e-3
