"""
Fitting a GPU: its peak FLOP/s (for MFU), whether it really computes in bfloat16, how much
memory a run needs, and the largest micro-batch that fits.

Training (train_bio.py) and the benchmark (bench_bio.py) both take their figures from here,
so an MFU printed by either is measured against the same peak.
"""

import os
import re
import time
import warnings

import torch

import model_bio
from wigglegpt import oscillate_triton
from wigglegpt.common import UserError, cuda_index
from wigglegpt.distributed import print0

# ---------------------------------------------------------------------------------------
# peak FLOP/s: dense (no 2:4 sparsity) bf16/fp16 tensor-core rates, from NVIDIA's data sheets
# and architecture whitepapers. GeForce cards run fp16/bf16 with fp32 accumulation (what
# autocast training does) at half their fp16-accumulate rate; their figures below are the
# fp32-accumulate ones. Data-center cards run both at the same rate.

PEAK_FLOPS = [  # (device-name pattern, dense FLOP/s), first match wins: "3060 Ti" before "3060"
    # Turing / Volta
    (r"RTX 2080 Ti", 56.9e12),
    (r"\bT4\b", 65e12),
    (r"V100S", 130e12),  # PCIe, at higher clocks than the V100 PCIe
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
    (r"\bA100\b", 312e12),  # not the RTX A1000 (a small workstation card)
    (r"\bA10\b", 125e12),  # not the A10G: AWS's variant runs at other clocks
    (r"\bL4\b", 121e12),
    (r"L40S", 362e12),
    (r"H100.*PCIE", 756e12),
    (r"H100.*NVL", 835e12),
    (r"H100", 989e12),  # SXM (HBM3)
    (r"GH200", 989e12),  # the H100 SXM's die beside a Grace CPU
    (r"H200.*NVL", 835e12),  # PCIe, lower power: the H100 NVL's rate
    (r"H200", 989e12),  # SXM
    (r"\bB200\b", 2250e12),  # HGX/DGX B200 (not the GB200, which runs at other clocks)
]

# a mobile part shares the desktop name but runs at far lower clocks and power
_MOBILE = re.compile(r"LAPTOP|MOBILE|MAX-Q", re.I)
_SUFFIXES = re.compile(r"\s+(TI|SUPER|D)\b", re.I)  # e.g. the RTX 4090 D has fewer cores


def _look_up(table, name):
    """The value of the first (pattern, value) row of table whose pattern names the GPU called name,
    or None: a mobile part, or a suffix the pattern did not ask for ("RTX 4070" must not take a
    "RTX 4070 SUPER"), is another card, not a neighbour's figure."""
    if not name or _MOBILE.search(name):
        return None
    for pattern, value in table:
        match = re.search(pattern, name, re.I)
        if match is not None and not _SUFFIXES.match(name[match.end():]):
            return value
    return None


def peak_flops_for(name):
    """Dense bf16/fp16 tensor FLOP/s of the GPU called name, or None when not in the table."""
    return _look_up(PEAK_FLOPS, name)


# peak memory bandwidth by device-name pattern, bytes/s, from the vendors' data sheets; first
# match wins, and as in PEAK_FLOPS a name with a suffix the pattern lacks (Ti, SUPER, D)
# or a laptop part is unknown rather than a neighbour's figure
BANDWIDTH = [
    (r"(?<!G)H200", 4.8e12),  # SXM and NVL: the same 141 GB of HBM3e (not the GH200)
    (r"H100.*PCIE", 2.0e12),
    (r"H100.*NVL", 3.9e12),
    (r"H100", 3.35e12),  # SXM
    (r"\bA100\b.*SXM.*80GB", 2.039e12),
    (r"\bA100\b.*80GB", 1.935e12),  # PCIe
    (r"\bA100\b", 1.555e12),  # 40 GB
    (r"L40S", 864e9),
    (r"\bL4\b", 300e9),
    (r"\bA10\b", 600e9),
    (r"\bT4\b", 320e9),
    (r"V100S", 1134e9),
    (r"V100", 900e9),
    (r"RTX 3070", 448e9),
    (r"RTX 3090", 936e9),
    (r"RTX 4080", 716.8e9),
    (r"RTX 4090", 1008e9),
    (r"RTX 5060 Ti", 448e9),
    (r"RTX 5090", 1792e9),
]


def bandwidth_for(name):
    """Peak memory bandwidth in bytes/s of the GPU called name, or None when not in BANDWIDTH."""
    return _look_up(BANDWIDTH, name)


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
# memory: an estimate, for the start-up report and for batch_size='auto' off CUDA

GB = 2**30


def memory_estimate(config, n_params, seq_len, dtype, cuda_context=0):
    """Bytes a training run needs: fixed parts (FIXED_PARTS) and per sequence of seq_len tokens.

    Fixed: fp32 weights, gradients and AdamW's two states; under bf16/fp16 autocast the 2-byte
    copy of every matmul weight, which autocast caches for the whole forward and backward; the
    loss's fp32 gradient of the output layer (vocab_size x n_embd) and its smallest chunk of
    logits (below); and cuda_context, what the caller measured on the device beyond PyTorch's
    allocator (memory_outside_allocator; 0 off CUDA).

    Activations follow the tensors autograd saves for backward, measured on this model: per
    block and token, 7 fp32 values of n_embd (residual stream, norm inputs) plus 14 values in
    the compute dtype (q, k, v, attention output, MLP hidden ...); with gradient checkpointing
    only each block's fp32 input stays, and one block is rebuilt at a time in backward.

    The loss (model_bio.LinearCrossEntropy) never holds the full B x T x vocab logits: per
    token it keeps the gradient of the final hidden state (n_embd values in the compute dtype
    plus an fp32 copy), and it works through chunks of max(256, B*T*n_embd / vocab_size)
    positions, each chunk's logits costing 12 bytes per vocabulary entry (fp32 logits, their
    softmax/gradient, a cast): 12 bytes per token and n_embd on top of 256 positions' worth.
    Allocator slack comes on top.
    """
    act = 4 if dtype == "float32" else 2
    C, T, L, V = config.n_embd, seq_len, config.n_layer, config.vocab_size
    per_block = T * C * (7 * 4 + 14 * act)
    outside = T * C * 7 * 4 + T * C * (act + 4) + T * C * 12  # embeddings/final norm, dL/dx, logits chunk
    return {
        "weights": 4 * n_params,  # fp32 master weights (autocast computes in the low dtype)
        "gradients": 4 * n_params,
        "adamw": 8 * n_params,  # exp_avg and exp_avg_sq
        "autocast_weights": 0 if dtype == "float32" else 2 * n_params,
        "lm_head_gradient": V * C * 4,  # summed over the chunks in fp32
        "logits_chunk": 256 * V * 12,  # the smallest chunk; larger batches' share is per sequence
        "cuda_context": cuda_context,
        "per_sequence": L * per_block + outside,
        "per_sequence_checkpointed": L * T * C * 4 + per_block + outside,
    }


# the estimate's parts that do not grow with the batch, as memory_report names them
FIXED_PARTS = [("weights", "weights"), ("gradients", "gradients"), ("adamw", "AdamW"),
               ("autocast_weights", "autocast weight copies"), ("lm_head_gradient", "lm_head gradient"),
               ("logits_chunk", "logits chunk"), ("cuda_context", "CUDA context and other programs")]


def fixed_bytes(estimate):
    return sum(estimate[key] for key, _ in FIXED_PARTS)


def needed_bytes(estimate, batch_size, checkpointing):
    per = estimate["per_sequence_checkpointed" if checkpointing else "per_sequence"]
    return fixed_bytes(estimate) + batch_size * per


def memory_outside_allocator(device):
    """Bytes the CUDA device has in use beyond this process's PyTorch allocator: the CUDA
    context (about 0.3-0.6 GB, more once kernels are loaded) and any other program on the card."""
    free, total = torch.cuda.mem_get_info(cuda_index(device))
    return total - free - torch.cuda.memory_reserved(device)


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


def memory_report(estimate, batch_size, checkpointing, free, of="free"):
    """Lines that set the estimate against free, the bytes the run may use (of: what they are),
    with advice when it will not fit. Fixed parts that are 0 (fp32 has no autocast copies) are left out."""
    gb = lambda n: f"{n / GB:.2f} GB"  # noqa: E731
    total = needed_bytes(estimate, batch_size, checkpointing)
    fixed = ", ".join(f"{name} {gb(estimate[key])}" for key, name in FIXED_PARTS if estimate[key])
    lines = [f"memory estimate: {fixed}; activations {gb(estimate['per_sequence'])} per sequence "
             f"({gb(estimate['per_sequence_checkpointed'])} with gradient checkpointing) x batch_size {batch_size}"
             f"{' (checkpointed)' if checkpointing else ''}: about {gb(total)}"
             + (f" of {gb(free)} {of}" if free is not None else "")]
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


# a failed allocation that is not raised as torch.OutOfMemoryError: cuBLAS/cuDNN failing to make
# a handle or workspace, or a raw CUDA "out of memory" (newer torch raises AcceleratorError)
_ALLOCATION_FAILURES = ("out of memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed")
_DEVICE_ERRORS = (RuntimeError,) + ((torch.AcceleratorError,) if hasattr(torch, "AcceleratorError") else ())


def is_out_of_memory(error):
    """True when error says the device ran out of memory, in any of the ways CUDA libraries say it."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, _DEVICE_ERRORS) and any(m in str(error).lower() for m in _ALLOCATION_FAILURES)


def fits(trial, batch, checkpointing, log, what="batch_size"):
    """Runs trial(batch, checkpointing): False, logged, when it ran out of memory; any other error propagates."""
    try:
        trial(batch, checkpointing)
    except Exception as e:  # an allocation failure need not be an OutOfMemoryError
        if not is_out_of_memory(e):
            raise
        reason = (str(e).strip().splitlines() or ["out of memory"])[0][:120]
        log(f"{what} {batch}{' (checkpointed)' if checkpointing else ''} does not fit: {reason}")
        return False
    return True


def find_batch_size(trial, sequences, checkpointing=False, log=print, warm_up=False):
    """The largest micro-batch that fits, as (batch_size, gradient_checkpointing).

    sequences: sequences each process handles per iteration; the micro-batch must divide it so
    that batch_size x gradient accumulation keeps the tokens per iteration. trial(batch,
    checkpointing) runs one forward and backward and raises torch.OutOfMemoryError (or another
    allocation failure, see is_out_of_memory) when it does not fit. Without checkpointing every
    divisor is tried, largest first; if not even one sequence fits, gradient checkpointing is
    the next step down.

    warm_up: first run one sequence, so that what a first step makes once and keeps (cuBLAS
    handles, attention workspaces, the allocator's first blocks) exists before the largest batch
    is measured; otherwise that batch is measured without them and a real step can run out.
    Whether the warm-up fits changes nothing: the search runs as it would have.
    """
    if warm_up:
        fits(trial, 1, checkpointing, log, what="warm-up: batch_size")
    for use_checkpointing in ([True] if checkpointing else [False, True]):
        for batch in divisors_descending(sequences):
            if fits(trial, batch, use_checkpointing, log):
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
    above headroom x the memory this run may use counted as not fitting (fragmentation, pinned
    batches). That memory is what is free on the card now plus what this process already holds:
    another program on the card (a desktop, a second run) counts against it."""
    free, _ = torch.cuda.mem_get_info(cuda_index(device))
    available_to_run = free + torch.cuda.memory_reserved(device)

    def trial(batch, checkpointing):
        model.config.gradient_checkpointing = checkpointing
        torch.cuda.empty_cache()  # what a failed try left cached must not count against this one
        torch.cuda.reset_peak_memory_stats(device)
        try:
            reserve = torch.empty(optimizer_bytes, dtype=torch.uint8, device=device)
            x = torch.randint(model.config.vocab_size, (batch, seq_len), device=device)
            with autocast:
                _, loss = model(x, x, return_logits=False)  # as training: the chunked loss
            loss.backward()
            torch.cuda.synchronize(device)  # waits for the GPU: the peak is only known once it is done
            del reserve, x, loss
            peak = torch.cuda.max_memory_reserved(device)
            if peak > headroom * available_to_run:
                raise torch.OutOfMemoryError(f"peak {peak / GB:.2f} GB is over {headroom:.0%} of the "
                                             f"{available_to_run / GB:.2f} GB free to this run")
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
        found = find_batch_size(trial, sequences, checkpointing, log, warm_up=device.startswith("cuda"))
        chosen = agree_across_processes(*found, sequences, device)
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
    """The memory-estimate lines a CUDA run prints at start (see memory_report): the estimate,
    with what the device holds outside PyTorch's allocator, against the card's whole memory."""
    n_params = sum(p.numel() for p in model.parameters())
    estimate = memory_estimate(model.config, n_params, seq_len, dtype, memory_outside_allocator(device))
    _, total = free_memory(device)
    return memory_report(estimate, batch_size, model.config.gradient_checkpointing, total, of="on the card")


# ---------------------------------------------------------------------------------------
# what runs fast here: torch.compile, the fused kernel, the batch that fits

def compile_choice(setting, device):
    """(compile?, note to print or ''): compile='auto' compiles on a CUDA GPU where Triton works
    (Inductor writes its GPU kernels in Triton) and runs eager elsewhere, saying why once."""
    on_cuda = device.startswith("cuda")
    if setting is False:
        return False, ""
    triton_ok, why = oscillate_triton.available("cuda") if on_cuda else (False, "")
    if setting is True:
        if on_cuda and not triton_ok:
            raise UserError(f"compile=True needs a working Triton on CUDA: {why}; use --compile=False "
                            "(Linux: pip install triton; Windows: pip install triton-windows)")
        return True, ""
    if on_cuda and triton_ok:
        return True, "compile='auto': compiling with torch.compile (the first iterations are slow)"
    if on_cuda:
        return False, (f"compile='auto': running eager, {why} (Linux: pip install triton; Windows: "
                       "pip install triton-windows; --compile=False silences this)")
    return False, (f"compile='auto': running eager on {device} (torch.compile pays off on CUDA GPUs; "
                   "--compile=True compiles here too)")


def activation_choice(config, device_type):
    """How the oscillating activation will run here, in words; activation_kernel='triton' where
    the kernel cannot run is a UserError."""
    if not config.use_bio_mlp:  # the event-layer gate needs it; the lightweight gate has no oscillator
        return "GELU (no oscillating activation)"
    try:
        kernel = model_bio.uses_kernel(config.activation_kernel, device_type)
    except ValueError as e:
        raise UserError(str(e)) from None
    if kernel:
        return f"fused Triton kernel ({oscillate_triton.available(device_type)[1]})"
    if config.activation_kernel == "torch":
        return "PyTorch ops (activation_kernel='torch')"
    if device_type != "cuda":
        return "PyTorch ops (activation_kernel='auto': the fused kernel is for CUDA GPUs)"
    return f"PyTorch ops (activation_kernel='auto'; {oscillate_triton.available(device_type)[1]})"


def check_token_budget(batch_size, gradient_accumulation_steps, tokens_per_iter, block_size, world):
    """batch_size='auto' needs tokens_per_iter in whole sequences per process; a fixed batch_size
    with a tokens_per_iter must add up to it (a config's budget is never changed by accident)."""
    if batch_size == "auto":
        if tokens_per_iter <= 0:
            raise UserError("batch_size='auto' needs the tokens per iteration to keep: set tokens_per_iter "
                            f"(e.g. --tokens_per_iter={32 * block_size} for 32 sequences of {block_size})")
        if tokens_per_iter % (block_size * world):
            raise UserError(f"tokens_per_iter={tokens_per_iter} is not a whole number of block_size {block_size} "
                            f"sequences for each of the {world} process(es); use a multiple of {block_size * world}")
        return
    product = batch_size * gradient_accumulation_steps * block_size
    if tokens_per_iter and tokens_per_iter != product:
        raise UserError(f"batch_size {batch_size} x gradient_accumulation_steps {gradient_accumulation_steps} x "
                        f"block_size {block_size} = {product:,} tokens, but tokens_per_iter={tokens_per_iter:,}; "
                        "change gradient_accumulation_steps to match, or use --batch_size=auto")


def plan_batch(model, batch_size, gradient_accumulation_steps, tokens_per_iter, block_size, checkpointing,
               dtype, device, autocast, dist, saved=None):
    """batch_size='auto': the micro-batch (see find_batch_size) and the accumulation that keep
    tokens_per_iter, as {batch_size, gradient_accumulation_steps, gradient_checkpointing} to keep
    beside the settings ({} for a fixed batch_size). A resumed run keeps what it chose (saved: its
    train_config and world size; the same micro-batches and dropout draws keep the resume exact).
    On CUDA, print the memory estimate."""
    derived = {}
    saved_cfg, saved_world = saved or ({}, None)
    if (batch_size == "auto" and isinstance(saved_cfg.get("batch_size"), int)
            and (saved_cfg.get("tokens_per_iter"), saved_cfg.get("block_size")) == (tokens_per_iter, block_size)
            and saved_world == dist.world):
        derived = {key: saved_cfg[key] for key in ("batch_size", "gradient_accumulation_steps", "gradient_checkpointing")}
        print0(dist, f"batch_size='auto': resuming with the run's batch_size {derived['batch_size']} x "
                     f"gradient_accumulation_steps {derived['gradient_accumulation_steps']}"
                     + (", with gradient checkpointing" if derived["gradient_checkpointing"] else ""))
    elif batch_size == "auto":
        sequences = tokens_per_iter // block_size // dist.world  # per process and iteration
        batch, checkpointing = auto_batch(model, block_size, sequences, dtype, device, autocast, checkpointing,
                                          log=lambda line: print0(dist, line))
        derived = dict(batch_size=batch, gradient_accumulation_steps=sequences // batch * dist.world,
                       gradient_checkpointing=checkpointing)
        print0(dist, f"batch_size='auto': batch_size {batch} x gradient_accumulation_steps "
                     f"{derived['gradient_accumulation_steps']} x block_size {block_size} = {tokens_per_iter:,} tokens "
                     "per iteration" + (", with gradient checkpointing" if checkpointing else ""))
    if "gradient_checkpointing" in derived:
        model.config.gradient_checkpointing = derived["gradient_checkpointing"]
    if device.startswith("cuda"):
        for line in startup_memory_report(model, block_size, derived.get("batch_size", batch_size), dtype, device):
            print0(dist, line)
    return derived


def start_memory_profile(enabled, dist, device):
    """profile_memory (the original's debugging switch): record CUDA allocations from here on,
    on rank 0. Returns whether recording started."""
    if not enabled:
        return False
    if not device.startswith("cuda"):
        print0(dist, f"note: profile_memory records CUDA allocations only; nothing to record on {device} "
                     "(the metrics' peak_mem_mb gives the peak memory)")
        return False
    if dist.master:
        torch.cuda.memory._record_memory_history(max_entries=100_000)
    return dist.master


def finish_memory_profile(out_dir, dist):
    """Write what start_memory_profile recorded to out_dir/memory_snapshot.pickle."""
    path = os.path.join(out_dir, "memory_snapshot.pickle")
    torch.cuda.memory._dump_snapshot(path)
    torch.cuda.memory._record_memory_history(enabled=None)
    print0(dist, f"memory snapshot: {path} (drag it onto https://pytorch.org/memory_viz)")


def counting_syncs(fn, counts, starts, cuda):
    """fn, wrapped to append the synchronizing CUDA calls torch's sync debug mode reports during
    each call to counts (and the call's start time to starts). Off CUDA nothing is counted."""
    def wrapper(*args, **kwargs):
        starts.append(time.perf_counter())
        if not cuda:
            return fn(*args, **kwargs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # every one, not once per place
            torch.cuda.set_sync_debug_mode("warn")
            try:
                return fn(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                counts.append(sum("synchroniz" in str(w.message) for w in caught))
    return wrapper
