"""
One benchmark report: every speed and memory goal of the project, measured side by side in
one run on this machine and printed as a table of ratios.

    python bench_bio.py            # full sizes
    python bench_bio.py --quick    # small sizes, under 2 minutes on 2 CPU cores

Each section is a function that returns rows (what, measured, goal, detail); main() runs the
ones asked for and prints the table. Timings are medians of several repeats after a warm-up.
"""

import platform
import statistics
import time

import torch

from settings_bio import load_settings, run_main

SETTINGS = {
    "quick": (False, "small sizes so the whole report takes under 2 minutes on 2 CPU cores"),
    "only": ("", "comma-separated section names to run (default: all)"),
    "seed": (1337, "random seed for the models and data the benchmarks make"),
}


def median_seconds(fn, repeats, warmup=1):
    """Median wall time of fn() over repeats, after warmup calls (first calls allocate)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --- sections ------------------------------------------------------------------------

# (sections are added below, one function each, and listed in SECTIONS)

SECTIONS = {}


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


def main():
    cfg = load_settings(SETTINGS, description=__doc__.strip().splitlines()[0], allow_config_file=False)
    wanted = [s for s in cfg.only.split(",") if s] or list(SECTIONS)
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        from settings_bio import UserError
        raise UserError(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    print(f"machine: {machine_line()}")
    rows = []
    for name in wanted:
        torch.manual_seed(cfg.seed)
        print(f"running {name} ...", flush=True)
        rows.extend(SECTIONS[name](cfg.quick))
    print()
    print_table(rows)


if __name__ == "__main__":
    run_main(main)
