"""
One benchmark report: every speed and memory goal of the project, measured side by side in
one run on this machine and printed as a table of ratios.

    python bench_bio.py                                    # full sizes
    python bench_bio.py --quick                            # small sizes, under 2 minutes on 2 CPU cores
    python bench_bio.py --quick --only=traffic,logits_memory,activation   # some sections
    python bench_bio.py --gpu                              # the one CUDA GPU check, 8 minutes at most

Each section is a function that returns rows (what, measured, goal, detail); main() runs the
ones asked for and prints the table. What --gpu measures and its goals: README.md, "Benchmarks".
"""

import contextlib
import dataclasses
import gc
import io
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import model_bio
from model_bio import GPT, GPTConfig, OscillateFunction, OscillatingActivation
from wigglegpt import common, dataprep, export, gpu, optim, oscillate_triton
from wigglegpt.checkpoint import checkpoint_dict, save_checkpoint
from wigglegpt.common import UserError, autocast_for, pick_dtype, run_main, write_error
from wigglegpt.engine import generate
from wigglegpt.loader import load_model_from
from wigglegpt.tokenizer import EOT, get_tokenizer
from wigglegpt.settings import load_settings

HERE = os.path.dirname(os.path.abspath(__file__))

SETTINGS = {
    "quick": (False, "small sizes so the whole report takes under 2 minutes on 2 CPU cores"),
    "only": ("", "comma-separated section names to run (default: all); with --gpu, names of its parts"),
    "seed": (1337, "random seed for the models and data the benchmarks make"),
    "gpu": (False, "run the one CUDA GPU check instead of the sections, 8 minutes at most (parts: environment, "
                   "numerics, training, activation, train_loop, batch_auto, fp16)"),
    "out": ("bench_gpu.jsonl", "--gpu: file that gets one JSON object per row, written as each is measured"),
}


def median_seconds(fn, repeats, warmup=1):
    """Median wall time of fn() over repeats, after warmup calls (first calls allocate)."""
    return median_seconds_side_by_side({"fn": fn}, repeats, warmup)["fn"]


def median_seconds_side_by_side(fns, repeats, warmup=1):
    """Median wall time of each of several functions, timed in turn within each round so
    that a busy or throttling machine slows them all alike and the ratios stay fair."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


# --- sections ------------------------------------------------------------------------

SECTIONS = {}  # name -> function(quick) returning rows (what, measured, goal, detail)

# (sections are added below, one function each, and listed in SECTIONS)


def bench_kv_cache(quick):
    """Greedy generation speed with the KV cache vs recomputing the whole context per token."""
    # The published 124M shape, the model users sample from. At batch 1 on a CPU a cached step
    # is bound by reading every weight from memory (~0.5 GB), which both loops pay; the full
    # loop also recomputes the whole context. Quick mode makes fewer tokens, not a smaller model.
    cfg = GPTConfig()
    prompt_len, new = 64, 128 if quick else 256
    model = GPT(cfg).eval()
    prompt = torch.randint(0, 50257, (prompt_len,)).tolist()
    outputs = {}

    def run(use_cache):
        outputs[use_cache] = list(generate(model, prompt, new, temperature=0, use_cache=use_cache))

    for use_cache in (True, False):  # warm-up on a short run: the full-recompute one is long
        list(generate(model, prompt, 2, temperature=0, use_cache=use_cache))
    times = median_seconds_side_by_side({"cache": lambda: run(True), "full": lambda: run(False)},
                                        repeats=1, warmup=0)  # 128-256 steps each: averaged enough
    speedup = times["full"] / times["cache"]
    same = "same tokens" if outputs[True] == outputs[False] else "TOKENS DIFFER"
    return [("generation with KV cache / full recompute", f"{speedup:.1f}x", ">= 5x",
             f"{new / times['cache']:.0f} vs {new / times['full']:.1f} tok/s, {new} tokens after {prompt_len}, "
             f"124M model, greedy, CPU fp32, {same}")]


SECTIONS["kv_cache"] = bench_kv_cache


# ops that move no tensor data: views, in-place changes of shape only, bare allocations
_NO_DATA_OPS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "squeeze_",
                "unsqueeze_", "transpose_", "t_", "as_strided_", "detach_", "resize_", "set_"}


class TrafficCounter(TorchDispatchMode):
    """Bytes the aten ops run while it is active read and write: every tensor argument is read
    once (an out= argument is written, not read), every output written once; views and bare
    allocations move nothing. Tensors of at most min_numel elements (0-dim scalars, and with
    min_numel = the row length the parameter vectors and their gradients) are left out, so the
    bytes per element of x do not depend on how many rows x has."""

    def __init__(self, min_numel):
        super().__init__()
        self.min_numel, self.bytes = min_numel, 0

    def _size(self, t):
        big = isinstance(t, torch.Tensor) and t.numel() > self.min_numel
        return t.numel() * t.element_size() if big else 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.is_view or func._schema.name.split("::")[-1] in _NO_DATA_OPS:
            return out
        for i, arg in enumerate(func._schema.arguments):
            if not arg.is_out:
                value = args[i] if i < len(args) else kwargs.get(arg.name)
                self.bytes += sum(self._size(t) for t in tree_leaves(value))
        self.bytes += sum(self._size(t) for t in tree_leaves(out))
        return out


def oscillating_activation(n_cols, kernel="torch"):
    """The model's oscillating activation for n_cols neurons, initialised as GPT.init_weights does."""
    act = OscillatingActivation(n_cols, kernel)
    with torch.no_grad():
        act.omega.normal_(1.0, 0.1), act.phi.normal_(0.0, 0.1), act.baseline.zero_()
    return act


def activation_traffic(activation, shape, dtype, device):
    """(forward, backward) bytes per element of x that activation moves in y = activation(x) and
    in the gradients of x and of its parameters from a grad_y, counted by TrafficCounter."""
    activation = activation.to(device)
    x = torch.randn(shape, dtype=dtype, device=device, requires_grad=True)
    grad_y = torch.randn(shape, dtype=dtype, device=device)
    with TrafficCounter(min_numel=shape[-1]) as counter:
        y = activation(x)
        forward = counter.bytes
        torch.autograd.grad(y, [x, *activation.parameters()], grad_y)  # not backward(): no copy into .grad
    return forward / x.numel(), (counter.bytes - forward) / x.numel()


def bench_traffic(quick):
    """Bytes the oscillating activation moves per hidden element, forward + backward, against
    GELU's. An elementwise pass on a GPU is bound by memory, so bytes are its time. The kernel's
    figure is its own count of loads and stores (oscillate_triton.traffic_bytes); the PyTorch
    path's is counted op by op while it runs, on the CPU (the ops it runs here) and on the meta
    device (no data, but the ops of its CUDA branch: torch.tanh, plain sums)."""
    rows, cols = 8192, 3072  # the 124M MLP's hidden layer at 8 x 1024 tokens
    counted = (64, cols)  # a real run, small: the bytes per element do not depend on the rows
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        gelu = sum(activation_traffic(nn.GELU(), counted, dtype, "cpu"))
        kernel = oscillate_triton.traffic_bytes(rows, cols, dtype)
        kernel = (kernel["forward"] + kernel["backward"]) / (rows * cols)
        out.append((f"activation traffic kernel/GELU, {name}", f"{kernel / gelu:.2f}x", "<= 1.3x",
                    f"{kernel:.1f} vs {gelu:.1f} B per element forward + backward; kernel: traffic_bytes at "
                    f"{rows:,} x {cols:,}, GELU counted as below"))
        for where, device in (("as on CUDA", "meta"), ("on the CPU", "cpu")):
            forward, backward = activation_traffic(oscillating_activation(cols), counted, dtype, device)
            how = ("the ops of its CUDA branch, traced on the meta device" if device == "meta"
                   else f"the CPU's ops (tanh as a sigmoid, sums as gemv), {counted[0]} x {cols:,} run")
            out.append((f"  PyTorch path/GELU, {name}, {where}", f"{(forward + backward) / gelu:.1f}x", "(reference)",
                        f"{forward:.0f} + {backward:.0f} B per element forward + backward: every aten op's "
                        f"tensors ({how}; 0-dim and parameter-sized ones left out)"))
    return out


SECTIONS["traffic"] = bench_traffic


LOGITS_MODEL = dict(n_layer=1, n_head=2, n_embd=64, vocab_size=50304)  # the output layer is all there is
LOGITS_BATCH, LOGITS_BLOCKS = 8, (32, 256)


def _logits_memory_child(block_size, return_logits, batch, model_config):
    """Run in a fresh process by bench_logits_memory: two AdamW training steps of the model
    (GPTConfig fields), then print this process's peak resident memory in KiB."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=block_size, **model_config))
    opt = optim.make_optimizer(model, "adamw", 0.1, 1e-4, (0.9, 0.95), "cpu")
    x, y = torch.randint(0, model_config["vocab_size"], (2, batch, block_size))
    for _ in range(2):
        _, loss = model(x, y, return_logits=return_logits)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    print(json.dumps({"peak_kib": _peak_rss_kib()}))


def _peak_rss_kib():
    """This process's peak resident memory in KiB. On Linux VmHWM, the high-water mark of this
    process's own memory: getrusage's ru_maxrss starts a child at its parent's peak (the kernel
    carries it across fork and exec), so a child of a large parent would report the parent's."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak  # macOS counts bytes


def bench_logits_memory(quick):
    """Peak memory of a training step that grows with the sequence, in fp32 copies of the full
    B x T x vocab logits, with the loss made from the full logits (model(x, y)) and chunk by chunk
    (model(x, y, return_logits=False), what train_bio runs). Each run is a fresh process that
    reports its own peak RSS (_peak_rss_kib); the figure is the growth from T=32 to T=256 over one
    logits copy, so what does not grow with T (torch, the weights, AdamW) cancels."""
    if sys.platform == "win32":
        return [("training peak memory in logits copies", "skipped", "-", "needs /proc or getrusage (Linux, macOS)")]
    # the four runs at once, the cores shared out: each peak is its own process's, so they do not mix
    threads = str(max(1, (os.cpu_count() or 1) // 4))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    code = "import bench_bio; bench_bio._logits_memory_child({}, {}, {}, {})"
    runs = {(rl, T): subprocess.Popen([sys.executable, "-c", code.format(T, rl, LOGITS_BATCH, repr(LOGITS_MODEL))],
                                      cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for rl in (True, False) for T in LOGITS_BLOCKS}
    peaks = {}
    try:
        for (rl, T), child in runs.items():
            stdout, stderr = child.communicate(timeout=300)
            if child.returncode:
                raise RuntimeError(f"the T={T} run failed: {(stderr.strip().splitlines() or ['?'])[-1]}")
            peaks[rl, T] = json.loads(stdout.strip().splitlines()[-1])["peak_kib"] * 1024
    finally:
        for child in runs.values():  # none left running after a failure
            if child.poll() is None:
                child.kill()
    short, long = LOGITS_BLOCKS
    copy = LOGITS_BATCH * (long - short) * LOGITS_MODEL["vocab_size"] * 4  # fp32 logits of the added positions
    copies = {rl: (peaks[rl, long] - peaks[rl, short]) / copy for rl in (True, False)}
    mb = lambda n: f"{n / 2**20:,.0f} MB"  # noqa: E731
    detail = lambda rl: (f"peak RSS {mb(peaks[rl, long])} at T={long} vs {mb(peaks[rl, short])} "  # noqa: E731
                         f"at T={short}; "
                         f"one copy = {mb(copy)} (B={LOGITS_BATCH} x {long - short} positions x "
                         f"V={LOGITS_MODEL['vocab_size']:,} x 4 B); {LOGITS_MODEL['n_layer']} layer(s) of "
                         f"{LOGITS_MODEL['n_embd']}, 2 AdamW steps, CPU fp32")
    return [("training peak memory in logits copies, chunked loss", f"{copies[False]:.2f}", "<= 1.5", detail(False)),
            ("  plain loss (full logits)", f"{copies[True]:.2f}", "(reference)", detail(True))]


SECTIONS["logits_memory"] = bench_logits_memory


def _bench_model(use_bio_mlp, quick, plain_autograd=False):
    """A small model (4 layers, 256 dim, B=8, T=256) for the Wiggle-vs-GELU figures. The
    vocabulary is kept small so the blocks, not the output layer, dominate what is measured."""
    cfg = GPTConfig(block_size=256, vocab_size=2048, n_layer=4, n_head=4, n_embd=256, use_bio_mlp=use_bio_mlp)
    model = GPT(cfg)
    if plain_autograd:  # the original formulation: autograd keeps sin, cos, tanh for backward
        for block in model.transformer.h:
            act = block.mlp.activation
            act.forward = lambda x, a=act: torch.sin(a.omega * x + a.phi) * torch.tanh(x) + a.baseline
            assert isinstance(act, OscillatingActivation)
    B, T = (4, 128) if quick else (8, 256)
    idx = torch.randint(0, cfg.vocab_size, (B, T))
    return model, idx


def _saved_bytes(model, idx):
    """Bytes autograd keeps for backward in one training forward (unique storages)."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(idx, idx, return_logits=False)
    loss.backward()
    params = {(p.untyped_storage().data_ptr(), p.dtype) for p in model.parameters()}
    return sum(n for key, n in seen.items() if key not in params)  # activations only


def bench_activation(quick):
    """Oscillating neuron vs GELU: activation memory saved for backward, and train step time."""
    models = {name: _bench_model(bio, quick, plain) for name, bio, plain in
              [("wiggle", True, False), ("gelu", False, False), ("plain_autograd", True, True)]}
    memory = {name: _saved_bytes(m, idx) for name, (m, idx) in models.items()}

    def step(model, idx, opt):
        _, loss = model(idx, idx, return_logits=False)  # as train_bio trains: the loss a chunk at a time
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    steps = {}
    for name, (model, idx) in models.items():
        opt = optim.make_optimizer(model, "adamw", 0.1, 1e-4, (0.9, 0.95), "cpu")
        steps[name] = lambda model=model, idx=idx, opt=opt: step(model, idx, opt)
    times = median_seconds_side_by_side(steps, repeats=3 if quick else 7)
    mb = lambda n: f"{n / 2**20:.0f} MB"
    ms = lambda s: f"{s * 1000:.0f} ms"
    return [
        ("activation memory Wiggle/GELU", f"{memory['wiggle'] / memory['gelu']:.2f}x", "<= 1.05x",
         f"{mb(memory['wiggle'])} vs {mb(memory['gelu'])} saved for backward"),
        ("  plain-autograd Wiggle/GELU", f"{memory['plain_autograd'] / memory['gelu']:.2f}x", "(reference)",
         f"{mb(memory['plain_autograd'])}: the original formulation"),
        ("train step time Wiggle/GELU", f"{times['wiggle'] / times['gelu']:.2f}x", "<= 1.10x",
         f"{ms(times['wiggle'])} vs {ms(times['gelu'])} per step, CPU fp32"),
        ("  plain-autograd Wiggle/GELU", f"{times['plain_autograd'] / times['gelu']:.2f}x", "(reference)",
         f"{ms(times['plain_autograd'])} per step"),
    ]


SECTIONS["activation"] = bench_activation


def bench_compiled(quick):
    """The Wiggle/GELU train step ratio again, both models under torch.compile (Inductor; on a
    CPU it writes C++ kernels, so the first steps take a minute or two)."""
    steps, compile_s = {}, {}
    for name, bio in (("wiggle", True), ("gelu", False)):
        model, idx = _bench_model(bio, quick)
        opt = optim.make_optimizer(model, "adamw", 0.1, 1e-4, (0.9, 0.95), "cpu")
        compiled = torch.compile(model)

        def step(compiled=compiled, idx=idx, opt=opt):
            _, loss = compiled(idx, idx, return_logits=False)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        t0 = time.perf_counter()
        step()  # compiles forward and backward
        compile_s[name] = time.perf_counter() - t0
        steps[name] = step
    times = median_seconds_side_by_side(steps, repeats=3 if quick else 7)
    ms = lambda s: f"{s * 1000:.0f} ms"
    return [("compiled train step Wiggle/GELU", f"{times['wiggle'] / times['gelu']:.2f}x", "<= 1.05x",
             f"{ms(times['wiggle'])} vs {ms(times['gelu'])} per step, CPU fp32, Inductor "
             f"(first step {compile_s['wiggle']:.0f} s vs {compile_s['gelu']:.0f} s)")]


SECTIONS["compiled"] = bench_compiled


def bench_gpu_124m(quick):
    """The published 124M config in mixed precision on a CUDA GPU (skipped without one): tokens/s,
    MFU and peak memory of Wiggle and GELU, eager and compiled, and the Wiggle/GELU ratios."""
    if not torch.cuda.is_available():
        return [("124M training on GPU", "skipped", "-", "no CUDA GPU on this machine")]
    return training_figures("cuda", GPTConfig(), 4 if quick else 16, 3 if quick else 10)


TRAINING_MODES = {  # name -> (torch.compile?, activation_kernel)
    "eager": (False, "torch"),  # the PyTorch autograd.Function, op by op
    "eager kernel": (False, "triton"),  # the fused Triton kernel in an eager model
    "compiled": (True, "auto"),  # what train_bio runs on a CUDA GPU: the kernel inside the compiled graph
}


def training_figures(device, config, max_batch, repeats, compiled=(False, True)):
    """Train-step rows of one shape with the oscillating MLP and with GELU (see training_rows);
    compiled picks the modes: False the eager ones, True the compiled one."""
    return list(training_rows(device, config, max_batch, repeats, compiled))


def training_rows(device, config, max_batch, repeats, compiled=(False, True), figures=None, time_left=None):
    """Yields train-step rows as they are measured: tokens/s, MFU and peak memory of Wiggle in
    each of TRAINING_MODES whose compile flag is in compiled (the kernel mode only where the
    kernel runs) and of GELU (eager and compiled: it has no kernel to choose), then the
    Wiggle/GELU ratios. Steps train as train_bio does, the loss a chunk at a time.

    The micro-batch is the largest of max_batch, max_batch/2, ... that fits the card with the
    Wiggle model (wigglegpt.gpu's batch search), so an 8 GB card reports instead of failing; both MLPs
    then run that batch. The models are measured one after the other (two 124M models with AdamW
    states would not fit an 8 GB card together), each mode on its own fresh memory peak.
    figures, if given, receives B, checkpointing, dtype, T and (mlp, mode) -> (tokens/s, MFU or
    None, peak MB); time_left(), if given, is the seconds left, and a mode that would not fit in
    them (90 s to compile, 10 s eager) is skipped with a row saying so."""
    device_type = device.split(":")[0]
    dtype = pick_dtype("auto", device)
    autocast = autocast_for(device, dtype)
    cuda = device_type == "cuda"
    T = config.block_size
    peak, source = gpu.resolve_peak_flops(0, device)
    kernel_ok, kernel_why = oscillate_triton.available(device_type)
    modes = [mode for mode, (compile_it, _) in TRAINING_MODES.items() if compile_it in compiled]
    figures = {} if figures is None else figures
    figures.update(dtype=dtype, T=T)

    def shape():
        return f"{dtype}, B={figures['B']}, T={T}" + (", gradient checkpointing" if figures["checkpointing"] else "")

    def measure(bio, wanted):
        """Yields (mode, (tokens/s, MFU or None, peak MB), None if skipped, or the error it raised)
        for one MLP kind; its model is freed when the generator ends."""
        torch.manual_seed(0)
        model = GPT(dataclasses.replace(config, use_bio_mlp=bio)).to(device)
        if "B" not in figures:
            figures["B"], figures["checkpointing"] = gpu.auto_batch(
                model, T, max_batch, dtype, device, autocast, False,
                log=lambda line: print(f"  training_figures: {line}", flush=True))
        B = figures["B"]
        model.config.gradient_checkpointing = figures["checkpointing"]
        opt = optim.make_optimizer(model, "adamw", 0.1, 6e-4, (0.9, 0.95), device_type)
        idx = torch.randint(0, model.config.vocab_size, (B, T), device=device)
        scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))
        for mode in wanted:
            compile_it, kernel = TRAINING_MODES[mode]
            if time_left is not None and time_left() < (90 if compile_it else 10):
                yield mode, None
                continue
            for module in model.modules():  # the same weights, the activation run another way
                if isinstance(module, OscillatingActivation):
                    module.kernel = kernel
            model.config.activation_kernel = kernel
            model_bio.uses_kernel(kernel, device_type)  # decided before tracing, as train_bio does
            forward = torch.compile(model) if compile_it else model

            def step():
                with autocast:
                    _, loss = forward(idx, idx, return_logits=False)  # as train_bio: no full logits
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                if cuda:
                    torch.cuda.synchronize()  # time the GPU work, not the launch

            if cuda:
                torch.cuda.reset_peak_memory_stats()
            try:
                dt = median_seconds(step, repeats, warmup=2)  # compiling happens in the warm-up
            except Exception as e:  # noqa: BLE001 (a mode that fails, e.g. compiling, must not lose the others)
                opt.zero_grad(set_to_none=True)
                yield mode, e
                continue
            memory = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
            yield mode, (B * T / dt, model.estimate_mfu(B * T, dt, peak, T) if peak else None, memory)

    for mlp, bio in (("Wiggle", True), ("GELU", False)):
        wanted = [mode for mode in modes if bio or mode != "eager kernel"]
        if bio and "eager kernel" in wanted and not kernel_ok:
            wanted.remove("eager kernel")
            yield ("124M Wiggle eager kernel training tokens/s (GPU)", "unavailable", "-", kernel_why)
        for mode, values in measure(bio, wanted):
            what = f"124M {mlp} {mode} training tokens/s (GPU)"
            if values is None:
                yield (what, "skipped", "-", f"{time_left():.0f} s left of the check's time")
                continue
            if isinstance(values, Exception):
                yield failure_row(what, values)
                continue
            figures[mlp, mode] = values
            tokens, mfu, memory = values
            mfu_text = f"{mfu * 100:.1f}%" if mfu is not None else "unknown"
            yield (what, f"{tokens:,.0f}", ">= 45% MFU on H100/H200" if (mlp, mode) == ("Wiggle", "compiled") else "-",
                   f"{shape()}; MFU {mfu_text}; peak {memory:,.0f} MB")
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()  # the next model starts from an empty card
    if ("GELU", "eager") in figures:
        figures["GELU", "eager kernel"] = figures["GELU", "eager"]  # the same code: GELU has no kernel to choose
    for mode in modes:
        if ("Wiggle", mode) in figures and ("GELU", mode) in figures:
            ratio = figures["Wiggle", mode][0] / figures["GELU", mode][0]
            yield (f"124M tokens/s Wiggle / GELU, {mode} (GPU)", f"{ratio:.2f}x",
                   {"compiled": ">= 0.95x", "eager kernel": ">= 0.90x"}.get(mode, "-"),
                   shape() + ("; against GELU eager" if mode == "eager kernel" else ""))
    if peak is None:
        yield ("124M MFU (GPU)", "unknown", "-", gpu.unknown_peak_hint(device))
    else:
        yield ("124M MFU peak used", f"{peak / 1e12:.1f} TFLOP/s", "-", source)


SECTIONS["gpu_124m"] = bench_gpu_124m


def bench_data_prep(quick):
    """Data preparation: the engine's batched parallel encoding vs a one-thread per-document
    loop on the same jsonl (Shakespeare, written to a temp dir), and the peak memory of the real
    script with its worker processes, which must stay flat as the input grows 5x."""

    def write_corpus(path, megabytes):
        chunks = [row["text"] for row in dataprep.shakespeare_documents()]
        written, index = 0, 0
        with open(path, "w", encoding="utf-8") as f:
            while written < megabytes * 2**20:
                line = json.dumps({"text": f"{index}\n" + chunks[index % len(chunks)]}) + "\n"
                f.write(line)
                written, index = written + len(line), index + 1
        return path

    def batched(path, out_dir, tokens):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # no summaries
            meta = dataprep.prepare(
                dataprep.stream_rows(data_files=path), dataprep.TextEncoder("text"), out_dir,
                source=path, recipe={}, val_fraction=0.01, num_workers=os.cpu_count() or 1, overwrite=True)
        tokens["batched"] = meta["train_tokens"] + meta["val_tokens"]

    def loop(path, out_dir, tokens):
        enc, count = get_tokenizer(), 0
        with open(os.path.join(out_dir, "loop.bin"), "wb") as f:
            for row in dataprep.stream_rows(data_files=path):
                ids = np.array(enc.encode_ordinary(row["text"]) + [EOT], dtype=np.uint16)
                f.write(ids.tobytes())
                count += len(ids)
        tokens["loop"] = count

    def tree_rss_kb(pid):
        """Resident memory of a process and all its descendants (Linux /proc), in KiB. PSS, which
        splits shared pages between the processes sharing them: plain RSS would count the pages
        of a just-forked child twice."""
        total = 0
        with open(f"/proc/{pid}/smaps_rollup") as f:
            total += next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                total += sum(tree_rss_kb(int(child)) for child in f.read().split())
        return total

    def peak_rss_mb(path, out_dir):
        """Peak of the summed memory of the script and its workers, sampled every 20 ms."""
        command = [sys.executable, "prepare_openwebtext_streaming.py", f"--data_files={path}",
                   f"--out_dir={out_dir}", "--overwrite"]
        child = subprocess.Popen(command, cwd=os.path.dirname(os.path.abspath(__file__)),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stderr, peak = [], [0]
        reader = threading.Thread(target=lambda: stderr.append(child.stderr.read()))
        reader.start()
        while child.poll() is None:
            with contextlib.suppress(OSError, ValueError):  # processes come and go while we read
                peak[0] = max(peak[0], tree_rss_kb(child.pid))
            time.sleep(0.02)
        reader.join()
        if child.returncode != 0:
            raise RuntimeError(f"prepare_openwebtext_streaming.py failed: {stderr[0].decode()[-500:]}")
        return peak[0] / 1024

    # the speed input is 20 MB either way: on less, fixed costs (loading, worker start) blur the ratio
    speed_mb, (small_mb, big_mb), repeats = 20, ((4, 20) if quick else (20, 100)), (3 if quick else 5)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        print("  data_prep: writing the corpora", flush=True)
        paths = {mb: write_corpus(os.path.join(tmp, f"{mb}mb.jsonl"), mb) for mb in {speed_mb, small_mb, big_mb}}
        tokens, warm = {}, write_corpus(os.path.join(tmp, "warm.jsonl"), 0.1)
        batched(warm, tmp, tokens), loop(warm, tmp, tokens)  # imports and the tokenizer, once
        times = median_seconds_side_by_side({"batched": lambda: batched(paths[speed_mb], tmp, tokens),
                                             "loop": lambda: loop(paths[speed_mb], tmp, tokens)},
                                            repeats=repeats, warmup=0)
        rates = {name: tokens[name] / seconds for name, seconds in times.items()}
        print("  data_prep: peak memory of the script, small and big input", flush=True)
        rss = {mb: peak_rss_mb(paths[mb], os.path.join(tmp, f"out{mb}")) for mb in (small_mb, big_mb)}
    workers = os.cpu_count() or 1
    return [
        ("data prep: batched/loop tokens/s", f"{rates['batched'] / rates['loop']:.2f}x", ">= 1.6x",
         f"{rates['batched'] / 1e6:.2f}M vs {rates['loop'] / 1e6:.2f}M tok/s, {workers} worker processes, "
         f"{speed_mb} MB jsonl, load {load:.1f} at start"),
        ("data prep: peak memory (PSS)", f"{max(rss.values()):.0f} MB", "< 1024 MB",
         f"prepare_openwebtext_streaming.py + its {workers} workers, {big_mb} MB of jsonl"),
        (f"data prep: peak memory, {big_mb} MB / {small_mb} MB input", f"{rss[big_mb] / rss[small_mb]:.2f}x",
         "flat (<= 1.2x)", f"{rss[big_mb]:.0f} MB vs {rss[small_mb]:.0f} MB"),
    ]


SECTIONS["data_prep"] = bench_data_prep


LOAD_MODEL_FULL = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50304, block_size=1024)  # the published 124M
LOAD_MODEL_QUICK = dict(n_layer=2, n_head=4, n_embd=256, vocab_size=50304, block_size=256)


def _load_child(path):
    """Run in a fresh process by bench_load: load the model at path (a training checkpoint or an
    export folder) as every script does, print the seconds it took and the peak resident memory."""
    start = time.perf_counter()
    model, _, _ = load_model_from(path, device="cpu", dropout=0.0)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_kib": _peak_rss_kib(), "params": model.get_num_params()}))


def bench_load(quick):
    """Loading a model to sample from it: today's training checkpoint (.pt with the AdamW state,
    as train_bio writes it) against the export folder (safetensors, memory-mapped), each in a fresh
    process, the same weights. Peak memory is the growth over a process that only imports the loader."""
    shape = LOAD_MODEL_QUICK if quick else LOAD_MODEL_FULL
    torch.manual_seed(0)
    model = GPT(GPTConfig(**shape))
    opt = optim.make_optimizer(model, "adamw", 0.1, 1e-4, (0.9, 0.95), "cpu")
    x = torch.randint(0, shape["vocab_size"], (1, 8))
    model(x, x)[1].backward()
    opt.step()  # the optimizer state a training checkpoint carries
    with tempfile.TemporaryDirectory() as tmp:
        pt, folder = os.path.join(tmp, "ckpt.pt"), os.path.join(tmp, "export")
        save_checkpoint(checkpoint_dict(model, optimizer=opt.state_dict(), iter_num=1), pt)
        export.export(model.eval(), folder)
        del model, opt
        code = "import bench_bio; bench_bio._load_child({!r})"
        base = subprocess.run([sys.executable, "-c", "import bench_bio, json, wigglegpt.loader; "
                               "print(json.dumps({'peak_kib': bench_bio._peak_rss_kib()}))"],
                              cwd=HERE, capture_output=True, text=True, check=True)
        base_kib = json.loads(base.stdout.strip().splitlines()[-1])["peak_kib"]
        runs = {}
        for name, path in (("pt", pt), ("export", folder)):
            child = subprocess.run([sys.executable, "-c", code.format(path)], cwd=HERE, capture_output=True, text=True)
            if child.returncode:
                raise RuntimeError(f"loading the {name} failed: {(child.stderr.strip().splitlines() or ['?'])[-1]}")
            runs[name] = json.loads(child.stdout.strip().splitlines()[-1])
        sizes = {"pt": os.path.getsize(pt), "export": os.path.getsize(os.path.join(folder, export.WEIGHTS))}
    mb = lambda n: f"{n / 2**20:,.0f} MB"  # noqa: E731
    grown = {name: max(0, r["peak_kib"] - base_kib) * 1024 for name, r in runs.items()}
    what = f"{runs['pt']['params']:,} parameters, fp32, CPU"
    return [("load for sampling: export / .pt time", f"{runs['export']['seconds'] / runs['pt']['seconds']:.2f}x", "<= 0.5x",
             f"{runs['export']['seconds']:.2f} s vs {runs['pt']['seconds']:.2f} s; {what}"),
            ("  peak memory grown while loading, export / .pt", f"{grown['export'] / max(grown['pt'], 1):.2f}x", "-",
             f"{mb(grown['export'])} vs {mb(grown['pt'])}; files {mb(sizes['export'])} (safetensors) vs "
             f"{mb(sizes['pt'])} (.pt with AdamW)")]


SECTIONS["load"] = bench_load


# --- the GPU check (--gpu) -----------------------------------------------------------------
# One run on one CUDA GPU, ready for whoever has one: run_gpu_check calls the parts in
# GPU_PARTS in turn, each a generator of rows taking a GpuCheck (device, model config, sizes,
# the time left). The parts take any device, so the tests run them on the CPU with tiny sizes.

GPU_BUDGET_S = 440  # the parts' time; with start-up and the table the check ends within 8 minutes

GPU_SIZES = dict(  # for the 124M model on one GPU
    max_batch=16,  # micro-batch of the training figures (or the largest below it that fits)
    repeats=10,  # timed training steps per mode
    compiled=(False, True),  # training modes: the eager ones and the compiled one
    numerics_rows=4096,  # rows of x for the numerics (the columns are the MLP's hidden size)
    compile_numerics=True,  # also torch.compile the PyTorch path for the numerics
    explain_tokens=128,  # sequence length of the graph-break check
    act_repeats=20,  # timed forward + backward passes of the activation alone
    loop_iters=15, loop_warm=5,  # train_bio iterations, and how many of them warm up (compile) unmeasured
    auto_sequences=32,  # sequences per iteration that batch_size='auto' divides (config/gpt2_bio_3070.py)
    budgets_gb=(8, 16),  # card sizes batch_size='auto' is tried under
    fp16_steps=10, fp16_batch=8,
)

@dataclasses.dataclass
class GpuCheck:
    device: str
    config: object  # the GPTConfig measured
    sizes: dict  # GPU_SIZES, or smaller
    deadline: float  # time.monotonic() by which every part must have ended
    figures: dict = dataclasses.field(default_factory=dict)  # what one part measured for a later one

    def time_left(self):
        return self.deadline - time.monotonic()


def _device_type(device):
    return device.split(":")[0]


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)  # waits for the GPU: timings cover its work


def part_environment(check):
    """Versions, the GPU, and the peak FLOP/s and bandwidth the other parts measure against."""
    device = check.device
    try:
        import triton
        triton_version = triton.__version__
    except Exception as e:  # noqa: BLE001 (a broken install is reported, not fatal)
        triton_version = f"not importable ({type(e).__name__})"
    yield ("versions", f"torch {torch.__version__}", "-",
           f"CUDA {torch.version.cuda or 'none'}, Triton {triton_version}, python {platform.python_version()}")
    name = gpu.device_name(device)
    if name:
        props = torch.cuda.get_device_properties(common.cuda_index(device))
        yield ("GPU", name, "-", f"compute capability {props.major}.{props.minor}, "
                                 f"{props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs")
    else:
        yield ("GPU", "none", "-", f"running on {device}: {platform.processor() or platform.machine()}")
    peak, source = gpu.resolve_peak_flops(0, device)
    yield ("peak FLOP/s for MFU", f"{peak / 1e12:.1f} TFLOP/s" if peak else "unknown", "-",
           source or gpu.unknown_peak_hint(device))
    bandwidth = gpu.bandwidth_for(name)
    yield ("memory bandwidth", f"{bandwidth / 1e9:,.0f} GB/s" if bandwidth else "unknown", "-",
           "vendor data sheet (gpu.BANDWIDTH)" if bandwidth
           else f"{name or device} is not in gpu.BANDWIDTH")
    ok, why = oscillate_triton.available(_device_type(device))
    yield ("activation kernel", "available" if ok else "unavailable", "-", why)


def activation_inputs(rows, cols, dtype, device, seed=0):
    """x (rows, cols) in dtype, fp32 omega/phi/baseline as a trained model's, and a grad_y."""
    g = torch.Generator().manual_seed(seed)
    x = (2.0 * torch.randn(rows, cols, generator=g)).to(device, dtype)  # pre-activations spread over a few units
    params = [(mean + std * torch.randn(cols, generator=g)).to(device)  # omega, phi, baseline
              for mean, std in ((1.0, 0.1), (0.0, 0.1), (0.0, 0.01))]
    grad_y = torch.randn(rows, cols, generator=g).to(device, dtype)
    return x, params, grad_y


def _outputs_and_grads(fn, x, params, grad_y):
    """[y, grad x, grad omega, grad phi, grad baseline] of fn(x, omega, phi, baseline)."""
    inputs = [t.detach().requires_grad_() for t in (x, *params)]
    y = fn(*inputs)
    return [y.detach(), *torch.autograd.grad(y, inputs, grad_y)]


def _formula(x, omega, phi, baseline):
    return torch.sin(omega * x + phi) * torch.tanh(x) + baseline


def part_numerics(check):
    """The activation's output and all four gradients by the kernel, the PyTorch path and the
    compiled PyTorch path, in bf16 and fp32, against plain autograd of the formula in fp64;
    then the graph breaks of the compiled model."""
    device, s = check.device, check.sizes
    rows, cols = s["numerics_rows"], 4 * check.config.n_embd
    ok, why = oscillate_triton.available(_device_type(device))
    paths = {"PyTorch path": OscillateFunction.apply}
    if ok:
        paths["kernel"] = oscillate_triton.oscillate
    else:
        yield ("numerics kernel", "unavailable", "-", why)
    if s["compile_numerics"]:
        paths["compiled PyTorch path"] = torch.compile(
            lambda x, omega, phi, baseline: OscillateFunction.apply(x, omega, phi, baseline), dynamic=False)
    names = ("y", "grad x", "grad omega", "grad phi", "grad baseline")
    for dtype, tolerance in ((torch.bfloat16, 1e-2), (torch.float32, 1e-4)):
        x, params, grad_y = activation_inputs(rows, cols, dtype, device)
        reference = _outputs_and_grads(_formula, x.double(), [p.double() for p in params], grad_y.double())
        for path, fn in paths.items():
            got = _outputs_and_grads(fn, x, params, grad_y)
            errors = [((a.double() - r).abs().max() / r.abs().max()).item() for a, r in zip(got, reference)]
            yield (f"numerics {path}, {str(dtype).removeprefix('torch.')}", f"{max(errors):.1e}", f"<= {tolerance:.0e}",
                   ", ".join(f"{n} {e:.1e}" for n, e in zip(names, errors))
                   + f": max |error| / max |fp64 value|, {rows:,} x {cols:,}")
    # graph breaks: dynamo's trace of one training forward, as torch.compile would split it
    dtype = pick_dtype("auto", device)
    model = GPT(check.config).to(device).train()
    T = min(s["explain_tokens"], check.config.block_size)
    idx = torch.randint(0, check.config.vocab_size, (1, T), device=device)
    torch._dynamo.reset()
    with autocast_for(device, dtype):
        explanation = torch._dynamo.explain(model)(idx, idx, return_logits=False)
    torch._dynamo.reset()
    reasons = [getattr(r, "reason", str(r)) for r in explanation.break_reasons]
    yield ("compiled model graph breaks", str(explanation.graph_break_count), "0",
           f"{explanation.graph_count} graph(s), {explanation.op_count} ops, {dtype}, T={T}"
           + (f"; first break: {str(reasons[0]).splitlines()[0][:120]}" if reasons else ""))


def part_training(check):
    """Training tokens/s, MFU and peak memory: GELU and Wiggle, eager, eager kernel, compiled."""
    s = check.sizes
    yield from training_rows(check.device, check.config, s["max_batch"], s["repeats"], s["compiled"],
                             figures=check.figures.setdefault("training", {}), time_left=check.time_left)


def part_activation_speed(check):
    """The activation alone at the training shape, forward + backward: the kernel in GB/s (its
    bytes from traffic_bytes) against the card's bandwidth, and the PyTorch path's and GELU's
    times for the same x; and the PyTorch path's bytes counted op by op on this device."""
    device, s = check.device, check.sizes
    rows, cols = s["max_batch"] * check.config.block_size, 4 * check.config.n_embd
    ok, why = oscillate_triton.available(_device_type(device))
    bandwidth = gpu.bandwidth_for(gpu.device_name(device))
    if not ok:
        yield ("activation kernel forward+backward", "unavailable", "-", why)
    ms = lambda t: f"{t * 1000:.2f} ms"  # noqa: E731
    for dtype in (torch.bfloat16, torch.float32):
        name = str(dtype).removeprefix("torch.")
        x, params, grad_y = activation_inputs(rows, cols, dtype, device)
        inputs = [x.requires_grad_(), *(p.requires_grad_() for p in params)]

        def forward_backward(fn, inputs):
            def run():
                torch.autograd.grad(fn(*inputs), inputs, grad_y)
                _sync(device)
            return run

        fns = {"torch": forward_backward(OscillateFunction.apply, inputs), "gelu": forward_backward(F.gelu, inputs[:1])}
        if ok:
            fns["kernel"] = forward_backward(oscillate_triton.oscillate, inputs)
        times = median_seconds_side_by_side(fns, repeats=s["act_repeats"], warmup=2)
        shape = f"{rows:,} x {cols:,} {name}"
        if ok:
            traffic = oscillate_triton.traffic_bytes(rows, cols, dtype)
            rate = (traffic["forward"] + traffic["backward"]) / times["kernel"]
            share = (f"{rate / bandwidth:.0%} of the card's {bandwidth / 1e9:,.0f} GB/s" if bandwidth
                     else "bandwidth unknown")
            yield (f"activation kernel forward+backward, {name}", f"{rate / 1e9:,.0f} GB/s", "-",
                   f"{share}; {ms(times['kernel'])} for {shape}, bytes from traffic_bytes")
            yield (f"  kernel / GELU time, {name}", f"{times['kernel'] / times['gelu']:.2f}x", "<= 1.3x",
                   f"{ms(times['kernel'])} vs {ms(times['gelu'])} (GELU's eager forward + backward)")
            yield (f"  PyTorch path / kernel time, {name}", f"{times['torch'] / times['kernel']:.1f}x", "(reference)",
                   f"{ms(times['torch'])} vs {ms(times['kernel'])}")
        else:
            yield (f"  PyTorch path / GELU time, {name}", f"{times['torch'] / times['gelu']:.1f}x", "(reference)",
                   f"{ms(times['torch'])} vs {ms(times['gelu'])} for {shape}")
        forward, backward = activation_traffic(oscillating_activation(cols), (64, cols), dtype, device)
        yield (f"  PyTorch path traffic on {_device_type(device)}, {name}", f"{forward + backward:.0f} B/element", "-",
               f"forward {forward:.0f} + backward {backward:.0f}, every aten op's tensors counted (TorchDispatchMode)")


# The real loop runs in a process of its own (python train_bio.py would, too): this driver wraps
# train_bio's train_step and log_iteration to count the GPU syncs torch's sync debug mode reports
# in each call and to time the starts, then writes them beside the run's metrics.jsonl.
TRAIN_LOOP_DRIVER = """
import json, sys
sys.path.insert(0, sys.argv[1])
import train_bio
from wigglegpt.gpu import counting_syncs
settings, out_path = json.loads(sys.argv[2]), sys.argv[3]
cuda = settings["device"].startswith("cuda")
counts = {"step": [], "log": [], "starts": []}
train_bio.train_step = counting_syncs(train_bio.train_step, counts["step"], counts["starts"], cuda)
train_bio.log_iteration = counting_syncs(train_bio.log_iteration, counts["log"], [], cuda)
train_bio.train(settings)
with open(out_path, "w") as f:
    json.dump(counts, f)
"""


def part_train_loop(check):
    """The real loop: train_bio.py's train for a few iterations on random tokens in a temp folder
    (in a process of its own), the model and batch of the training part, against the bare step
    measured there; and the GPU syncs per iteration in train_step and log_iteration."""
    device, cfg, s = check.device, check.config, check.sizes
    cuda = device.startswith("cuda")
    measured = check.figures.get("training", {})
    T, iters, warm = cfg.block_size, s["loop_iters"], s["loop_warm"]
    compiled = gpu.compile_choice("auto", device)[0]  # what train_bio will do here
    kernel = model_bio.uses_kernel(cfg.activation_kernel, _device_type(device))
    bare_mode = "compiled" if compiled else "eager kernel" if kernel else "eager"
    bare = measured.get(("Wiggle" if cfg.use_bio_mlp else "GELU", bare_mode))
    B = measured.get("B")
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "data", "random")
        os.makedirs(folder)
        n_tokens = max(4 * (B or s["max_batch"]) * T + 2, 1 << 16)
        rng = np.random.default_rng(0)
        for split in ("train", "val"):
            ids = rng.integers(0, min(cfg.vocab_size, 50257), n_tokens, dtype=np.uint16)  # GPT-2's ids
            ids.tofile(os.path.join(folder, f"{split}.bin"))
        settings = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
        settings.update(data_root=os.path.join(tmp, "data"), dataset="random", out_dir=os.path.join(tmp, "out"),
                        device=device, max_iters=iters, eval_interval=iters, eval_iters=1, log_interval=1,
                        always_save_checkpoint=False, seed=0)
        if B:  # the training part's micro-batch, so the step is the bare one
            settings.update(batch_size=B, gradient_accumulation_steps=1,
                            gradient_checkpointing=measured.get("checkpointing", False))
        else:  # not measured (skipped, or --only): train_bio's own search
            settings.update(batch_size="auto", tokens_per_iter=s["max_batch"] * T)
        counts_path = os.path.join(tmp, "syncs.json")
        child = subprocess.run([sys.executable, "-c", TRAIN_LOOP_DRIVER, HERE, json.dumps(settings), counts_path],
                               capture_output=True, text=True)  # its log lines stay there; the rows tell
        if child.returncode != 0:
            lines = (child.stderr or child.stdout).strip().splitlines()
            raise RuntimeError(f"train_bio.py failed: {lines[-1] if lines else child.returncode}")
        with open(counts_path, encoding="utf-8") as f:
            counts = json.load(f)
        step_syncs, log_syncs, starts = counts["step"], counts["log"], counts["starts"]
        with open(os.path.join(settings["out_dir"], "metrics.jsonl"), encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
    start = records[0]
    train = [r for r in records if r["kind"] == "train"][warm:]
    if not train:
        raise RuntimeError(f"no training iterations after the {warm} warm-up ones; raise loop_iters")
    tokens = start["tokens_per_iter"]
    loop = statistics.median(r["tokens_per_sec"] for r in train)
    gaps = [b - a for a, b in zip(starts[warm:], starts[warm + 1:])]  # train_step start to the next one's
    wall = tokens / statistics.median(gaps) if gaps else None
    used = {**start['config'], **start['derived']}  # the settings as given, and what the run found
    shape = (f"B={used['batch_size']} x {used['gradient_accumulation_steps']}, T={T}, "
             f"{start['dtype']}, {'compiled' if compiled else 'eager'}, iterations {warm}-{iters - 1}")
    if bare is not None:
        yield ("train_bio loop / bare step tokens/s", f"{loop / bare[0]:.2f}x", ">= 0.95x",
               f"{loop:,.0f} (its metrics' tokens_per_sec) vs {bare[0]:,.0f} tok/s, the training part's "
               f"{bare_mode} step; {shape}")
    else:
        yield ("train_bio loop tokens/s", f"{loop:,.0f}", "-",
               f"its metrics' tokens_per_sec (no bare step measured); {shape}")
    if wall is not None:
        yield ("  train_bio loop, start to start", f"{wall:,.0f} tok/s", "-",
               f"time between train_step calls, logging and metrics writes included ({wall / loop:.2f}x the "
               "metrics' figure)")
    if not cuda:
        yield ("train_bio GPU syncs per iteration", "n/a", "-", "needs CUDA (torch.cuda.set_sync_debug_mode)")
        return
    step_counts, log_counts = step_syncs[warm:], log_syncs[warm:]
    per_iteration = (sum(step_counts) + sum(log_counts)) / max(len(step_counts), 1)
    yield ("train_bio GPU syncs per iteration", f"{per_iteration:.1f}", "<= 1",
           f"train_step {statistics.mean(step_counts):.1f} + log_iteration {statistics.mean(log_counts or [0]):.1f}: "
           "the synchronizing CUDA calls torch.cuda.set_sync_debug_mode('warn') reports (blocking copies to and "
           "from the host such as .item(), .tolist(), torch.tensor(..., device='cuda'), and stream syncs)")


def part_batch_auto(check):
    """What batch_size='auto' picks for the model when the card holds only 8 or 16 GB (the
    allocator limited by torch.cuda.set_per_process_memory_fraction), and wigglegpt.gpu's estimate
    for that batch against the peak one real training step allocates."""
    for budget_gb in check.sizes["budgets_gb"]:
        gc.collect()
        if check.device.startswith("cuda"):
            torch.cuda.empty_cache()  # what earlier parts left cached must not count against the budget
        yield from _batch_under(check, budget_gb)  # a function: nothing of one budget outlives it


def _batch_under(check, budget_gb):
    device, cfg = check.device, check.config
    cuda = device.startswith("cuda")
    T, sequences = cfg.block_size, check.sizes["auto_sequences"]
    dtype = pick_dtype("auto", device)
    autocast = autocast_for(device, dtype)
    what, goal = f"batch_size='auto' under {budget_gb} GB", (">= 4, no checkpointing" if budget_gb == 8 else "-")
    quiet = lambda line: None  # noqa: E731
    model = GPT(cfg).to(device)
    estimate = gpu.memory_estimate(cfg, sum(p.numel() for p in model.parameters()), T, dtype)
    index = common.cuda_index(device) if cuda else None
    try:
        if cuda:
            total = torch.cuda.get_device_properties(index).total_memory
            if budget_gb * 2**30 > total:
                yield (what, "skipped", "-", f"the card has only {total / 2**30:.1f} GiB")
                return
            outside = gpu.memory_outside_allocator(device)  # the CUDA context: a small card holds it too
            limit = budget_gb * 2**30 - outside
            torch.cuda.set_per_process_memory_fraction(limit / total, index)
            B, checkpointing = gpu.auto_batch(model, T, sequences, dtype, device, autocast, False, log=quiet)
            where = f"allocator limited to {limit / 2**30:.2f} GiB, {outside / 2**30:.2f} GiB being held outside it"
        else:  # the search auto_batch makes off CUDA: the estimate, here against budget_gb of free memory
            B, checkpointing = gpu.find_batch_size(gpu.estimate_trial(estimate, budget_gb * 2**30),
                                                       sequences, False, quiet)
            where = f"{device}: the estimate against {budget_gb} GiB free"
        need = gpu.needed_bytes(estimate, B, checkpointing)
        picked = f"{B}" + (" checkpointed" if checkpointing else "")
        shape = f"of {sequences} sequences of {T}, {dtype}; estimate {need / 2**30:.2f} GiB"
        model.config.gradient_checkpointing = checkpointing
        opt = optim.make_optimizer(model, "adamw", 0.1, 6e-4, (0.9, 0.95), _device_type(device))
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        try:  # one real training step at the pick
            x = torch.randint(0, cfg.vocab_size, (B, T), device=device)
            with autocast:
                _, loss = model(x, x, return_logits=False)
            loss.backward()
            opt.step()  # makes the AdamW states: the peak of a real step
            opt.zero_grad(set_to_none=True)
            _sync(device)
        except Exception as e:  # noqa: BLE001 (not fitting is the finding; anything else is raised)
            if not gpu.is_out_of_memory(e):
                raise
            yield (what, picked, goal, f"but one real training step at it ran out of memory; {shape}; {where}")
            return
        if not cuda:
            yield (what, picked, goal, f"{shape}; {where}")
            return
        peak = torch.cuda.max_memory_allocated(device)
        yield (what, picked, goal, f"{shape} vs {peak / 2**30:.2f} GiB allocated at the peak of one step; {where}")
        yield (f"  memory estimate / measured, {budget_gb} GB", f"{need / peak:.2f}x", "~1.0x",
               "gpu.needed_bytes against torch.cuda.max_memory_allocated (fused AdamW, chunked loss)")
    finally:
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1.0, index)


def part_fp16(check):
    """fp16 autocast with the GradScaler, as a GPU without bf16 trains: a few eager steps on one
    fixed batch (so the loss has something to learn), its loss, loss scale and tokens/s."""
    device, cfg, s = check.device, check.config, check.sizes
    device_type = _device_type(device)
    B = min(s["fp16_batch"], check.figures.get("training", {}).get("B") or s["fp16_batch"])  # what fits
    T, steps = cfg.block_size, s["fp16_steps"]
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    opt = optim.make_optimizer(model, "adamw", 0.1, 6e-4, (0.9, 0.95), device_type)
    scaler = torch.amp.GradScaler(device_type)
    tokens = torch.randint(0, cfg.vocab_size, (B, T + 1), device=device)
    idx, targets = tokens[:, :-1], tokens[:, 1:]
    losses, times, scales = [], [], [scaler.get_scale()]
    for _ in range(steps):
        t0 = time.perf_counter()
        with torch.autocast(device_type, dtype=torch.float16):
            _, loss = model(idx, targets, return_logits=False)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)  # clipped as train_bio clips: the true gradients
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())  # syncs the GPU: the step's time covers its work
        times.append(time.perf_counter() - t0)
        scales.append(scaler.get_scale())
    skipped = sum(b < a for a, b in zip(scales, scales[1:]))  # the scale backs off on every inf/nan step
    finite = all(math.isfinite(v) for v in losses)
    verdict = ("finite, decreasing" if losses[-1] < losses[0] else "finite, not decreasing") if finite else "NOT FINITE"
    rate = B * T / statistics.median(times[min(2, steps - 1):])
    yield (f"fp16 + GradScaler, {steps} steps", verdict, "finite, decreasing",
           f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; scale {scales[-1]:,.0f}, {skipped} step(s) skipped on inf/nan; "
           f"{rate:,.0f} tok/s, B={B}, T={T}, eager, activation_kernel={cfg.activation_kernel!r}")


GPU_PARTS = {  # name -> (part, seconds it needs on an H100-class GPU)
    "environment": (part_environment, 5),
    "numerics": (part_numerics, 60),
    "training": (part_training, 190),
    "activation": (part_activation_speed, 15),
    "train_loop": (part_train_loop, 100),
    "batch_auto": (part_batch_auto, 45),
    "fp16": (part_fp16, 20),
}


class PartTimeout(BaseException):
    """Raised by the alarm in a part that ran past its time. A BaseException, so that no
    `except Exception` inside torch swallows it."""


@contextlib.contextmanager
def time_limit(seconds):
    """PartTimeout in the main thread after seconds (where there is SIGALRM; elsewhere no limit)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum, frame):
        raise PartTimeout(f"stopped after {seconds:,.1f} s, its share of the check's time")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


ROW_FIELDS = ("what", "measured", "goal", "detail")


def _number(measured):
    """The number of a measured cell ('1.02x', '45.1%', '12,345'), else None."""
    match = re.fullmatch(r"(-?[\d,]*\.?\d+(?:e[-+]?\d+)?)\s*(x|%)?", str(measured).strip())
    return float(match.group(1).replace(",", "")) if match else None


def run_gpu_check(device, config, sizes, out_path, budget_s=GPU_BUDGET_S, parts=None, log=print):
    """Run the parts of GPU_PARTS named in parts (default: all) in turn and return their rows.
    Each row is logged and written to out_path as one JSON line the moment it is measured (the
    file is rewritten from the start). A part that would not fit in the time left is skipped with
    a row saying so; one that fails, or runs past twice its share, becomes one row, and the
    others still run. sizes: GPU_SIZES entries to replace."""
    started = time.monotonic()
    check = GpuCheck(device, config, {**GPU_SIZES, **sizes}, started + budget_s)
    rows = []
    try:
        out = open(out_path, "w", encoding="utf-8")
    except OSError as e:
        raise write_error(out_path, e, "run the check again") from None
    with out:
        def write(record):
            out.write(json.dumps(record) + "\n")
            out.flush()  # in the file now: a run cut off still reports what it measured

        def add(part, row):
            rows.append(row)
            write({"part": part, **dict(zip(ROW_FIELDS, row)), "value": _number(row[1]),
                   "elapsed_s": round(time.monotonic() - started, 1)})
            log(f"  {row[0]}: {row[1]}  (goal {row[2]})  {row[3]}")

        write({"part": "start", "machine": machine_line(), "device": device, "budget_s": budget_s,
               "parts": list(parts or GPU_PARTS), "time": time.time()})
        for name in parts or GPU_PARTS:
            run_part, needs = GPU_PARTS[name]
            left = check.time_left()
            if left < needs:
                add(name, (name, "skipped", "-",
                           f"{max(left, 0):.0f} s left of {budget_s:.0f} s; it needs about {needs} s"))
                continue
            log(f"running {name} ... ({left:.0f} s left)")
            measured = run_part(check)
            try:
                with time_limit(min(left, 2 * needs) if needs else left):
                    for row in measured:
                        add(name, row)
            except (Exception, PartTimeout) as e:  # noqa: BLE001 (one part must not lose the others)
                add(name, failure_row(name, e))
            finally:
                if hasattr(measured, "close"):
                    measured.close()  # the part's own finally blocks (memory fraction, patched functions) run now
                torch._dynamo.reset()  # its compiled graphs go; recompile limits start afresh
                gc.collect()
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
        write({"part": "end", "elapsed_s": round(time.monotonic() - started, 1)})
    return rows


def gpu_main(cfg):
    """--gpu: the check on the current CUDA device with the published 124M config."""
    wanted = [p for p in cfg.only.split(",") if p] or list(GPU_PARTS)
    unknown = [p for p in wanted if p not in GPU_PARTS]
    if unknown:
        raise UserError(f"unknown GPU check part(s) {', '.join(unknown)}; choose from {', '.join(GPU_PARTS)}")
    if not torch.cuda.is_available():
        raise UserError("--gpu needs a CUDA GPU, and torch sees none here (no GPU, or a CPU-only torch build); "
                        "run it on a machine with one, or drop --gpu for the CPU sections")
    torch.backends.cuda.matmul.allow_tf32 = True  # as train_bio sets them
    torch.backends.cudnn.allow_tf32 = True
    print(f"machine: {machine_line()}")
    print(f"GPU check ({', '.join(wanted)}), {GPU_BUDGET_S} s at most; each row also goes to {cfg.out} "
          "as it is measured", flush=True)
    torch.manual_seed(cfg.seed)
    rows = run_gpu_check("cuda", GPTConfig(), {}, cfg.out, parts=wanted, log=lambda line: print(line, flush=True))
    print()
    print_table(rows)


# --- report --------------------------------------------------------------------------

def machine_line():
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"{card}, torch {torch.__version__}, python {platform.python_version()}")


def print_table(rows):
    header = ("benchmark", "measured", "goal", "detail")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    line = "  ".join("{:<%d}" % w for w in widths)
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*(str(c) for c in row)))


def failure_row(name, error):
    """The row of a section or part that raised: its name and the error's first line."""
    reason = (str(error).strip().splitlines() or [""])[0][:160]
    return (name, "failed", "-", f"{type(error).__name__}: {reason}")


def run_section(name, quick):
    """A section's rows; a section that fails (out of memory, a missing tool) becomes one row
    with its one-line error, and the other sections still report."""
    try:
        return SECTIONS[name](quick)
    except Exception as e:  # noqa: BLE001 (any failure of one section must not lose the report)
        failed = [failure_row(name, e)]
        print(f"  {name} failed: {failed[0][3]}", flush=True)
    gc.collect()  # the failed section's tensors, before the next section needs the memory
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return failed


def main():
    cfg = load_settings(SETTINGS, description=__doc__.strip().splitlines()[0], allow_config_file=False)
    if cfg.gpu:
        return gpu_main(cfg)
    wanted = [s for s in cfg.only.split(",") if s] or list(SECTIONS)
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        raise UserError(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    print(f"machine: {machine_line()}")
    rows = []
    for name in wanted:
        torch.manual_seed(cfg.seed)
        print(f"running {name} ...", flush=True)
        rows.extend(run_section(name, cfg.quick))
    print()
    print_table(rows)


if __name__ == "__main__":
    run_main(main)
