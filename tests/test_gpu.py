"""Protects wigglegpt/gpu.py and the GPU choices around it, without a GPU: the one peak-FLOP/s table
(dense figures, Ti/SUPER/laptop parts never take another card's number, unknown -> no MFU rather
than a wrong one, the peak_flops setting wins), MFU's attention term at the trained sequence
length, real bf16 support decided by compute capability (torch.cuda functions monkeypatched),
cuda:N beyond the GPUs present, the memory estimate against the tensors autograd really keeps,
the estimate's fixed parts (autocast's weight copies, the chunked loss's buffers, the CUDA context)
and the report naming them, the batch_size='auto' search under a simulated out-of-memory (a
warm-up first, cuBLAS/cuDNN/raw CUDA allocation failures counted as not fitting, a trial that
cleans up and leaves room for other programs on the card: torch.cuda faked on the CPU), a
training run that chooses its own batch and keeps tokens_per_iter, and a benchmark section that
fails without losing the report."""

import dataclasses
import re
import subprocess
import sys

import pytest
import torch

import bench_bio
from wigglegpt import common, gpu
import train_bio
from conftest import ROOT, tiny_config
from model_bio import GPT, GPTConfig
from wigglegpt.common import UserError, pick_device, pick_dtype
from wigglegpt.settings import load_settings
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
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA H200 NVL", 835e12), ("NVIDIA GH200 480GB", 989e12),
    ("NVIDIA B200", 2250e12), ("Tesla V100S-PCIE-32GB", 130e12),
    # not in the table, or a variant with other clocks: unknown, never a neighbour's figure
    ("NVIDIA GeForce RTX 4070 SUPER", None), ("NVIDIA GeForce RTX 3070 Laptop GPU", None),
    ("NVIDIA GeForce RTX 4090 D", None), ("NVIDIA GeForce GTX 1660", None), ("NVIDIA A10G", None),
    ("NVIDIA RTX A1000", None), ("NVIDIA GB200", None), ("", None),
])
def test_peak_table(name, flops):
    assert gpu.peak_flops_for(name) == flops


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
    assert gpu.resolve_peak_flops(5e12, "cpu") == (5e12, "peak_flops setting")
    assert gpu.resolve_peak_flops(0.0, "cpu") == (None, None)
    fake_gpus(monkeypatch, ["NVIDIA GeForce RTX 3070", "NVIDIA GeForce RTX 9999"], [(8, 6), (8, 6)])
    assert gpu.resolve_peak_flops(0.0, "cuda") == (40.6e12, "table entry for NVIDIA GeForce RTX 3070")
    assert gpu.resolve_peak_flops(0.0, "cuda:1") == (None, None)
    assert "RTX 9999" in gpu.unknown_peak_hint("cuda:1") and "--peak_flops" in gpu.unknown_peak_hint("cuda:1")


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
    assert gpu.find_batch_size(trial, 32, log=quiet) == (4, False)
    assert tried == [(32, False), (16, False), (8, False), (4, False)]  # divisors of 32 only
    trial, tried = trial_up_to(0, checkpointed_limit=3)  # not even one sequence without checkpointing
    assert gpu.find_batch_size(trial, 12, log=quiet) == (3, True)
    assert tried == [(b, False) for b in (12, 6, 4, 3, 2, 1)] + [(b, True) for b in (12, 6, 4, 3)]
    trial, tried = trial_up_to(100, checkpointed_limit=2)  # checkpointing asked for: searched with it only
    assert gpu.find_batch_size(trial, 8, checkpointing=True, log=quiet) == (2, True)
    assert all(c for _, c in tried)
    trial, _ = trial_up_to(0, 0)
    with pytest.raises(UserError, match="not even one sequence fits"):
        gpu.find_batch_size(trial, 8, log=quiet)



def recording_trial(fits_plain, fits_checkpointed=0, error=lambda: torch.OutOfMemoryError("CUDA out of memory")):
    tried = []

    def trial(batch, checkpointing):
        tried.append((batch, checkpointing))
        if batch > (fits_checkpointed if checkpointing else fits_plain):
            raise error()
    return trial, tried


def test_find_batch_size_warms_up_with_one_sequence_first():
    lines = []
    trial, tried = recording_trial(6)
    assert gpu.find_batch_size(trial, 32, log=lines.append, warm_up=True) == (4, False)
    assert tried == [(1, False), (32, False), (16, False), (8, False), (4, False)]
    trial, tried = recording_trial(100, 2)  # the warm-up runs with the checkpointing asked for
    assert gpu.find_batch_size(trial, 8, checkpointing=True, log=lines.append, warm_up=True) == (2, True)
    assert tried == [(1, True), (8, True), (4, True), (2, True)]
    # a warm-up that does not fit changes nothing: the search steps down to checkpointing as before
    lines.clear()
    trial, tried = recording_trial(0, 2)
    assert gpu.find_batch_size(trial, 4, log=lines.append, warm_up=True) == (2, True)
    assert tried == [(1, False), (4, False), (2, False), (1, False), (4, True), (2, True)]
    assert lines[0].startswith("warm-up: batch_size 1 does not fit: CUDA out of memory")
    trial, _ = recording_trial(0, 0)
    with pytest.raises(UserError, match="not even one sequence fits"):
        gpu.find_batch_size(trial, 4, log=lines.append, warm_up=True)


@pytest.mark.parametrize("error", [
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
    torch.AcceleratorError("CUDA error: out of memory"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
])
def test_allocation_failures_that_are_not_out_of_memory_errors_do_not_fit(error):
    assert gpu.is_out_of_memory(error)
    lines = []
    trial, _ = recording_trial(2, error=lambda: error)
    assert gpu.find_batch_size(trial, 8, log=lines.append) == (2, False)
    assert lines[0] == f"batch_size 8 does not fit: {str(error).splitlines()[0]}"


@pytest.mark.parametrize("error", [RuntimeError("CUDA error: an illegal memory access was encountered"),
                                   ValueError("out of memory"), TypeError("forward() got an unexpected keyword")])
def test_other_errors_in_a_trial_propagate(error):
    assert not gpu.is_out_of_memory(error)
    trial, tried = recording_trial(2, error=lambda: error)
    with pytest.raises(type(error)) as raised:
        gpu.find_batch_size(trial, 8, log=lambda line: None, warm_up=True)
    assert raised.value is error
    assert tried == [(1, False), (8, False)]  # the warm-up fitted; the first failure stopped the search


class FakeCudaMemory:
    """torch.cuda's memory calls as a card would answer them, for a model that runs on the CPU:
    free/reserved as at the start of the search, and a peak that grows with the last batch."""

    def __init__(self, monkeypatch, free, total, reserved, peak_of_batch=lambda batch: 0):
        self.free, self.total, self.reserved, self.peak_of_batch = free, total, reserved, peak_of_batch
        self.batch, self.emptied = 0, 0
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (self.free, self.total))
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: self.reserved)
        monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: self.peak_of_batch(self.batch))
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
        monkeypatch.setattr(torch.cuda, "empty_cache", self.empty_cache)

    def empty_cache(self):
        self.emptied += 1


class FailsAbove(torch.nn.Module):
    """A model whose step makes its gradients, then fails the way error says above max_batch."""

    def __init__(self, model, max_batch, error, memory):
        super().__init__()
        self.model, self.config, self.max_batch, self.error, self.memory = model, model.config, max_batch, error, memory

    def forward(self, idx, targets, **kwargs):
        self.memory.batch = idx.shape[0]
        logits, loss = self.model(idx, targets, **kwargs)
        if idx.shape[0] > self.max_batch:
            loss.backward()  # a failure late in backward: gradients are there, the trial must drop them
            raise self.error
        return logits, loss


def test_cuda_trial_cleans_up_after_any_allocation_failure(monkeypatch):
    memory = FakeCudaMemory(monkeypatch, free=8 * gpu.GB, total=8 * gpu.GB, reserved=0)
    model = FailsAbove(GPT(tiny_config()), 2, RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED"), memory)
    trial = gpu.cuda_trial(model, 0, 16, "cpu", common.autocast_for("cpu", "float32"))
    with pytest.raises(RuntimeError, match="CUBLAS_STATUS_ALLOC_FAILED"):
        trial(4, False)
    assert all(p.grad is None for p in model.parameters()) and memory.emptied == 2  # before and after the try
    lines = []
    assert gpu.find_batch_size(trial, 8, log=lines.append, warm_up=True) == (2, False)
    assert all(p.grad is None for p in model.parameters()) and memory.emptied == 2 + 2 * 4  # warm-up, 8, 4, 2
    assert [line.split(":")[0] for line in lines] == ["batch_size 8 does not fit", "batch_size 4 does not fit"]
    model.error = RuntimeError("CUDA error: an illegal memory access was encountered")  # not memory: raised
    with pytest.raises(RuntimeError, match="illegal memory access"):
        gpu.find_batch_size(trial, 8, log=lines.append)
    assert all(p.grad is None for p in model.parameters())


def test_cuda_trial_leaves_room_for_other_programs_on_the_card(monkeypatch):
    # an 80 GB card with 3 GB free, 1 GB of it held by this process: 4 GB to use, 90% of it 3.6 GB
    memory = FakeCudaMemory(monkeypatch, free=3 * gpu.GB, total=80 * gpu.GB, reserved=1 * gpu.GB,
                            peak_of_batch=lambda batch: (1 + batch / 2) * gpu.GB)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: pytest.fail("total memory used"))
    model = FailsAbove(GPT(tiny_config()), 100, None, memory)
    trial = gpu.cuda_trial(model, 0, 16, "cpu", common.autocast_for("cpu", "float32"))
    memory.free = 80 * gpu.GB  # what is free later does not move the budget, measured at the start
    lines = []
    assert gpu.find_batch_size(trial, 16, log=lines.append) == (4, False)  # 3.0 GB; 8 would peak at 5.0
    assert lines == ["batch_size 16 does not fit: peak 9.00 GB is over 90% of the 4.00 GB free to this run",
                     "batch_size 8 does not fit: peak 5.00 GB is over 90% of the 4.00 GB free to this run"]


def test_auto_batch_warms_up_on_cuda_only(monkeypatch):
    tried = []

    def fake_cuda_trial(model, optimizer_bytes, seq_len, device, autocast):
        return lambda batch, checkpointing: tried.append((batch, checkpointing))

    monkeypatch.setattr(gpu, "cuda_trial", fake_cuda_trial)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.get_rng_state())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": None)
    model = GPT(tiny_config())
    autocast = common.autocast_for("cpu", "float32")
    assert gpu.auto_batch(model, 32, 8, "bfloat16", "cuda", autocast, False, log=lambda line: None) == (8, False)
    assert tried == [(1, False), (8, False)]
    monkeypatch.setattr(gpu, "free_memory", lambda device: None)  # the CPU: the estimate only, no warm-up
    assert gpu.auto_batch(model, 32, 8, "float32", "cpu", autocast, True, log=lambda line: None) == (8, True)
    assert tried == [(1, False), (8, False)]

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
    estimate = gpu.memory_estimate(cfg, sum(p.numel() for p in model.parameters()), 64, dtype)
    measured = saved_bytes(model, torch.randint(0, 64, (2, 64)), common.autocast_for("cpu", dtype)) / 2
    predicted = estimate["per_sequence_checkpointed" if checkpointing else "per_sequence"]
    # the estimate also holds the logits' gradients and, checkpointed, the one block rebuilt in backward
    assert 0.95 * measured <= predicted <= (1.6 if not checkpointing else 6) * measured
    assert estimate["adamw"] == 2 * estimate["weights"] == 2 * estimate["gradients"]



@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_memory_estimate_counts_every_fixed_part(dtype):
    cfg = GPTConfig()  # GPT-2 124M
    n, V, C, T = 124_000_000, cfg.vocab_size, cfg.n_embd, 1024
    estimate = gpu.memory_estimate(cfg, n, T, dtype)
    # autocast keeps a 2-byte copy of every matmul weight from forward through backward
    assert estimate["autocast_weights"] == (0 if dtype == "float32" else 2 * n)
    assert estimate["lm_head_gradient"] == V * C * 4 and estimate["logits_chunk"] == 256 * V * 12
    assert estimate["cuda_context"] == 0  # measured by the caller on CUDA; the estimate stays pure
    with_context = gpu.memory_estimate(cfg, n, T, dtype, cuda_context=gpu.GB // 2)
    assert with_context["cuda_context"] == gpu.GB // 2
    for batch, checkpointing in ((1, False), (8, False), (8, True)):
        per = estimate["per_sequence_checkpointed" if checkpointing else "per_sequence"]
        fixed = sum(estimate[key] for key in estimate if not key.startswith("per_sequence"))
        assert gpu.needed_bytes(estimate, batch, checkpointing) == fixed + batch * per
        assert (gpu.needed_bytes(with_context, batch, checkpointing)
                - gpu.needed_bytes(estimate, batch, checkpointing)) == gpu.GB // 2


def test_memory_estimate_follows_the_chunked_loss_not_the_full_logits():
    cfg, T, n = GPTConfig(), 1024, 124_000_000
    C, V = cfg.n_embd, cfg.vocab_size
    estimate = gpu.memory_estimate(cfg, n, T, "bfloat16")
    # GPT-2 124M, bf16: 12 blocks' activations, then embeddings/final norm (7 fp32), dL/dx (bf16 + fp32) and
    # the logits chunk's 12 bytes per token and n_embd: about 0.53 GB a sequence (1.10 GB with the full logits)
    assert estimate["per_sequence"] == 12 * T * C * (7 * 4 + 14 * 2) + T * C * (7 * 4 + 2 + 4 + 12)
    # the B x T x V logits are never held: a larger vocabulary costs only the fixed parts more
    bigger = gpu.memory_estimate(dataclasses.replace(cfg, vocab_size=2 * V), n, T, "bfloat16")
    assert bigger["per_sequence"] == estimate["per_sequence"]
    assert bigger["logits_chunk"] == 2 * estimate["logits_chunk"]
    assert bigger["lm_head_gradient"] == 2 * estimate["lm_head_gradient"]
    # at any batch the loss's chunk, max(256, B*T*n_embd/V) positions x V x 12 bytes, stays inside the estimate
    for B in (1, 2, 8, 32, 128):
        rows = max(256, -(-B * T * C // V))
        assert rows * V * 12 <= estimate["logits_chunk"] + B * T * C * 12


def test_memory_report_advises_when_it_will_not_fit():
    estimate = gpu.memory_estimate(tiny_config(), 10_000, 32, "bfloat16")
    fits = gpu.memory_report(estimate, 4, False, free=10 * gpu.GB)
    assert len(fits) == 1 and re.search(r"about \d+\.\d\d GB of 10\.00 GB free", fits[0])
    too_big = gpu.memory_report(estimate, 4, False, free=gpu.needed_bytes(estimate, 4, False) - 1)
    assert too_big[1].startswith("warning: this will likely not fit") and "batch_size='auto'" in too_big[1]
    assert "--gradient_checkpointing=True" in too_big[1]


def test_memory_report_names_the_new_parts():
    bf16 = gpu.memory_estimate(tiny_config(), 10_000, 32, "bfloat16", cuda_context=gpu.GB // 2)
    line = gpu.memory_report(bf16, 4, False, free=10 * gpu.GB)[0]
    for part in ("weights 0.00 GB", "AdamW", "autocast weight copies", "lm_head gradient", "logits chunk",
                 "CUDA context and other programs 0.50 GB"):
        assert part in line
    line = gpu.memory_report(gpu.memory_estimate(tiny_config(), 10_000, 32, "float32"), 4, False, free=None)[0]
    assert "autocast" not in line and "CUDA context" not in line and "logits chunk" in line  # parts of 0 are left out


def test_startup_report_counts_what_the_card_holds_outside_pytorch(monkeypatch):
    model = GPT(tiny_config())
    # an 8 GB card: 5 GB free, 1 GB held by this process's allocator, so 2 GB by the context and other programs
    FakeCudaMemory(monkeypatch, free=5 * gpu.GB, total=8 * gpu.GB, reserved=1 * gpu.GB)
    lines = gpu.startup_memory_report(model, 32, 4, "bfloat16", "cuda")
    assert len(lines) == 1 and "CUDA context and other programs 2.00 GB" in lines[0]
    assert re.search(r"about 2\.\d\d GB of 8\.00 GB on the card$", lines[0])
    FakeCudaMemory(monkeypatch, free=0, total=2 * gpu.GB, reserved=0)  # a card another program filled
    lines = gpu.startup_memory_report(model, 32, 4, "bfloat16", "cuda")
    assert "CUDA context and other programs 2.00 GB" in lines[0]
    assert lines[1].startswith("warning: this will likely not fit")


def test_auto_batch_leaves_the_random_streams_alone(monkeypatch):
    model = GPT(tiny_config(dropout=0.1))
    estimate = gpu.memory_estimate(model.config, sum(p.numel() for p in model.parameters()), 32, "float32")
    # room for 5 sequences: 4 is the largest divisor of 8
    free = (gpu.fixed_bytes(estimate) + 5 * estimate["per_sequence"]) / 0.8
    monkeypatch.setattr(gpu, "free_memory", lambda device: (free, free))
    before = torch.get_rng_state()
    assert gpu.auto_batch(model, 32, 8, "float32", "cpu", common.autocast_for("cpu", "float32"),
                              False, log=lambda line: None) == (4, False)
    assert torch.equal(torch.get_rng_state(), before)


def test_batch_size_auto_keeps_the_tokens_per_iteration(tmp_path, monkeypatch, capsys):
    s = tiny(tmp_path, batch_size="auto", tokens_per_iter=128, max_iters=2, eval_interval=2)  # 8 sequences of 16
    model = GPT(train_bio.model_config_from(train_bio.as_settings(s)))
    estimate = gpu.memory_estimate(model.config, sum(p.numel() for p in model.parameters()), 16, "float32")
    free = (gpu.fixed_bytes(estimate) + 3 * estimate["per_sequence"]) / 0.8
    monkeypatch.setattr(gpu, "free_memory", lambda device: (free, free))
    summary = train_bio.train(s)
    out = capsys.readouterr().out
    assert "batch_size='auto': batch_size 2 x gradient_accumulation_steps 4 x block_size 16 = 128 tokens" in out
    assert "batch_size 8 does not fit: estimated" in out and "batch_size 4 does not fit" in out
    assert summary["tokens"] == 2 * 128
    records = metrics(s["out_dir"])
    assert records[0]["config"]["batch_size"] == "auto"  # the settings as given; what the run found beside them
    assert records[0]["derived"]["batch_size"] == 2 and records[0]["derived"]["gradient_accumulation_steps"] == 4
    # no peak known for a CPU: MFU is unknown, never a made-up number
    assert "note: MFU unknown" in out and "mfu unknown" in out
    assert [r["mfu"] for r in records if r["kind"] == "train"] == [None, None]
    # a resume keeps the run's choice even where more memory is free now: same micro-batches
    monkeypatch.setattr(gpu, "free_memory", lambda device: (100 * free, 100 * free))
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
        results[rank] = [gpu.agree_across_processes(*pair, 8, "cpu") for pair in found[rank]]
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
    # the ratio is printed to 0.01 from the exact rates; the rates are printed as whole tokens/s
    rounding = 0.005 + (wiggle / gelu) * (0.5 / wiggle + 0.5 / gelu) * 1.01
    assert ratio.endswith("x") and abs(float(ratio[:-1]) - wiggle / gelu) <= rounding
