"""Protects gpu_bio.py and the GPU choices around it, without a GPU: the one peak-FLOP/s table
(dense figures, Ti/SUPER/laptop parts never take another card's number, unknown -> no MFU rather
than a wrong one, the peak_flops setting wins), MFU's attention term at the trained sequence
length, real bf16 support decided by compute capability (torch.cuda functions monkeypatched),
cuda:N beyond the GPUs present, the memory estimate against the tensors autograd really keeps,
the batch_size='auto' search under a simulated out-of-memory, a training run that chooses its
own batch and keeps tokens_per_iter, and a benchmark section that fails without losing the report."""

import re
import subprocess
import sys

import pytest
import torch

import bench_bio
import gpu_bio
import settings_bio
import train_bio
from conftest import ROOT, tiny_config
from model_bio import GPT
from settings_bio import UserError, load_settings, pick_device, pick_dtype
from test_train import metrics, tiny


@pytest.mark.parametrize("name, flops", [
    ("NVIDIA GeForce RTX 3060", 25.5e12), ("NVIDIA GeForce RTX 3060 Ti", 32.4e12),
    ("NVIDIA GeForce RTX 3070", 40.6e12), ("NVIDIA GeForce RTX 3080", 59.5e12), ("NVIDIA GeForce RTX 3090", 71e12),
    ("NVIDIA GeForce RTX 4060 Ti", 44.1e12), ("NVIDIA GeForce RTX 4070", 58.3e12),
    ("NVIDIA GeForce RTX 4080", 97.5e12), ("NVIDIA GeForce RTX 4090", 165.2e12),
    ("NVIDIA GeForce RTX 5060 Ti", 47.4e12), ("NVIDIA GeForce RTX 5070", 61.7e12),
    ("NVIDIA GeForce RTX 5080", 112.6e12), ("NVIDIA GeForce RTX 5090", 209.5e12),
    ("Tesla T4", 65e12), ("Tesla V100-SXM2-16GB", 125e12), ("Tesla V100-PCIE-32GB", 112e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100 80GB PCIe", 312e12), ("NVIDIA L4", 121e12),
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    # not in the table, or a variant with other clocks: unknown, never a neighbour's figure
    ("NVIDIA GeForce RTX 4070 SUPER", None), ("NVIDIA GeForce RTX 3070 Laptop GPU", None),
    ("NVIDIA GeForce RTX 4090 D", None), ("NVIDIA GeForce GTX 1660", None), ("NVIDIA A10G", None), ("", None),
])
def test_peak_table(name, flops):
    assert gpu_bio.peak_flops_for(name) == flops


def fake_gpus(monkeypatch, names, capabilities):
    """torch.cuda as if len(names) GPUs were present; torch's own check says bf16 everywhere
    (as it does on Turing through emulation)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(names))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: names[i])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: capabilities[i])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)


def test_peak_setting_wins_and_unknown_gives_a_hint(monkeypatch):
    assert gpu_bio.resolve_peak_flops(5e12, "cpu") == (5e12, "peak_flops setting")
    assert gpu_bio.resolve_peak_flops(0.0, "cpu") == (None, None)
    fake_gpus(monkeypatch, ["NVIDIA GeForce RTX 3070", "NVIDIA GeForce RTX 9999"], [(8, 6), (8, 6)])
    assert gpu_bio.resolve_peak_flops(0.0, "cuda") == (40.6e12, "table entry for NVIDIA GeForce RTX 3070")
    assert gpu_bio.resolve_peak_flops(0.0, "cuda:1") == (None, None)
    assert "RTX 9999" in gpu_bio.unknown_peak_hint("cuda:1") and "--peak_flops" in gpu_bio.unknown_peak_hint("cuda:1")


def test_mfu_attention_term_uses_the_trained_sequence_length():
    model = GPT(tiny_config(block_size=64))
    n = model.get_num_params()
    flops_per_token = lambda T: 6 * n + 12 * 2 * 32 * T  # noqa: E731
    assert model.estimate_mfu(1000, 0.5, 1e12, seq_len=16) == pytest.approx(flops_per_token(16) * 1000 / 0.5 / 1e12)
    assert model.estimate_mfu(1000, 0.5, 1e12) == pytest.approx(flops_per_token(64) * 1000 / 0.5 / 1e12)


def test_bf16_only_on_gpus_that_compute_it(monkeypatch):
    fake_gpus(monkeypatch, ["NVIDIA GeForce RTX 3070", "Tesla T4"], [(8, 6), (7, 5)])
    assert pick_dtype("auto", "cuda") == "bfloat16"  # cuda = the current device, the 3070
    assert pick_dtype("auto", "cuda:0") == "bfloat16"
    assert pick_dtype("auto", "cuda:1") == "float16"  # torch.cuda.is_bf16_supported() says True here
    assert pick_dtype("bfloat16", "cuda:0") == "bfloat16"
    with pytest.raises(UserError, match=r"Tesla T4 has no hardware bfloat16.*--dtype=float16"):
        pick_dtype("bfloat16", "cuda:1")
    assert pick_dtype("float16", "cuda:1") == "float16"


def test_cuda_device_number_is_checked(monkeypatch):
    fake_gpus(monkeypatch, ["NVIDIA GeForce RTX 3070", "NVIDIA GeForce RTX 3070"], [(8, 6), (8, 6)])
    assert pick_device("cuda:1") == "cuda:1" and pick_device("cuda") == "cuda"
    with pytest.raises(UserError, match=r"device=cuda:7 asked for, but this machine has 2 GPU\(s\): cuda:0 to cuda:1"):
        pick_device("cuda:7")
    for wrong in ("cuda:first", "cuda:"):
        with pytest.raises(UserError, match="whole number"):
            pick_device(wrong)
    with pytest.raises(UserError, match="unknown device"):
        pick_device("cudax")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU"):
        pick_device("cuda:0")


def test_cuda_on_a_machine_without_it_is_one_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = subprocess.run([sys.executable, "train_bio.py", "--device=cuda:7"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no CUDA GPU" in r.stderr, r.stderr


def test_find_batch_size_backs_off_then_checkpoints():
    def trial_up_to(limit, checkpointed_limit=0):
        tried = []

        def trial(batch, checkpointing):
            tried.append((batch, checkpointing))
            if batch > (checkpointed_limit if checkpointing else limit):
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return trial, tried

    quiet = lambda line: None  # noqa: E731
    trial, tried = trial_up_to(6)
    assert gpu_bio.find_batch_size(trial, 32, log=quiet) == (4, False)
    assert tried == [(32, False), (16, False), (8, False), (4, False)]  # divisors of 32 only
    trial, tried = trial_up_to(0, checkpointed_limit=3)  # not even one sequence without checkpointing
    assert gpu_bio.find_batch_size(trial, 12, log=quiet) == (3, True)
    assert tried == [(b, False) for b in (12, 6, 4, 3, 2, 1)] + [(b, True) for b in (12, 6, 4, 3)]
    trial, tried = trial_up_to(100, checkpointed_limit=2)  # checkpointing asked for: searched with it only
    assert gpu_bio.find_batch_size(trial, 8, checkpointing=True, log=quiet) == (2, True)
    assert all(c for _, c in tried)
    trial, _ = trial_up_to(0, 0)
    with pytest.raises(UserError, match="not even one sequence fits"):
        gpu_bio.find_batch_size(trial, 8, log=quiet)


def saved_bytes(model, idx, autocast):
    """Bytes autograd keeps for backward in one training forward (unique storages, no weights)."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        model(idx, idx)
    weights = {(p.untyped_storage().data_ptr(), p.dtype) for p in model.parameters()}
    return sum(n for key, n in seen.items() if key not in weights)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_memory_estimate_follows_what_autograd_keeps(dtype, checkpointing):
    cfg = tiny_config(n_layer=4, n_embd=64, block_size=64, vocab_size=64, gradient_checkpointing=checkpointing)
    model = GPT(cfg).train()
    estimate = gpu_bio.memory_estimate(cfg, sum(p.numel() for p in model.parameters()), 64, dtype)
    measured = saved_bytes(model, torch.randint(0, 64, (2, 64)), settings_bio.autocast_for("cpu", dtype)) / 2
    predicted = estimate["per_sequence_checkpointed" if checkpointing else "per_sequence"]
    # the estimate also holds the logits' gradients and, checkpointed, the one block rebuilt in backward
    assert 0.95 * measured <= predicted <= (1.6 if not checkpointing else 6) * measured
    assert estimate["adamw"] == 2 * estimate["weights"] == 2 * estimate["gradients"]


def test_memory_report_advises_when_it_will_not_fit():
    estimate = gpu_bio.memory_estimate(tiny_config(), 10_000, 32, "bfloat16")
    fits = gpu_bio.memory_report(estimate, 4, False, free=10 * gpu_bio.GB)
    assert len(fits) == 1 and re.search(r"about \d+\.\d\d GB of 10\.00 GB free", fits[0])
    too_big = gpu_bio.memory_report(estimate, 4, False, free=gpu_bio.needed_bytes(estimate, 4, False) - 1)
    assert too_big[1].startswith("warning: this will likely not fit") and "batch_size='auto'" in too_big[1]
    assert "--gradient_checkpointing=True" in too_big[1]


def test_auto_batch_leaves_the_random_streams_alone(monkeypatch):
    model = GPT(tiny_config(dropout=0.1))
    estimate = gpu_bio.memory_estimate(model.config, sum(p.numel() for p in model.parameters()), 32, "float32")
    fixed = estimate["weights"] + estimate["gradients"] + estimate["adamw"]
    free = (fixed + 5 * estimate["per_sequence"]) / 0.8  # room for 5 sequences: 4 is the largest divisor of 8
    monkeypatch.setattr(gpu_bio, "free_memory", lambda device: (free, free))
    before = torch.get_rng_state()
    assert gpu_bio.auto_batch(model, 32, 8, "float32", "cpu", settings_bio.autocast_for("cpu", "float32"),
                              False, log=lambda line: None) == (4, False)
    assert torch.equal(torch.get_rng_state(), before)


def test_batch_size_auto_keeps_the_tokens_per_iteration(tmp_path, monkeypatch, capsys):
    s = tiny(tmp_path, batch_size="auto", tokens_per_iter=128, max_iters=2, eval_interval=2)  # 8 sequences of 16
    model = GPT(train_bio.model_config_from(train_bio.as_settings(s)))
    estimate = gpu_bio.memory_estimate(model.config, sum(p.numel() for p in model.parameters()), 16, "float32")
    free = (estimate["weights"] + estimate["gradients"] + estimate["adamw"] + 3 * estimate["per_sequence"]) / 0.8
    monkeypatch.setattr(gpu_bio, "free_memory", lambda device: (free, free))
    summary = train_bio.train(s)
    out = capsys.readouterr().out
    assert "batch_size='auto': batch_size 2 x gradient_accumulation_steps 4 x block_size 16 = 128 tokens" in out
    assert "batch_size 8 does not fit: estimated" in out and "batch_size 4 does not fit" in out
    assert summary["tokens"] == 2 * 128
    records = metrics(s["out_dir"])
    assert records[0]["config"]["batch_size"] == 2 and records[0]["config"]["gradient_accumulation_steps"] == 4
    # no peak known for a CPU: MFU is unknown, never a made-up number
    assert "note: MFU unknown" in out and "mfu unknown" in out
    assert [r["mfu"] for r in records if r["kind"] == "train"] == [None, None]
    # a resume keeps the run's choice even where more memory is free now: same micro-batches
    monkeypatch.setattr(gpu_bio, "free_memory", lambda device: (100 * free, 100 * free))
    summary = train_bio.train({**s, "init_from": "resume", "max_iters": 4})
    out = capsys.readouterr().out
    assert "resuming with the run's batch_size 2 x gradient_accumulation_steps 4" in out
    assert "does not fit" not in out and summary["tokens"] == 4 * 128


def test_batch_size_auto_settings(tmp_path):
    s = load_settings(train_bio.SETTINGS, ["--batch_size=auto", "--tokens_per_iter=4096", "--block_size=128"])
    assert s.batch_size == "auto"
    train_bio.check_settings(s)
    with pytest.raises(UserError, match="batch_size='auto' needs the tokens per iteration"):
        train_bio.check_settings(load_settings(train_bio.SETTINGS, ["--batch_size=auto"]))
    with pytest.raises(UserError, match="not a whole number of block_size 128 sequences"):
        train_bio.check_settings(load_settings(train_bio.SETTINGS, ["--batch_size=auto", "--block_size=128",
                                                                     "--tokens_per_iter=1000"]))
    with pytest.raises(UserError, match=r"= 8,192 tokens, but tokens_per_iter=4,096"):
        train_bio.check_settings(load_settings(train_bio.SETTINGS, ["--batch_size=4", "--gradient_accumulation_steps=2",
                                                                     "--block_size=1024", "--tokens_per_iter=4096"]))
    with pytest.raises(UserError, match=r"batch_size='large'.* or 'auto'"):
        load_settings(train_bio.SETTINGS, ["--batch_size=large"])


def test_a_failing_benchmark_section_keeps_the_report(monkeypatch, capsys):
    def out_of_memory(quick):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setitem(bench_bio.SECTIONS, "boom", out_of_memory)
    monkeypatch.setitem(bench_bio.SECTIONS, "fine", lambda quick: [("fine figure", "1.0x", "-", "ok")])
    monkeypatch.setattr(sys, "argv", ["bench_bio.py", "--only=boom,fine"])
    bench_bio.main()
    table = capsys.readouterr().out.split("benchmark", 1)[1]
    assert re.search(r"boom\s+failed\s+-\s+OutOfMemoryError: CUDA out of memory\. Tried to allocate 2\.00 GiB\n", table)
    assert "fine figure" in table and "more detail" not in table


def _agree(rank, world, init_file, found, results):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results[rank] = [gpu_bio.agree_across_processes(*pair, 8, "cpu") for pair in found[rank]]
    finally:
        dist.destroy_process_group()


def test_processes_agree_on_the_smallest_micro_batch(tmp_path):
    # rank 0 fits 4 plain; rank 1 fits 8 plain, then needs checkpointing for 2: all take the smaller
    found = [[(4, False), (4, False)], [(8, False), (2, True)]]
    with torch.multiprocessing.Manager() as manager:
        results = manager.dict()
        torch.multiprocessing.spawn(_agree, args=(2, str(tmp_path / "init"), found, results), nprocs=2)
        assert results[0] == results[1] == [(4, False), (2, True)]


def test_training_figures_report_both_mlps_and_their_ratio_on_the_cpu():
    """The GPU section's measurement, run on the CPU with a tiny shape (eager only: compiling
    two models would cost the suite half a minute; test_compile covers compiled training)."""
    rows = {row[0]: row for row in bench_bio.training_figures("cpu", tiny_config(vocab_size=64), 2, 1,
                                                              compiled=(False,))}
    for mlp in ("Wiggle", "GELU"):
        what, tokens, _, detail = rows[f"124M {mlp} eager training tokens/s (GPU)"]
        assert float(tokens.replace(",", "")) > 0 and "T=32" in detail
    wiggle = float(rows["124M Wiggle eager training tokens/s (GPU)"][1].replace(",", ""))
    gelu = float(rows["124M GELU eager training tokens/s (GPU)"][1].replace(",", ""))
    ratio = rows["124M tokens/s Wiggle / GELU, eager (GPU)"][1]
    assert ratio.endswith("x") and abs(float(ratio[:-1]) - wiggle / gelu) <= 0.006  # both printed rounded
