"""
One benchmark report: every speed and memory goal of the project, measured side by side in
one run on this machine and printed as a table of ratios.

    python bench_bio.py            # full sizes
    python bench_bio.py --quick    # small sizes, under 2 minutes on 2 CPU cores

Each section is a function that returns rows (what, measured, goal, detail); main() runs the
ones asked for and prints the table. Timings are medians of several repeats after a warm-up.
"""

import gc
import platform
import statistics
import time

import torch

from settings_bio import UserError, load_settings, run_main

SETTINGS = {
    "quick": (False, "small sizes so the whole report takes under 2 minutes on 2 CPU cores"),
    "only": ("", "comma-separated section names to run (default: all)"),
    "seed": (1337, "random seed for the models and data the benchmarks make"),
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
    from engine_bio import generate
    from model_bio import GPT, GPTConfig
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


def _bench_model(use_bio_mlp, quick, plain_autograd=False):
    """A small model (4 layers, 256 dim, B=8, T=256) for the Wiggle-vs-GELU figures. The
    vocabulary is kept small so the blocks, not the output layer, dominate what is measured."""
    from model_bio import GPT, GPTConfig, OscillatingActivation
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
        _, loss = model(idx, idx)
    loss.backward()
    params = {(p.untyped_storage().data_ptr(), p.dtype) for p in model.parameters()}
    return sum(n for key, n in seen.items() if key not in params)  # activations only


def bench_activation(quick):
    """Oscillating neuron vs GELU: activation memory saved for backward, and train step time."""
    models = {name: _bench_model(bio, quick, plain) for name, bio, plain in
              [("wiggle", True, False), ("gelu", False, False), ("plain_autograd", True, True)]}
    memory = {name: _saved_bytes(m, idx) for name, (m, idx) in models.items()}

    def step(model, idx, opt):
        _, loss = model(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    steps = {}
    for name, (model, idx) in models.items():
        opt = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), "cpu")
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
        opt = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), "cpu")
        compiled = torch.compile(model)

        def step(compiled=compiled, idx=idx, opt=opt):
            _, loss = compiled(idx, idx)
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
    from model_bio import GPTConfig
    return training_figures("cuda", GPTConfig(), 4 if quick else 16, 3 if quick else 10)


def training_figures(device, config, max_batch, repeats, compiled=(False, True)):
    """Train-step figures of one shape with the oscillating MLP and with GELU. The micro-batch is
    the largest of max_batch, max_batch/2, ... that fits the card with the Wiggle model (gpu_bio's
    batch search), so an 8 GB card reports instead of failing; both MLPs then run that batch.
    The models are measured one after the other (two 124M models with AdamW states would not fit
    an 8 GB card together), each on its own fresh memory peak."""
    import dataclasses

    import gpu_bio
    from model_bio import GPT
    from settings_bio import autocast_for, pick_dtype
    dtype = pick_dtype("auto", device)
    autocast = autocast_for(device, dtype)
    cuda = device.startswith("cuda")
    T = config.block_size
    peak, source = gpu_bio.resolve_peak_flops(0, device)
    B, checkpointing = None, False

    def measure(bio):
        """{compiled: (tokens/s, MFU or None, peak MB)} of one MLP kind; its model is freed on return."""
        nonlocal B, checkpointing
        torch.manual_seed(0)
        model = GPT(dataclasses.replace(config, use_bio_mlp=bio)).to(device)
        if B is None:
            B, checkpointing = gpu_bio.auto_batch(model, T, max_batch, dtype, device, autocast, False,
                                                  log=lambda line: print(f"  training_figures: {line}", flush=True))
        model.config.gradient_checkpointing = checkpointing
        opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device.split(":")[0])
        idx = torch.randint(0, model.config.vocab_size, (B, T), device=device)
        scaler = torch.amp.GradScaler(device.split(":")[0], enabled=(dtype == "float16"))
        out = {}
        for compile_it in compiled:
            forward = torch.compile(model) if compile_it else model

            def step():
                with autocast:
                    _, loss = forward(idx, idx)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                if cuda:
                    torch.cuda.synchronize()  # time the GPU work, not the launch

            if cuda:
                torch.cuda.reset_peak_memory_stats()
            dt = median_seconds(step, repeats, warmup=2)  # compiling happens in the warm-up
            memory = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
            out[compile_it] = (B * T / dt, model.estimate_mfu(B * T, dt, peak, T) if peak else None, memory)
        return out

    figures = {}
    for mlp, bio in (("Wiggle", True), ("GELU", False)):
        for compile_it, values in measure(bio).items():
            figures[mlp, compile_it] = values
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()  # the next model starts from an empty card
    shape = f"{dtype}, B={B}, T={T}" + (", gradient checkpointing" if checkpointing else "")
    rows = []
    for compile_it in compiled:
        how = "compiled" if compile_it else "eager"
        for mlp in ("Wiggle", "GELU"):
            tokens, mfu, memory = figures[mlp, compile_it]
            mfu_text = f"{mfu * 100:.1f}%" if mfu is not None else "unknown"
            rows.append((f"124M {mlp} {how} training tokens/s (GPU)", f"{tokens:,.0f}",
                         ">= 40% MFU on an H100" if compile_it and mlp == "Wiggle" else "-",
                         f"{shape}; MFU {mfu_text}; peak {memory:,.0f} MB"))
        ratio = figures["Wiggle", compile_it][0] / figures["GELU", compile_it][0]
        rows.append((f"124M tokens/s Wiggle / GELU, {how} (GPU)", f"{ratio:.2f}x",
                     ">= 0.95x" if compile_it else "-", shape))
    if peak is None:
        rows.append(("124M MFU (GPU)", "unknown", "-", gpu_bio.unknown_peak_hint(device)))
    else:
        rows.append(("124M MFU peak used", f"{peak / 1e12:.1f} TFLOP/s", "-", source))
    return rows


SECTIONS["gpu_124m"] = bench_gpu_124m


def bench_data_prep(quick):
    """Data preparation: the engine's batched parallel encoding vs a one-thread per-document
    loop on the same jsonl (Shakespeare, written to a temp dir), and the peak memory of the real
    script with its worker processes, which must stay flat as the input grows 5x."""
    import contextlib
    import io
    import json
    import os
    import subprocess
    import sys
    import tempfile
    import threading

    import numpy as np

    import dataprep_bio
    from tokenizer_bio import EOT, get_tokenizer

    def write_corpus(path, megabytes):
        chunks = [row["text"] for row in dataprep_bio.shakespeare_documents()]
        written, index = 0, 0
        with open(path, "w", encoding="utf-8") as f:
            while written < megabytes * 2**20:
                line = json.dumps({"text": f"{index}\n" + chunks[index % len(chunks)]}) + "\n"
                f.write(line)
                written, index = written + len(line), index + 1
        return path

    def batched(path, out_dir, tokens):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # no summaries
            meta = dataprep_bio.prepare(
                dataprep_bio.stream_rows(data_files=path), dataprep_bio.TextEncoder("text"), out_dir,
                source=path, recipe={}, val_fraction=0.01, num_workers=os.cpu_count() or 1, overwrite=True)
        tokens["batched"] = meta["train_tokens"] + meta["val_tokens"]

    def loop(path, out_dir, tokens):
        enc, count = get_tokenizer(), 0
        with open(os.path.join(out_dir, "loop.bin"), "wb") as f:
            for row in dataprep_bio.stream_rows(data_files=path):
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


# --- report --------------------------------------------------------------------------

def machine_line():
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"{gpu}, torch {torch.__version__}, python {platform.python_version()}")


def print_table(rows):
    header = ("benchmark", "measured", "goal", "detail")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    line = "  ".join("{:<%d}" % w for w in widths)
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*(str(c) for c in row)))


def run_section(name, quick):
    """A section's rows; a section that fails (out of memory, a missing tool) becomes one row
    with its one-line error, and the other sections still report."""
    try:
        return SECTIONS[name](quick)
    except Exception as e:  # noqa: BLE001 (any failure of one section must not lose the report)
        reason = (str(e).strip().splitlines() or [""])[0][:160]
        print(f"  {name} failed: {type(e).__name__}: {reason}", flush=True)
        failed = [(name, "failed", "-", f"{type(e).__name__}: {reason}")]
    gc.collect()  # the failed section's tensors, before the next section needs the memory
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return failed


def main():
    cfg = load_settings(SETTINGS, description=__doc__.strip().splitlines()[0], allow_config_file=False)
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
