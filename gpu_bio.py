"""
Fitting a GPU: its peak FLOP/s (for MFU), whether it really computes in bfloat16, how much
memory a run needs, and the largest micro-batch that fits.

Training (train_bio.py) and the benchmark (bench_bio.py) both take their figures from here,
so an MFU printed by either is measured against the same peak.
"""

import os
import re

import torch

from settings_bio import UserError

# ---------------------------------------------------------------------------------------
# peak FLOP/s: dense (no 2:4 sparsity) bf16/fp16 tensor-core rates, from NVIDIA's data sheets
# and architecture whitepapers. GeForce cards run fp16/bf16 with fp32 accumulation (what
# autocast training does) at half their fp16-accumulate rate; their figures below are the
# fp32-accumulate ones. Data-center cards run both at the same rate.

PEAK_FLOPS = [  # (device-name pattern, dense FLOP/s), first match wins: "3060 Ti" before "3060"
    # Turing / Volta
    (r"RTX 2080 Ti", 56.9e12),
    (r"\bT4\b", 65e12),
    (r"V100.*PCIE", 112e12),
    (r"V100", 125e12),  # SXM2
    # Ampere GeForce (GA10x whitepaper, fp32 accumulate)
    (r"RTX 3060 Ti", 32.4e12),
    (r"RTX 3060", 25.5e12),
    (r"RTX 3070 Ti", 43.5e12),
    (r"RTX 3070", 40.6e12),
    (r"RTX 3080 Ti", 68.2e12),
    (r"RTX 3080", 59.5e12),
    (r"RTX 3090 Ti", 80e12),
    (r"RTX 3090", 71e12),
    # Ada GeForce (AD10x whitepaper, fp32 accumulate)
    (r"RTX 4060 Ti", 44.1e12),
    (r"RTX 4070 Ti", 80.2e12),
    (r"RTX 4070", 58.3e12),
    (r"RTX 4080", 97.5e12),
    (r"RTX 4090", 165.2e12),
    # Blackwell GeForce (GB20x whitepaper, fp32 accumulate)
    (r"RTX 5060 Ti", 47.4e12),
    (r"RTX 5070 Ti", 87.9e12),
    (r"RTX 5070", 61.7e12),
    (r"RTX 5080", 112.6e12),
    (r"RTX 5090", 209.5e12),
    # data center
    (r"A100", 312e12),
    (r"\bA10\b", 125e12),  # not the A10G: AWS's variant runs at other clocks
    (r"\bL4\b", 121e12),
    (r"L40S", 362e12),
    (r"H100.*PCIE", 756e12),
    (r"H100.*NVL", 835e12),
    (r"H100", 989e12),  # SXM (HBM3)
    (r"H200", 989e12),
]

# a mobile part shares the desktop name but runs at far lower clocks and power
_MOBILE = re.compile(r"LAPTOP|MOBILE|MAX-Q", re.I)
_SUFFIXES = re.compile(r"\s+(TI|SUPER|D)\b", re.I)  # e.g. the RTX 4090 D has fewer cores


def peak_flops_for(name):
    """Dense bf16/fp16 tensor FLOP/s of the GPU called name, or None when not in the table."""
    if not name or _MOBILE.search(name):
        return None
    for pattern, flops in PEAK_FLOPS:
        match = re.search(pattern, name, re.I)
        if match is None:
            continue
        rest = name[match.end():]
        # "RTX 4070" must not take a "RTX 4070 SUPER": a suffix the pattern did not ask for
        if _SUFFIXES.match(rest):
            continue
        return flops
    return None


def device_name(device):
    """The GPU's name for a 'cuda' / 'cuda:N' device, else '' (CPUs and MPS are not in the table)."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return ""
    return torch.cuda.get_device_name(cuda_index(device))


def resolve_peak_flops(setting, device):
    """(peak FLOP/s or None, where it came from). The setting wins when it is positive."""
    if setting and setting > 0:
        return float(setting), "peak_flops setting"
    name = device_name(device)
    flops = peak_flops_for(name)
    return flops, (f"table entry for {name}" if flops else None)


def unknown_peak_hint(device):
    """The one line training and the benchmark print when MFU cannot be measured."""
    name = device_name(device) or device
    return (f"MFU unknown: no peak FLOP/s on record for {name}; set --peak_flops to its dense "
            "bf16/fp16 tensor FLOP/s (e.g. --peak_flops=40.6e12 for an RTX 3070) to see it")


# ---------------------------------------------------------------------------------------
# devices and real bfloat16

def cuda_index(device):
    """'cuda' -> the current device, 'cuda:N' -> N."""
    _, _, index = device.partition(":")
    return int(index) if index else torch.cuda.current_device()


def has_native_bf16(device):
    """True when the GPU computes bf16 in hardware (compute capability 8.0+: Ampere and newer).
    torch.cuda.is_bf16_supported() also says True on Turing/Volta (T4, V100, RTX 20xx, GTX 16xx),
    where bf16 is emulated and far slower than fp16."""
    return torch.cuda.get_device_capability(cuda_index(device)) >= (8, 0)


# ---------------------------------------------------------------------------------------
# memory: an estimate, for the start-up report and for batch_size='auto' off CUDA

GB = 2**30


def memory_estimate(config, n_params, seq_len, dtype):
    """Bytes a training run needs: fixed (weights, gradients, AdamW states) and per sequence.

    Activations follow the tensors autograd saves for backward, measured on this model: per
    block and token, 7 fp32 values of n_embd (residual stream, norm inputs) plus 14 values in
    the compute dtype (q, k, v, attention output, MLP hidden ...); with gradient checkpointing
    only each block's fp32 input stays, and one block is rebuilt at a time in backward. The
    logits cost 8 bytes (fp32 log-softmax and its gradient) plus 2 values in the compute dtype
    (logits and their gradient) per vocabulary entry and token. Allocator slack and the CUDA context come on top.
    """
    act = 4 if dtype == "float32" else 2
    C, T, L, V = config.n_embd, seq_len, config.n_layer, config.vocab_size
    per_block = T * C * (7 * 4 + 14 * act)
    outside = T * C * 7 * 4 + T * V * (8 + 2 * act)
    return {
        "weights": 4 * n_params,  # fp32 master weights (autocast computes in the low dtype)
        "gradients": 4 * n_params,
        "adamw": 8 * n_params,  # exp_avg and exp_avg_sq
        "per_sequence": L * per_block + outside,
        "per_sequence_checkpointed": L * T * C * 4 + per_block + outside,
    }


def needed_bytes(estimate, batch_size, checkpointing):
    per = estimate["per_sequence_checkpointed" if checkpointing else "per_sequence"]
    return estimate["weights"] + estimate["gradients"] + estimate["adamw"] + batch_size * per


def free_memory(device):
    """(free bytes, total bytes) of the device; for the CPU the available RAM (Linux: MemAvailable,
    which counts the page cache the kernel gives back; free RAM alone undercounts), else None."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(cuda_index(device))
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.strip().endswith("kB")}
        return info["MemAvailable"], info["MemTotal"]
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):  # macOS, Windows
        return None


def memory_report(estimate, batch_size, checkpointing, free):
    """Lines that set the estimate against the free memory, with advice when it will not fit."""
    gb = lambda n: f"{n / GB:.2f} GB"  # noqa: E731
    total = needed_bytes(estimate, batch_size, checkpointing)
    lines = [f"memory estimate: weights {gb(estimate['weights'])}, gradients {gb(estimate['gradients'])}, "
             f"AdamW {gb(estimate['adamw'])}; activations {gb(estimate['per_sequence'])} per sequence "
             f"({gb(estimate['per_sequence_checkpointed'])} with gradient checkpointing) x batch_size {batch_size}"
             f"{' (checkpointed)' if checkpointing else ''}: about {gb(total)}"
             + (f" of {gb(free)} free" if free is not None else "")]
    if free is not None and total > free:
        advice = ["batch_size='auto' (finds the largest batch that fits)"]
        if not checkpointing:
            advice.append("--gradient_checkpointing=True")
        advice.append("a smaller batch_size with a larger gradient_accumulation_steps (same tokens per iteration)")
        lines.append(f"warning: this will likely not fit; try {', or '.join(advice)}")
    return lines


# ---------------------------------------------------------------------------------------
# batch_size='auto'

def divisors_descending(n):
    return [d for d in range(n, 0, -1) if n % d == 0]


def find_batch_size(trial, sequences, checkpointing=False, log=print):
    """The largest micro-batch that fits, as (batch_size, gradient_checkpointing).

    sequences: sequences each process handles per iteration; the micro-batch must divide it so
    that batch_size x gradient accumulation keeps the tokens per iteration. trial(batch,
    checkpointing) runs one forward and backward and raises torch.OutOfMemoryError when it does
    not fit. Without checkpointing every divisor is tried, largest first; if not even one
    sequence fits, gradient checkpointing is the next step down.
    """
    for use_checkpointing in ([True] if checkpointing else [False, True]):
        for batch in divisors_descending(sequences):
            try:
                trial(batch, use_checkpointing)
            except torch.OutOfMemoryError as e:
                reason = (str(e).strip().splitlines() or ["out of memory"])[0][:120]
                log(f"batch_size {batch}{' (checkpointed)' if use_checkpointing else ''} does not fit: {reason}")
                continue
            return batch, use_checkpointing
    raise UserError("not even one sequence fits in memory with gradient checkpointing; lower block_size, "
                    "use a smaller model, or free the GPU from other programs")


def estimate_trial(estimate, free, headroom=0.8):
    """A trial that only consults the estimate (no CUDA OOM to catch on CPU/MPS): fits when the
    need stays under headroom x free memory (free None, memory unknown: everything fits)."""
    def trial(batch, checkpointing):
        need = needed_bytes(estimate, batch, checkpointing)
        if free is not None and need > headroom * free:
            raise torch.OutOfMemoryError(f"estimated {need / GB:.2f} GB of {free / GB:.2f} GB free")
    return trial


def cuda_trial(model, optimizer_bytes, seq_len, device, autocast, headroom=0.9):
    """A trial that really runs a forward and backward of random tokens on the GPU, with the
    AdamW states (made only at the first step) held as a reserved block, and a run that ends
    above headroom x the card's memory counted as not fitting (fragmentation, pinned batches)."""
    total = torch.cuda.get_device_properties(cuda_index(device)).total_memory

    def trial(batch, checkpointing):
        model.config.gradient_checkpointing = checkpointing
        torch.cuda.empty_cache()  # what a failed try left cached must not count against this one
        torch.cuda.reset_peak_memory_stats(device)
        try:
            reserve = torch.empty(optimizer_bytes, dtype=torch.uint8, device=device)
            x = torch.randint(model.config.vocab_size, (batch, seq_len), device=device)
            with autocast:
                _, loss = model(x, x)
            loss.backward()
            torch.cuda.synchronize(device)
            del reserve, x, loss
            peak = torch.cuda.max_memory_reserved(device)
            if peak > headroom * total:
                raise torch.OutOfMemoryError(f"peak {peak / GB:.2f} GB is over {headroom:.0%} of the card")
        finally:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()  # the next, smaller try starts from a clean allocator
    return trial


def auto_batch(model, seq_len, sequences, dtype, device, autocast, checkpointing, log=print):
    """batch_size='auto' for a model about to train: (batch_size, gradient_checkpointing).
    The random streams are left as they were (the trials' dropout must not shift a resume)."""
    n_params = sum(p.numel() for p in model.parameters())
    estimate = memory_estimate(model.config, n_params, seq_len, dtype)
    was_training = model.training
    model.train()
    devices = [cuda_index(device)] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        if device.startswith("cuda"):
            trial = cuda_trial(model, estimate["adamw"], seq_len, device, autocast)
        else:
            available = free_memory(device)
            trial = estimate_trial(estimate, available[0] if available else None)
        chosen = agree_across_processes(*find_batch_size(trial, sequences, checkpointing, log), sequences, device)
    model.config.gradient_checkpointing = chosen[1]
    model.train(was_training)
    return chosen


def agree_across_processes(batch, checkpointing, sequences, device):
    """Under torchrun every process must take the same micro-batch (DDP steps together): the
    smallest any of them found, a checkpointed one counting as smaller than any plain one."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return batch, checkpointing
    rank = torch.tensor([batch if checkpointing else sequences + batch], device=device)
    dist.all_reduce(rank, op=dist.ReduceOp.MIN)
    value = int(rank)
    return (value, True) if value <= sequences else (value - sequences, False)


def startup_memory_report(model, seq_len, batch_size, dtype, device):
    """The memory-estimate lines a CUDA run prints at start (see memory_report)."""
    estimate = memory_estimate(model.config, sum(p.numel() for p in model.parameters()), seq_len, dtype)
    free = free_memory(device)[0] + torch.cuda.memory_allocated(device)  # the weights, already there, are counted
    return memory_report(estimate, batch_size, model.config.gradient_checkpointing, free)

