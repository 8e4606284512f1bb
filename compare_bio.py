"""
Compare training runs side by side: a table of their numbers and a plot of their loss curves.

    python compare_bio.py out-shakespeare-bio out-shakespeare-gelu        # run folders (or metrics.jsonl files)
    python compare_bio.py --run config/shakespeare_bio.py config/shakespeare_gelu.py --max_iters=100
    python compare_bio.py --run config/shakespeare_bio.py --rope_variants  # real RoPE vs legacy (no positions)

Each run is read from the metrics.jsonl that train_bio.py writes (one JSON object per line:
start, train, eval and end records). With --run the configs are trained first, one
subprocess each, `python train_bio.py <config> --out_dir=<out_root>/<name> --seed=...`, all
with the same seed (hence the same data order) and, when given, the same --max_iters (the
same token budget). --rope_variants trains every config that uses RoPE twice: with real
RoPE (<name>-rope) and with --legacy_rope=True (<name>-legacy_rope), the published
checkpoints' RoPE, which in effect encodes no position at all; position encoding is then the
only difference between the two runs.

The table: run, parameters, tokens seen, iterations, final and best val loss, tokens/s
(median over the train records) and peak memory (max of the eval records' peak_mem_mb).
A resumed run has several start records. Each start at iteration N begins a new timeline:
what an earlier process logged after its checkpoint at N (train records from N on, eval
records after N) is dropped, and of what is left the last record of each iteration counts.
"""

import json
import os
import shlex
import statistics
import subprocess
import sys

from settings_bio import UserError, load_settings, read_config_file, run_main

SETTINGS = {
    "run": (False, "train the given config files first (one train_bio.py subprocess each), then compare"),
    "out_root": ("out-compare", "--run: each run trains into out_root/<name>; the plot goes here by default"),
    "max_iters": (0, "--run: iterations for every run (0: each config's own max_iters)"),
    "seed": (1337, "--run: the seed passed to every run"),
    "rope_variants": (False, "--run: train each RoPE config twice, with real RoPE and with legacy_rope=True"),
    "train_args": ("", "--run: extra settings for every run, e.g. \"--device=cpu --eval_interval=25\""),
    "plot": ("", "PNG of the loss curves (default: out_root/compare.png; 'none': no plot)"),
}

# fields each kind of record must have (other kinds are skipped: newer writers may add some)
REQUIRED = {"start": ("iter",), "train": ("iter", "loss", "tokens"),
            "eval": ("iter", "train_loss", "val_loss", "tokens"), "end": ("iter",)}
TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_bio.py")


# ---------------------------------------------------------------------------------------
# reading metrics.jsonl

def metrics_path(path):
    """A run folder or a metrics.jsonl file -> the metrics.jsonl path (which must exist)."""
    file = os.path.join(path, "metrics.jsonl") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        if os.path.isdir(path):
            raise UserError(f"{path} has no metrics.jsonl (is it a train_bio.py out_dir? runs of the "
                            "original code wrote none)")
        raise UserError(f"run not found: {path} (give a run folder or its metrics.jsonl)")
    return file


def read_metrics(path):
    """The records of a metrics.jsonl, in order. A cut-off last line (a crash mid-write) is skipped."""
    file = metrics_path(path)
    with open(file, encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    records = []
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                print(f"warning: {file}: last line is cut off; skipped", file=sys.stderr)
                break
            raise UserError(f"{file}, line {n}: not a JSON object") from None
        if not isinstance(record, dict) or "kind" not in record:
            raise UserError(f"{file}, line {n}: not a metrics record (no 'kind')")
        lacking = [k for k in REQUIRED.get(record["kind"], ()) if k not in record]
        if lacking or not isinstance(record.get("iter", 0), int):
            raise UserError(f"{file}, line {n}: {record['kind']} record without a whole-number "
                            f"{', '.join(lacking) or 'iter'}")
        records.append(record)
    if not records:
        raise UserError(f"{file} is empty")
    return records


def current_timeline(records):
    """The records that describe the run as it finally went (see the module docstring).

    Returns (start, train, eval, end): the last start record, train and eval records sorted
    by iteration with one (the last) per iteration, and the final end record or None.
    """
    start, end = None, None
    train, evals = {}, {}
    for r in records:
        kind, it = r["kind"], r.get("iter")
        if kind == "start":
            start, end = r, None
            train = {i: t for i, t in train.items() if i < it}  # logged after the checkpoint we resume from
            evals = {i: e for i, e in evals.items() if i <= it}
        elif kind == "train":
            train[it] = r
        elif kind == "eval":
            evals[it] = r
        elif kind == "end":
            end = r
    return start, [train[i] for i in sorted(train)], [evals[i] for i in sorted(evals)], end


def finite(values):
    return [v for v in values if isinstance(v, (int, float)) and v == v and abs(v) != float("inf")]


def summarize(name, records):
    """One row of the table: a dict of the run's numbers (None where the run has none)."""
    start, train, evals, end = current_timeline(records)
    if start is None:
        raise UserError(f"run {name}: metrics.jsonl has no start record")
    val = finite([e["val_loss"] for e in evals])
    best = min(val) if val else None
    if end is not None and finite([end.get("best_val_loss")]):
        best = min(best, end["best_val_loss"]) if best is not None else end["best_val_loss"]
    last = [r for r in (train[-1:] + evals[-1:] + ([end] if end else [])) if r.get("tokens") is not None]
    speeds = finite([t.get("tokens_per_sec") for t in train])
    memory = finite([e.get("peak_mem_mb") for e in evals])
    # steps taken: the end record says; else a train record's iter is the step just done (+1)
    steps = [end["iter"]] if end else [t["iter"] + 1 for t in train[-1:]] + [e["iter"] for e in evals[-1:]]
    last_val = finite([e["val_loss"] for e in evals[-1:]])
    return dict(
        name=name,
        params=start.get("params"),
        tokens=max(r["tokens"] for r in last) if last else None,
        iters=max(steps) if steps else None,
        final_val_loss=last_val[0] if last_val else None,
        best_val_loss=best,
        tokens_per_sec=statistics.median(speeds) if speeds else None,
        peak_mem_mb=max(memory) if memory else None,
        status=end.get("reason", "ended") if end else "unfinished",
        curves=dict(val=[(e["tokens"], e["val_loss"]) for e in evals],
                    train_eval=[(e["tokens"], e["train_loss"]) for e in evals],
                    train=[(t["tokens"], t["loss"]) for t in train]),
    )


def run_name(path):
    """A run's name: its folder's name (the folder holding metrics.jsonl when given the file)."""
    path = os.path.normpath(path)
    if os.path.basename(path) == "metrics.jsonl" or os.path.isfile(path):
        path = os.path.dirname(path) or "."
    return os.path.basename(os.path.abspath(path))


# ---------------------------------------------------------------------------------------
# training the configs (--run)

def uses_rope(config_values, train_args):
    """Whether train_bio.py will use RoPE with this config and these extra args."""
    for arg in reversed(train_args):  # the last --use_rope=... wins, as in train_bio
        if arg.startswith("--use_rope="):
            return arg.split("=", 1)[1] == "True"
    if "use_rope" in config_values:
        return config_values["use_rope"]
    from train_bio import SETTINGS as TRAIN_SETTINGS  # (imports torch) its default applies
    return TRAIN_SETTINGS["use_rope"][0]


def planned_runs(configs, rope_variants, train_args):
    """[(name, config, extra args)] for the configs; with rope_variants, RoPE configs twice."""
    runs = []
    for config in configs:
        base = os.path.splitext(os.path.basename(config))[0]
        values = read_config_file(config)  # also a clear error for a missing or broken config
        if rope_variants and uses_rope(values, train_args):
            runs.append((f"{base}-rope", config, ["--legacy_rope=False"]))
            runs.append((f"{base}-legacy_rope", config, ["--legacy_rope=True"]))
        else:
            if rope_variants:
                print(f"note: {config} does not use RoPE (use_rope=False): no RoPE variants for it")
            runs.append((base, config, []))
    names = [name for name, _, _ in runs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"two runs would share the name {', '.join(repeated)}; give each config once")
    return runs


def train_runs(configs, cfg):
    """Train each planned run in a subprocess; return [(name, out_dir)]."""
    train_args = shlex.split(cfg.train_args)
    for arg in train_args:
        if not arg.startswith("--"):
            raise UserError(f"train_args takes --key=value settings only, got {arg!r}")
        if arg.split("=", 1)[0] in ("--out_dir", "--seed", "--max_iters", "--overwrite"):
            raise UserError(f"{arg.split('=', 1)[0]} is set by compare_bio.py itself; use its own setting")
    done = []
    for name, config, extra in planned_runs(configs, cfg.rope_variants, train_args):
        out_dir = os.path.join(cfg.out_root, name)
        # a comparison's folders are its own: a second --run replaces the first one's runs
        cmd = [sys.executable, TRAIN_SCRIPT, config, f"--out_dir={out_dir}", f"--seed={cfg.seed}", "--overwrite=True"]
        if cfg.max_iters:
            cmd.append(f"--max_iters={cfg.max_iters}")
        cmd += extra + train_args
        print(f"=== {name}: {' '.join(shlex.quote(c) for c in cmd[1:])}", flush=True)
        code = subprocess.run(cmd).returncode
        if code != 0:
            raise UserError(f"training {name} failed (exit code {code}); its output is above")
        done.append((name, out_dir))
    return done


# ---------------------------------------------------------------------------------------
# report

def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def print_table(rows):
    header = ["run", "params", "tokens", "iters", "final val", "best val", "tokens/s", "peak MB"]
    cells = [[r["name"] + ("" if r["status"] == "max_iters" else f" ({r['status']})"), fmt(r["params"], ","), fmt(r["tokens"], ","),
              fmt(r["iters"], ","), fmt(r["final_val_loss"], ".4f"), fmt(r["best_val_loss"], ".4f"),
              fmt(r["tokens_per_sec"], ",.0f"), fmt(r["peak_mem_mb"], ",.1f")] for r in rows]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    line = "  ".join(["{:<%d}" % widths[0]] + ["{:>%d}" % w for w in widths[1:]])
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for c in cells:
        print(line.format(*c))
    budgets = {r["tokens"] for r in rows}
    if len(budgets) > 1:
        print("note: the runs saw different numbers of tokens; their losses do not compare like for like")


def plot_curves(rows, path):
    """Val loss against tokens seen (solid, dots at the evals), the train loss faintly behind it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6))
    for i, r in enumerate(rows):
        color = f"C{i % 10}"
        train = r["curves"]["train"] or r["curves"]["train_eval"]
        if train:
            ax.plot(*zip(*train), color=color, alpha=0.25, lw=1)
        if r["curves"]["val"]:
            best = fmt(r["best_val_loss"], ".4f")
            ax.plot(*zip(*r["curves"]["val"]), color=color, lw=2, marker="o", ms=4,
                    label=f"{r['name']}: val loss (best {best})")
    ax.plot([], [], color="gray", alpha=0.4, label="train loss (faint, same colour)")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss")
    ax.set_title("loss curves")
    ax.grid(alpha=0.3)
    ax.legend()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    paths = [a for a in argv if not a.startswith("-")]  # run folders, metrics files or (--run) configs
    cfg = load_settings(SETTINGS, [a for a in argv if a.startswith("-")],
                        description=__doc__.strip().splitlines()[0], allow_config_file=False)
    if not paths:
        raise UserError("give the runs to compare (folders or metrics.jsonl files), or --run and config files")
    if cfg.max_iters < 0:
        raise UserError(f"max_iters must not be negative, got {cfg.max_iters}")
    if cfg.run:
        runs = train_runs(paths, cfg)
    else:
        if cfg.rope_variants or cfg.max_iters or cfg.train_args:
            raise UserError("--rope_variants, --max_iters and --train_args only apply with --run")
        names = [run_name(p) for p in paths]
        if len(set(names)) < len(names):  # e.g. a/out and b/out: the paths tell them apart
            names = [os.path.normpath(p) for p in paths]
        runs = list(zip(names, paths))
    if len(runs) < 2:
        raise UserError("a comparison needs two or more runs")
    rows = [summarize(name, read_metrics(path)) for name, path in runs]
    print()
    print_table(rows)
    plot = cfg.plot or os.path.join(cfg.out_root, "compare.png")
    if plot.lower() != "none":
        plot_curves(rows, plot)
        print(f"wrote {plot}")
    return rows


if __name__ == "__main__":
    run_main(main)
