"""Protects bench_bio.py's traffic and memory measurements and its GPU check, on the CPU: the
byte counter (GELU's five passes exactly, in-place and out= ops, views and allocations free), the
traffic rows, the logits-memory figure from fresh processes (each its own peak, not its parent's,
which getrusage would report), every part of the GPU check run on
the CPU with a tiny model (the kernel's rows under Triton's interpreter) and training through the
chunked loss only, its JSON lines written the moment each row is measured (a failing part keeps
the rows before it and the parts after it), its time budget (parts skipped, or stopped by the
alarm), the sync counter, the bandwidth table, --gpu handing the 124M config and the chosen parts
to the check, and `python bench_bio.py --gpu` without CUDA as a one-line error."""

import json
import subprocess
import sys
import time
import warnings

import pytest
import torch
from torch import nn

import bench_bio
from wigglegpt import gpu, oscillate_triton
import model_bio
from conftest import ROOT, require_module, tiny_config
from wigglegpt.common import UserError

# the GPU check's sizes for a tiny model on the CPU: every part runs, in seconds
TINY_SIZES = dict(max_batch=2, repeats=1, compiled=(False,), numerics_rows=64, compile_numerics=False,
                  explain_tokens=16, act_repeats=1, loop_iters=4, loop_warm=1, auto_sequences=4, budgets_gb=(8,),
                  fp16_steps=3, fp16_batch=2)


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_traffic_counter_counts_each_read_and_write():
    x, z = torch.randn(64, 100), torch.empty(64, 100)
    one = x.numel() * 4
    with bench_bio.TrafficCounter(min_numel=100) as counter:
        y = x * 2  # read x, write y
        assert counter.bytes == 2 * one
        y.add_(x)  # read y and x, write y
        assert counter.bytes == 5 * one
        torch.mul(x, y, out=z)  # out= is written, not read
        assert counter.bytes == 8 * one
        x.view(-1), x.t(), torch.empty_like(x), torch.ones(100) + 1  # views, an allocation, a parameter-sized op
        assert counter.bytes == 8 * one


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gelu_moves_five_tensors_of_x(dtype):
    e = torch.tensor([], dtype=dtype).element_size()
    # forward reads x, writes y; backward reads x and grad_y, writes grad_x
    assert bench_bio.activation_traffic(nn.GELU(), (64, 128), dtype, "cpu") == (2 * e, 3 * e)


def test_traffic_rows_compare_the_kernel_and_the_pytorch_path_with_gelu():
    rows = {row[0]: row for row in bench_bio.bench_traffic(quick=True)}
    for dtype, gelu in (("float32", 20), ("bfloat16", 10)):
        what, measured, goal, detail = rows[f"activation traffic kernel/GELU, {dtype}"]
        kernel = float(measured.rstrip("x"))
        assert goal == "<= 1.3x" and f"vs {gelu}.0 B per element" in detail and 1.0 <= kernel
        for where in ("as on CUDA", "on the CPU"):
            assert float(rows[f"  PyTorch path/GELU, {dtype}, {where}"][1].rstrip("x")) > 3 * kernel


def test_logits_memory_counts_what_the_full_logits_cost(monkeypatch):
    # a smaller vocabulary than GPT-2's keeps the four processes quick; the figure is in copies of it.
    # B=8 as the bench runs: at B=4 one copy is small beside the allocator's noise (0.8 to 1.5 seen)
    monkeypatch.setattr(bench_bio, "LOGITS_MODEL", dict(n_layer=1, n_head=2, n_embd=32, vocab_size=16384))
    monkeypatch.setattr(bench_bio, "LOGITS_BATCH", 8)
    parent = torch.ones(2**28)  # 1 GiB here: a child's peak must be its own, not this process's
    chunked, plain = bench_bio.bench_logits_memory(quick=True)
    assert chunked[0].endswith("chunked loss") and float(chunked[1]) < 1.5
    assert float(plain[1]) > 2.5  # logits, their log-softmax and its gradient at least
    assert "V=16,384" in plain[3] and "T=256" in plain[3]
    at_32 = float(chunked[3].split(" vs ")[1].split(" MB")[0].replace(",", ""))
    assert at_32 < parent.numel() * 4 / 2**20


def test_every_gpu_check_part_runs_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the kernel's parts too, in Triton's interpreter
    kernel, _ = oscillate_triton.available("cpu")
    losses = []
    real_forward = model_bio.GPT.forward

    def forward(self, idx, targets=None, kv_cache=None, return_logits=True):
        if targets is not None:
            losses.append(return_logits)
        return real_forward(self, idx, targets, kv_cache, return_logits)

    monkeypatch.setattr(model_bio.GPT, "forward", forward)
    out = tmp_path / "gpu.jsonl"
    rows = bench_bio.run_gpu_check("cpu", tiny_config(), TINY_SIZES, str(out), log=lambda line: None)
    by_name = {row[0]: row for row in rows}
    assert not [row for row in rows if row[1] in ("failed", "skipped")], rows
    assert losses and not any(losses)  # every training, eval and graph-break forward took the chunked loss
    # the rows as measured, one JSON line each between the start and end records
    lines = read_lines(out)
    assert lines[0]["part"] == "start" and lines[-1]["part"] == "end"
    assert [tuple(r[k] for k in bench_bio.ROW_FIELDS) for r in lines[1:-1]] == rows
    assert {r["part"] for r in lines[1:-1]} == set(bench_bio.GPU_PARTS)
    assert by_name["GPU"][1] == "none" and by_name["memory bandwidth"][1] == "unknown"
    paths = ["PyTorch path"] + (["kernel"] if kernel else [])
    for path in paths:
        for dtype, tolerance in (("bfloat16", 1e-2), ("float32", 1e-4)):
            assert float(by_name[f"numerics {path}, {dtype}"][1]) <= tolerance
    assert by_name["compiled model graph breaks"][1] == "0"
    assert float(by_name["124M Wiggle eager training tokens/s (GPU)"][1].replace(",", "")) > 0
    if kernel:
        assert by_name["124M tokens/s Wiggle / GELU, eager kernel (GPU)"][2] == ">= 0.90x"
        assert by_name["activation kernel forward+backward, bfloat16"][1].endswith("GB/s")
    ratio = by_name["train_bio loop / bare step tokens/s"]
    assert ratio[1].endswith("x") and "B=2 x 1, T=32" in ratio[3]
    assert by_name["train_bio GPU syncs per iteration"][1] == "n/a"
    assert by_name["batch_size='auto' under 8 GB"][1] == "4"
    assert by_name["fp16 + GradScaler, 3 steps"][1].startswith("finite")
    numbers = {r["what"]: r["value"] for r in lines[1:-1]}
    assert numbers["compiled model graph breaks"] == 0 and numbers["GPU"] is None


def test_the_rows_are_in_the_file_as_they_are_measured(tmp_path, monkeypatch):
    out = tmp_path / "gpu.jsonl"

    def first(check):
        yield ("first figure", "1.00x", "-", "measured")
        assert read_lines(out)[-1]["what"] == "first figure"  # on disk before the part goes on
        raise RuntimeError("out of luck\nmore detail")

    def second(check):
        assert [r["what"] for r in read_lines(out)[1:]] == ["first figure", "first"]
        yield ("second figure", "12,345", "-", "measured after the failure")

    monkeypatch.setattr(bench_bio, "GPU_PARTS", {"first": (first, 0), "second": (second, 0)})
    rows = bench_bio.run_gpu_check("cpu", tiny_config(), {}, str(out), log=lambda line: None)
    assert rows == [("first figure", "1.00x", "-", "measured"), ("first", "failed", "-", "RuntimeError: out of luck"),
                    ("second figure", "12,345", "-", "measured after the failure")]
    lines = read_lines(out)
    assert [r["part"] for r in lines] == ["start", "first", "first", "second", "end"]
    assert [r["value"] for r in lines[1:-1]] == [1.0, None, 12345.0]


def test_the_time_budget_skips_and_stops_parts(tmp_path, monkeypatch):
    closed = []

    def slow(check):
        try:
            yield ("slow start", "1", "-", "")
            time.sleep(30)  # the alarm ends it at twice its 0.3 s share
            yield ("never", "1", "-", "")
        finally:
            closed.append(True)

    monkeypatch.setattr(bench_bio, "GPU_PARTS", {
        "slow": (slow, 0.3),
        "too_big": (lambda check: iter([("never", "1", "-", "")]), 100),
        "quick": (lambda check: iter([("quick figure", f"{check.time_left():.0f}", "-", "")]), 0.1),
    })
    t0 = time.monotonic()
    rows = bench_bio.run_gpu_check("cpu", tiny_config(), {}, str(tmp_path / "gpu.jsonl"), budget_s=5,
                                   log=lambda line: None)
    assert time.monotonic() - t0 < 3
    assert rows[0] == ("slow start", "1", "-", "")
    assert rows[1][:3] == ("slow", "failed", "-") and rows[1][3].startswith("PartTimeout: stopped after 0.6 s")
    assert closed == [True]
    assert rows[2][:2] == ("too_big", "skipped") and "it needs about 100 s" in rows[2][3]
    assert rows[3][0] == "quick figure" and len(rows) == 4


def test_sync_counter_counts_the_sync_warnings_of_each_call(monkeypatch):
    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    def step(fail=False):
        warnings.warn("called a synchronizing CUDA operation")
        warnings.warn("called a synchronizing CUDA operation")  # the same place twice: both counted
        warnings.warn("something else")
        if fail:
            raise ValueError("stop")
        return "done"

    counts, starts = [], []
    wrapped = gpu.counting_syncs(step, counts, starts, cuda=True)
    assert wrapped() == "done" and counts == [2] and modes == ["warn", "default"]
    with pytest.raises(ValueError):
        wrapped(fail=True)
    assert counts == [2, 2] and modes[-1] == "default" and len(starts) == 2
    off = gpu.counting_syncs(step, counts, starts, cuda=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert off() == "done"
    assert counts == [2, 2] and len(modes) == 4 and len(starts) == 3  # nothing counted off CUDA


@pytest.mark.parametrize("name, bandwidth", [
    ("NVIDIA H200", 4.8e12), ("NVIDIA H200 NVL", 4.8e12), ("NVIDIA H100 80GB HBM3", 3.35e12),
    ("NVIDIA H100 PCIe", 2.0e12), ("NVIDIA A100-SXM4-80GB", 2.039e12), ("NVIDIA A100-SXM4-40GB", 1.555e12),
    ("NVIDIA A100 80GB PCIe", 1.935e12), ("NVIDIA GeForce RTX 3070", 448e9), ("NVIDIA GeForce RTX 5060 Ti", 448e9),
    ("NVIDIA GeForce RTX 4090", 1008e9), ("NVIDIA L4", 300e9),
    # another card's figure would be wrong: unknown instead
    ("NVIDIA GeForce RTX 3070 Ti", None), ("NVIDIA GeForce RTX 4090 D", None),
    ("NVIDIA GeForce RTX 3070 Laptop GPU", None), ("NVIDIA GH200 480GB", None), ("NVIDIA GeForce RTX 5060", None),
    ("", None),
])
def test_bandwidth_table(name, bandwidth):
    assert gpu.bandwidth_for(name) == bandwidth


def test_gpu_check_without_cuda_is_one_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = subprocess.run([sys.executable, "bench_bio.py", "--gpu"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--gpu needs a CUDA GPU" in r.stderr and "Traceback" not in r.stderr


def test_gpu_check_parts_are_checked(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench_bio.py", "--gpu", "--only=numerics,fp61"])
    with pytest.raises(UserError, match=r"unknown GPU check part\(s\) fp61; choose from environment, numerics"):
        bench_bio.main()


def test_gpu_flag_runs_the_check_with_the_124m_model(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_check(device, config, sizes, out_path, parts, log):
        calls.append((device, config, sizes, out_path, parts))
        return [("a figure", "1.00x", "-", "measured")]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the wiring only: the check is faked
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H200")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", torch.backends.cuda.matmul.allow_tf32)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", torch.backends.cudnn.allow_tf32)
    monkeypatch.setattr(bench_bio, "run_gpu_check", fake_check)
    out = str(tmp_path / "rows.jsonl")
    monkeypatch.setattr(sys, "argv", ["bench_bio.py", "--gpu", f"--out={out}", "--only=numerics,fp16"])
    bench_bio.main()
    assert calls == [("cuda", model_bio.GPTConfig(), {}, out, ["numerics", "fp16"])]
    printed = capsys.readouterr().out
    assert "NVIDIA H200" in printed and f"each row also goes to {out}" in printed and "a figure" in printed


def test_load_rows_compare_the_export_with_the_training_checkpoint():
    require_module("safetensors", "pip install -r requirements-optional.txt")
    time_row, memory_row = bench_bio.bench_load(quick=True)
    assert time_row[0] == "load for sampling: export / .pt time" and time_row[2] == "<= 0.5x"
    assert float(time_row[1].rstrip("x")) > 0 and " s vs " in time_row[3]
    # memory-mapped weights: loading grows the process far less than unpickling the .pt with AdamW
    assert float(memory_row[1].rstrip("x")) < 1.0, memory_row
    assert "safetensors" in memory_row[3] and ".pt with AdamW" in memory_row[3]
