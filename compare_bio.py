"""
Compare training runs side by side: a table of their numbers and a plot of their loss curves.

    python compare_bio.py out-shakespeare-bio out-shakespeare-gelu        # run folders (or metrics.jsonl files)
    python compare_bio.py --run config/shakespeare_bio.py config/shakespeare_gelu.py --max_iters=100
    python compare_bio.py --run config/shakespeare_bio.py --rope_variants  # real RoPE vs legacy (no positions)
    python compare_bio.py --run config/shakespeare_bio.py config/shakespeare_gelu.py --seeds=3   # error bars
    python compare_bio.py --run config/shakespeare_bio.py --ablate=use_bio_mlp,use_rope --seeds=3  # one switch each
    python compare_bio.py --run config/shakespeare_bio.py --sweep=n_layer=2,4,8 --seeds=3 --plot=layers.png
    python compare_bio.py out-owt-bio --chart=loss_chart.png               # the original's loss chart
    python compare_bio.py trainlog.txt --chart=loss_chart.png --zoom=0.075 # ... from a console log

Each run is read from the metrics.jsonl that train_bio.py writes; --run trains the configs
first, one train_bio.py subprocess each, with the same seed and token budget. --chart draws
the original WiggleGPT's loss chart instead of the table, from metrics.jsonl or from a
plain-text console log (wigglegpt/losslog.py). --ablate and --sweep train variants of one config
that each change one setting, compared to the first as configs are. The table's columns, the
multi-seed statistics and how resumed runs are read: README.md, "Research tools".
"""

import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import types

from wigglegpt import compat, losslog, plots
from wigglegpt.common import UserError, run_main, write_error
from wigglegpt.stats import mean_std, paired_difference
from wigglegpt.settings import check_type, closest, load_settings, parse_value, read_config_file, settings_from_json

SETTINGS = {
    "run": (False, "train the given config files first (one train_bio.py subprocess each), then compare"),
    "out_root": ("out-compare", "--run: each run trains into out_root/<name>; the plot goes here by default"),
    "max_iters": (0, "--run: iterations for every run (0: each config's own max_iters)"),
    "seed": (1337, "--run: the seed passed to every run (the first seed with --seeds)"),
    "seeds": (1, "--run: train every run with this many seeds, seed, seed+1, ... (error bars from 2 on)"),
    "rope_variants": (False, "--run: train each RoPE config twice, with real RoPE and with legacy_rope=True"),
    "train_args": ("", "--run: extra settings for every run, e.g. \"--device=cpu --eval_interval=25\""),
    "ablate": ("", "--run with one config: train it and, per boolean setting named here (comma separated, e.g. "
                   "use_bio_mlp,use_rmsnorm,use_rope), a variant with only that setting flipped"),
    "sweep": ("", "--run with one config: KEY=V1,V2,... trains it once per value (the first is the reference), "
                  "e.g. bio_threshold=0.1,0.25,0.4 or n_layer=2,4,8; with a plot also FILE-sweep.png, the final "
                  "val loss against the value"),
    "plot": ("", "PNG of the loss curves (default: out_root/compare.png; 'none': no plot)"),
    "chart": ("", "PNG of the original WiggleGPT's loss chart, instead of the table: linear, log-scale and "
                  "final-region panels of the eval losses of one or more runs (run folders, metrics.jsonl files "
                  "or plain-text console logs with 'step N: train loss X, val loss Y' lines)"),
    "reference_loss": (3.12, "--chart: the dashed reference line (GPT-2 124M's val loss on OpenWebText, about "
                             "3.12, as in the original chart); 0: no line"),
    "zoom": (0.1, "--chart: the final-region panel shows this last share of the iterations (0.1: the last 10%)"),
}

# fields each kind of record must have (other kinds are skipped: newer writers may add some)
REQUIRED = {"start": ("iter",), "train": ("iter", "loss", "tokens"),
            "eval": ("iter", "train_loss", "val_loss", "tokens"), "end": ("iter",),
            "hellaswag": ("iter", "acc_norm", "tokens")}
SEED_PREFIX = "seed"  # a multi-seed run's folders: out_root/<name>/seed<S>
TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_bio.py")


# ---------------------------------------------------------------------------------------
# reading metrics.jsonl

def metrics_path(path):
    """A run folder or a metrics.jsonl file -> the metrics.jsonl path (which must exist)."""
    file = os.path.join(path, "metrics.jsonl") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        if os.path.isdir(path):
            raise UserError(f"{path} has no metrics.jsonl (is it a train_bio.py out_dir? runs of the "
                            "original code wrote none: chart their console log with --chart)")
        raise UserError(f"run not found: {path} (give a run folder or its metrics.jsonl)")
    return file


def read_metrics(path):
    """The records of a metrics.jsonl, in order. A cut-off last line (a crash mid-write) is skipped."""
    file = metrics_path(path)
    with open(file, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{file} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}): "
                        "not a metrics.jsonl of train_bio.py") from None
    lines = [line for line in text.splitlines() if line.strip()]
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


def timeline(records):
    """The records that describe the run as it finally went (see the module docstring): a dict
    with the last start record, the train, eval and hellaswag records sorted by iteration with
    one (the last) per iteration, and the final end record or None."""
    start, end = None, None
    kept = {"train": {}, "eval": {}, "hellaswag": {}}
    for r in records:
        kind, it = r["kind"], r.get("iter")
        if kind == "start":
            start, end = r, None
            kept["train"] = {i: t for i, t in kept["train"].items() if i < it}  # logged after the checkpoint we resume from
            for measured in ("eval", "hellaswag"):
                kept[measured] = {i: e for i, e in kept[measured].items() if i <= it}
        elif kind in kept:
            kept[kind][it] = r
        elif kind == "end":
            end = r
    return dict(start=start, end=end, **{kind: [by_iter[i] for i in sorted(by_iter)] for kind, by_iter in kept.items()})


def finite(values):
    return [v for v in values if isinstance(v, (int, float)) and v == v and abs(v) != float("inf")]


def summarize(name, records):
    """One row of the table: a dict of the run's numbers (None where the run has none)."""
    t = timeline(records)
    start, train, evals, end, hellaswag = t["start"], t["train"], t["eval"], t["end"], t["hellaswag"]
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
    bpb = [e for e in evals if finite([e.get("val_bpb")])]  # written by newer train_bio.py runs only
    seed = (start.get("config") or {}).get("seed")
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
        seed=seed if isinstance(seed, int) else None,
        final_val_bpb=bpb[-1]["val_bpb"] if bpb and bpb[-1] is evals[-1] else None,
        hellaswag_acc_norm=hellaswag[-1]["acc_norm"] if hellaswag else None,
        curves=dict(val=[(e["tokens"], e["val_loss"]) for e in evals],
                    train_eval=[(e["tokens"], e["train_loss"]) for e in evals],
                    train=[(t["tokens"], t["loss"]) for t in train],
                    val_bpb=[(e["tokens"], e["val_bpb"]) for e in bpb],
                    hellaswag=[(h["tokens"], h["acc_norm"]) for h in hellaswag]),
    )


def seed_folders(path):
    """The seed<S> run folders inside a multi-seed run's folder, sorted by seed ([] if none)."""
    if not os.path.isdir(path) or os.path.isfile(os.path.join(path, "metrics.jsonl")):
        return []
    found = []
    for entry in os.listdir(path):
        digits = entry[len(SEED_PREFIX):]
        if entry.startswith(SEED_PREFIX) and digits.lstrip("-").isdigit() \
                and os.path.isfile(os.path.join(path, entry, "metrics.jsonl")):
            found.append((int(digits), os.path.join(path, entry)))
    return [folder for _, folder in sorted(found)]


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
    from model_bio import GPTConfig  # (imports torch) train_bio.py's default is the model's
    return GPTConfig.use_rope


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
    check_unique([name for name, _, _ in runs], "give each config once")
    return runs


def check_unique(names, advice):
    """Each run trains into out_root/<name>: two runs with one name would share a folder."""
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"two runs would share the name {', '.join(repeated)}; {advice}")


OWN_SETTINGS = ("out_dir", "seed", "max_iters", "overwrite")  # compare_bio.py sets these for every run


def checked_train_args(text):
    """--train_args as a list of --key=value settings, none of those compare_bio.py sets itself."""
    train_args = shlex.split(text)
    for arg in train_args:
        if not arg.startswith("--"):
            raise UserError(f"train_args takes --key=value settings only, got {arg!r}")
        if arg[2:].split("=", 1)[0] in OWN_SETTINGS:
            raise UserError(f"{arg.split('=', 1)[0]} is set by compare_bio.py itself; use its own setting")
    return train_args


def train_runs(plan, cfg, train_args):
    """Train each planned run [(name, config, extra args)] in a subprocess, once per seed, with
    train_args and then the run's own extra args; return [(name, [out_dir per seed])]."""
    seeds = [cfg.seed + k for k in range(cfg.seeds)]
    done = {name: [] for name, _, _ in plan}
    # seed-major: after each round every config has as many seeds, so a stopped comparison stays paired
    for seed in seeds:
        for name, config, extra in plan:
            out_dir = os.path.join(cfg.out_root, name)
            if cfg.seeds > 1:
                out_dir = os.path.join(out_dir, f"{SEED_PREFIX}{seed}")
            # a comparison's folders are its own: a second --run replaces the first one's runs
            cmd = [sys.executable, TRAIN_SCRIPT, config, f"--out_dir={out_dir}", f"--seed={seed}", "--overwrite=True"]
            if cfg.max_iters:
                cmd.append(f"--max_iters={cfg.max_iters}")
            cmd += train_args + extra  # the run's own setting last: it wins over train_args
            print(f"=== {name}" + (f" seed {seed}" if cfg.seeds > 1 else "")
                  + f": {' '.join(shlex.quote(c) for c in cmd[1:])}", flush=True)
            code = subprocess.run(cmd).returncode
            if code != 0:
                raise UserError(f"training {name} (seed {seed}) failed (exit code {code}); its output is above")
            done[name].append(out_dir)
    return list(done.items())


# ---------------------------------------------------------------------------------------
# one setting at a time (--ablate, --sweep): variants of one config, planned and checked
# before anything trains

def train_settings():
    """train_bio.py's settings {name: (default, meaning, *also)}, from its --help=json (a
    subprocess: no script imports another), so they follow its table as it changes."""
    r = subprocess.run([sys.executable, TRAIN_SCRIPT, "--help=json"], capture_output=True, text=True)
    try:
        if r.returncode != 0:
            raise ValueError((r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1])
        return settings_from_json(r.stdout)
    except (ValueError, SyntaxError, TypeError) as e:
        raise UserError(f"could not read the settings of train_bio.py --help=json: {e}") from None


def trained_settings(table, config_values, args):
    """The settings train_bio.py trains a config with under --key=value args: the defaults, the
    config file, the args (the last one wins), then what wigglegpt/compat.py derives from them
    (an original WiggleGPT config's model)."""
    values = {key: entry[0] for key, entry in table.items()}
    values.update(config_values)
    explicit = set(config_values)
    for arg in args:
        key, eq, text = arg[2:].partition("=")
        if key in table:  # train_bio.py names any other key in its own error
            default, _, *also = table[key]
            values[key] = parse_value(text, default, also) if eq else True
            explicit.add(key)
    derived, _ = compat.original_architecture(types.SimpleNamespace(**values), explicit)
    return {**values, **derived}


def listed(text, option, example):
    """The comma-separated items of an option; none empty, none twice."""
    items = split_values(text)
    if not text.strip():
        raise UserError(f"{option} is empty; give {example}")
    if not all(items):
        raise UserError(f"{option}={text} has an empty item; give {example}")
    twice = sorted({i for i in items if items.count(i) > 1})
    if twice:
        raise UserError(f"{option}={text} names {', '.join(twice)} twice; give each once")
    return items


def split_values(text):
    """V1,V2,... split at the commas outside brackets and quotes: (0.9,0.95),(0.9,0.99) is two values."""
    items, current, depth, quote = [], "", 0, None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{" or ch in ")]}":
            depth += 1 if ch in "([{" else -1
        elif ch == "," and depth == 0:
            items.append(current.strip())
            current = ""
            continue
        current += ch
    return items + [current.strip()]


def check_not_own(key, option):
    if key in OWN_SETTINGS:
        raise UserError(f"{option}: {key} is set by compare_bio.py itself for every run; use its own setting")


def check_known(key, table, option):
    if key not in table:
        raise UserError(f"{option}: unknown setting {key!r} of train_bio.py{closest(key, list(table))}")


def ablation_plan(config, text, train_args):
    """--ablate: the config as it is, then per named switch a run with only that switch flipped
    from the value the config trains with. Returns the plan, {name: what it changed} and None."""
    keys = listed(text, "--ablate", "boolean setting names, e.g. --ablate=use_bio_mlp,use_rmsnorm,use_rope")
    for key in keys:
        check_not_own(key, "--ablate")
    config_values, table = read_config_file(config), train_settings()
    for key in keys:
        check_known(key, table, "--ablate")
        if not isinstance(table[key][0], bool):
            raise UserError(f"--ablate flips True/False settings, and {key} is not one (its default is "
                            f"{table[key][0]!r}); try --sweep={key}=V1,V2,...")
    base = trained_settings(table, config_values, train_args)
    stem = os.path.splitext(os.path.basename(config))[0]
    runs = [(stem, [], "none (base)")]
    for key in keys:
        flipped = not base[key]
        runs.append((f"{stem}-{key}={flipped}", [f"--{key}={flipped}"], f"{key}: {base[key]!r} -> {flipped!r}"))
    return (*checked_plan(config, table, config_values, train_args, runs, keys), None)


def sweep_plan(config, spec, train_args):
    """--sweep=KEY=V1,V2,...: a run per value, the first the reference. Returns the plan,
    {name: what it changed} and (KEY, the values)."""
    key, eq, text = spec.partition("=")
    key = key.strip()
    if not eq or not key:
        raise UserError(f"--sweep takes KEY=V1,V2,..., e.g. --sweep=n_layer=2,4,8; got {spec!r}")
    texts = listed(text, f"--sweep={key}", f"values, e.g. --sweep={key}=V1,V2")
    if len(texts) < 2:
        raise UserError(f"--sweep={spec} has one value; give two or more (the first is the reference)")
    check_not_own(key, "--sweep")
    if any(arg[2:].partition("=")[0] == key for arg in train_args):
        raise UserError(f"--train_args sets {key}, which --sweep varies; leave it out of train_args")
    config_values, table = read_config_file(config), train_settings()
    check_known(key, table, "--sweep")
    default, _, *also = table[key]
    values = [check_type(key, parse_value(t, default, also), default, f"in --sweep={spec}", also) for t in texts]
    shown = [repr(v) for v in values]
    twice = sorted({v for v in shown if shown.count(v) > 1})
    if twice:
        raise UserError(f"--sweep={spec} gives {key}={', '.join(twice)} twice; give each value once")
    own = trained_settings(table, config_values, train_args)[key]
    stem = os.path.splitext(os.path.basename(config))[0]
    runs = [(f"{stem}-{key}=" + re.sub(r"[^\w.,=+()-]", "_", t),  # a folder name on every system
             [f"--{key}={v if isinstance(v, str) else repr(v)}"],  # read back by train_bio.py as this value
             f"{key}: {own!r} -> {v!r}" if repr(v) != repr(own) else f"{key}: {v!r} (as the config)")
            for t, v in zip(texts, values)]
    return (*checked_plan(config, table, config_values, train_args, runs, [key] * (len(runs) - 1)), (key, values))


def checked_plan(config, table, config_values, train_args, runs, keys):
    """Check that each run after the first trains with the first one's settings but for its key
    (what train_bio.py derives included), and say what every run derives alike; return
    ([(name, config, extra args)], {name: what it changed})."""
    check_unique([name for name, _, _ in runs], "give values that differ in letters or digits")
    trained = [trained_settings(table, config_values, train_args + extra) for _, extra, _ in runs]
    for (name, _, _), settings, key in zip(runs[1:], trained[1:], keys):
        differ = sorted(k for k in settings if settings[k] != trained[0][k])
        if differ != [key]:
            raise UserError(f"{name} would change {', '.join(differ)}, not {key} alone: train_bio.py derives the "
                            f"others from it (wigglegpt/compat.py); set them in {config} to change one at a time")
    alone = trained_settings(table, config_values, train_args)
    derived = [k for k in alone if k not in keys and trained[0][k] != alone[k]]
    if derived:
        print(f"note: every run trains with {', '.join(f'{k}={trained[0][k]!r}' for k in derived)}, which "
              f"train_bio.py derives once {keys[0]} is given (wigglegpt/compat.py); {config} alone has "
              + ", ".join(f"{k}={alone[k]!r}" for k in derived))
    return [(name, config, extra) for name, extra, _ in runs], {name: changed for name, _, changed in runs}


# ---------------------------------------------------------------------------------------
# statistics over seeds: mean, sample standard deviation, paired t confidence intervals

# ---------------------------------------------------------------------------------------
# report

def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def print_columns(header, cells, left=1):
    """A text table: the first left columns left-aligned (names), the others right-aligned."""
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    line = "  ".join(["{:<%d}" % w for w in widths[:left]] + ["{:>%d}" % w for w in widths[left:]])
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for c in cells:
        print(line.format(*c))


def print_table(rows):
    """One line per run; with --ablate or --sweep a second column says what the run changed."""
    changes = any(r.get("changed") for r in rows)
    header = ["run"] + ["changed"] * changes + ["params", "tokens", "iters", "final val", "best val", "tokens/s", "peak MB"]
    cells = [[r["name"] + ("" if r["status"] == "max_iters" else f" ({r['status']})")] + [r.get("changed") or "-"] * changes
             + [fmt(r["params"], ","), fmt(r["tokens"], ","), fmt(r["iters"], ","), fmt(r["final_val_loss"], ".4f"),
                fmt(r["best_val_loss"], ".4f"), fmt(r["tokens_per_sec"], ",.0f"), fmt(r["peak_mem_mb"], ",.1f")]
             for r in rows]
    print_columns(header, cells, left=1 + changes)
    budgets = {r["tokens"] for r in rows}
    if len(budgets) > 1:
        print("note: the runs saw different numbers of tokens; their losses do not compare like for like")


def plot_curves(rows, path):
    """Val loss against tokens seen (solid, dots at the evals), the train loss faintly behind it."""
    plt = plots.pyplot()

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
    plots.save(fig, path)


# the figures averaged over seeds: (row key, label, format)
SEED_METRICS = (("final_val_loss", "val loss", ".4f"), ("final_val_bpb", "val bpb", ".4f"),
                ("hellaswag_acc_norm", "HellaSwag acc_norm", ".4f"))


def by_seed(name, rows, key):
    """{seed: the rows' value of key} for the rows that have one."""
    values = {}
    for position, r in enumerate(rows):
        seed = r["seed"] if r["seed"] is not None else position
        if seed in values:
            raise UserError(f"{name} holds two runs with seed {seed}; each seed once per config")
        if r[key] is not None:
            values[seed] = r[key]
    return values


def seed_summary(groups):
    """Per config and figure: mean, sample std, n; and the paired difference of each other
    config to the first. groups: [(config name, [row per seed])]."""
    metrics = [m for m in SEED_METRICS if any(r[m[0]] is not None for _, rows in groups for r in rows)]
    summary = []
    for index, (name, rows) in enumerate(groups):
        entry = dict(name=name, seeds=len(rows), stats={}, paired={})
        for key, _, _ in metrics:
            values = by_seed(name, rows, key)
            if values:
                mean, sd = mean_std(list(values.values()))
                entry["stats"][key] = dict(mean=mean, sd=sd, n=len(values))
            if index:
                pair = paired_difference(by_seed(groups[0][0], groups[0][1], key), values)
                if pair is not None:
                    entry["paired"][key] = pair
        summary.append(entry)
    return metrics, summary


def print_seed_summary(groups):
    metrics, summary = seed_summary(groups)
    print()
    print("over seeds: mean +- sample standard deviation (n-1), n = runs with the figure")
    changed = [rows[0].get("changed") for _, rows in groups]
    changes = any(changed)
    header = ["config"] + ["changed"] * changes + ["seeds"] + [label for _, label, _ in metrics]
    cells = []
    for entry, change in zip(summary, changed):
        row = [entry["name"]] + [change or "-"] * changes + [str(entry["seeds"])]
        for key, _, spec in metrics:
            st = entry["stats"].get(key)
            row.append("-" if st is None else f"{st['mean']:{spec}} +- {fmt(st['sd'], spec)} (n={st['n']})")
        cells.append(row)
    print_columns(header, cells, left=1 + changes)
    if len(summary) < 2:
        return summary
    base = summary[0]["name"]
    print()
    print(f"paired differences to {base} (this config - {base}, seed by seed; 95% CI of the mean "
          "difference, Student t with n-1 degrees of freedom):")
    for entry in summary[1:]:
        for key, label, spec in metrics:
            pair = entry["paired"].get(key)
            if pair is None:
                continue
            ci = (f"95% CI [{pair['low']:+{spec}}, {pair['high']:+{spec}}], df={pair['df']}"
                  if pair["low"] is not None else "no CI from one pair")
            seeds = ", ".join(f"{s}: {d:+{spec}}" for s, d in zip(pair["seeds"], pair["diffs"]))
            print(f"  {entry['name']} {label}: mean {pair['mean']:+{spec}}, {ci}; per seed {seeds}")
    return summary


def band(curves):
    """(x, mean, min, max) over seeds at the x values every seed's curve has."""
    curves = [dict(c) for c in curves if c]
    if not curves:
        return None
    xs = sorted(set.intersection(*(set(c) for c in curves)))
    if not xs:
        return None
    values = [[c[x] for c in curves] for x in xs]
    return xs, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def plot_bands(groups, path):
    """Each config's mean over seeds (line) with the min-max over seeds (band): val loss, and
    val bpb and HellaSwag acc_norm when the runs recorded them; last, the final val loss of
    every seed, joined across configs."""
    plt = plots.pyplot()

    panels = [("val", "val loss")]
    panels += [(key, label) for key, label in (("val_bpb", "val bits per byte"), ("hellaswag", "HellaSwag acc_norm"))
               if any(r["curves"][key] for _, rows in groups for r in rows)]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(5.5 * len(panels) + 4, 4.5), squeeze=False,
                             gridspec_kw={"width_ratios": [3] * len(panels) + [2]})
    for ax, (key, label) in zip(axes[0], panels):
        for i, (name, rows) in enumerate(groups):
            b = band([r["curves"][key] for r in rows])
            if b is None:
                continue
            xs, mean, low, high = b
            color = f"C{i % 10}"
            ax.fill_between(xs, low, high, color=color, alpha=0.2, lw=0)
            ax.plot(xs, mean, color=color, lw=1.8, marker="o", ms=3, label=f"{name} (mean of {len(rows)} seeds)")
        ax.set_xlabel("tokens seen")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_title("mean over seeds; band: min to max over seeds")
    # the final val losses seed by seed, one line per seed across the configs: the paired view
    ax = axes[0][-1]
    finals = [by_seed(name, rows, "final_val_loss") for name, rows in groups]
    for seed in sorted(set().union(*finals)):
        xs = [i for i, f in enumerate(finals) if seed in f]
        ax.plot(xs, [finals[i][seed] for i in xs], color="gray", alpha=0.6, lw=1, marker="o", ms=4)
    for i, f in enumerate(finals):
        if f:
            ax.plot([i - 0.15, i + 0.15], [sum(f.values()) / len(f)] * 2, color=f"C{i % 10}", lw=3)
    slanted = dict(rotation=25, ha="right") if max(len(name) for name, _ in groups) > 12 else {}  # long names
    ax.set_xticks(range(len(groups)), [name for name, _ in groups], fontsize=8, **slanted)
    ax.set_xlim(-0.5, len(groups) - 0.5)
    ax.set_ylabel("final val loss")
    ax.set_title("final val loss per seed (bar: mean)")
    ax.grid(alpha=0.3)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.tight_layout()
    plots.save(fig, path, dpi=80)


def figure_sweep(key, values, groups):
    """The final val loss against the swept value (groups: [(name, rows)], one per value): the
    mean over seeds with +- one sample sd, each seed a grey dot, a tick at each value. Numbers go
    on a numeric axis (logarithmic when they span 100x or more), other values one place each, in
    the sweep's order. Returns the Figure."""
    plt = plots.pyplot()

    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    xs = [float(v) for v in values] if numeric else list(range(len(values)))
    _, summary = seed_summary(groups)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = []  # (x, mean, sd) of the values whose runs have a final val loss
    for x, (name, rows), entry in zip(xs, groups, summary):
        finals = by_seed(name, rows, "final_val_loss")
        ax.scatter([x] * len(finals), list(finals.values()), color="gray", alpha=0.6, s=14, zorder=3)
        st = entry["stats"].get("final_val_loss")
        if st is not None:
            points.append((x, st["mean"], st["sd"] or 0.0))
    if points:
        px, mean, sd = zip(*points)
        seeds = max(len(rows) for _, rows in groups)
        ax.errorbar(px, mean, yerr=sd, fmt="o-" if numeric else "o", color="C0", capsize=5, lw=1.8, zorder=4,
                    label=f"mean of {seeds} seeds, bars: +- 1 sample sd" if seeds > 1 else "one seed per value")
        ax.legend(fontsize=8)
    if numeric and min(xs) > 0 and max(xs) >= 100 * min(xs):
        ax.set_xscale("log")
    # a tick at each value tried (n_layer 2, 4, 8: no tick at 2.5)
    ax.set_xticks(xs, [f"{v:g}" if numeric else v if isinstance(v, str) else repr(v) for v in values])
    ax.minorticks_off()
    if not numeric:
        ax.set_xlim(-0.5, len(values) - 0.5)
    ax.set_xlabel(key)
    ax.set_ylabel("final val loss")
    ax.set_title(f"final val loss against {key}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def sweep_plot_path(plot):
    """Where the sweep figure goes beside the loss curves: FILE.png -> FILE-sweep.png."""
    root, ext = os.path.splitext(plot)
    return f"{root}-sweep{ext or '.png'}"


def write_plot(path, draw):
    """draw(path), a failed write (no permission, a full disk) as one error line."""
    try:
        draw(path)
    except OSError as e:
        raise write_error(path, e, "run again") from None
    print(f"wrote {path}")


# ---------------------------------------------------------------------------------------
# --chart: the original WiggleGPT's loss chart (its generate_pretrain_loss_chart.py and
# generate_finetune_loss_chart.py, in one figure)

def is_metrics_source(path):
    """A run folder or a .jsonl file is read as metrics.jsonl; any other file as a console log."""
    return os.path.isdir(path) or path.lower().endswith(".jsonl")


def chart_name(path):
    return run_name(path) if is_metrics_source(path) else os.path.splitext(os.path.basename(path))[0]


def eval_curve(path):
    """[(step, train loss, val loss)] of a run: the eval records of its metrics.jsonl (the final
    timeline, as the table reads it) or the eval lines of a plain-text log (wigglegpt/losslog.py)."""
    if not is_metrics_source(path):
        return losslog.read_loss_log(path)
    evals = timeline(read_metrics(path))["eval"]
    if not evals:
        raise UserError(f"{metrics_path(path)} has no eval records yet: nothing to chart")
    return [(e["iter"], e["train_loss"], e["val_loss"]) for e in evals]


def curve_summary(points):
    """Evals, last step, final val loss, and the best val loss with its step (None if none is finite)."""
    finite_points = [p for p in points if finite([p[2]])]
    best = min(finite_points, key=lambda p: p[2]) if finite_points else None
    return dict(evals=len(points), last_step=points[-1][0], final_val=points[-1][2],
                best_val=best[2] if best else None, best_step=best[0] if best else None)


def print_chart_table(curves):
    cells = []
    for name, points in curves:
        s = curve_summary(points)
        cells.append([name, f"{s['evals']:,}", f"{s['last_step']:,}", fmt(s["final_val"], ".4f"),
                      fmt(s["best_val"], ".4f"), fmt(s["best_step"], ",")])
    print_columns(["run", "evals", "last step", "final val", "best val", "best at step"], cells)


def figure_loss_chart(curves, reference=3.12, zoom=0.1):
    """curves [(name, [(step, train loss, val loss)])] in the original's chart layout: the eval
    losses on a linear scale (best val loss and final point marked, the steps after the best
    shaded: the fine-tune chart), on a log scale (the pretrain chart's left panel), and the
    final zoom share of the iterations (its right panel); the reference line on each. One run
    is drawn in the original's colours (train blue, val red); several in one colour each (train
    dashed). Returns the Figure."""
    plt = plots.pyplot()

    fig, (linear, logscale, final) = plt.subplots(1, 3, figsize=(20, 5.5))
    first = min(points[0][0] for _, points in curves)
    last = max(points[-1][0] for _, points in curves)
    start = last - zoom * (last - first)
    single = len(curves) == 1
    zoomed = []  # the losses the final panel shows, for its y range
    for i, (name, points) in enumerate(curves):
        steps, train, val = (list(column) for column in zip(*points))
        s = curve_summary(points)
        train_colour, val_colour = ("tab:blue", "tab:red") if single else (f"C{i % 10}", f"C{i % 10}")
        prefix = "" if single else f"{name}: "
        best = f"best {s['best_val']:.4f} at step {s['best_step']:,}, " if s["best_val"] is not None else ""
        marker = dict(marker="o", ms=3) if len(points) <= 60 else {}
        for ax in (linear, logscale, final):
            ax.plot(steps, train, color=train_colour, lw=1.8, alpha=0.8, ls="-" if single else "--",
                    label=f"{prefix}train loss", **marker)
            ax.plot(steps, val, color=val_colour, lw=1.8, alpha=0.8, label=f"{prefix}val loss ({best}final "
                    f"{fmt(s['final_val'], '.4f')})", **marker)
            ax.scatter([steps[-1]], [val[-1]], marker="s", s=80, color="orange", edgecolors="darkorange", zorder=5)
            if s["best_val"] is not None:
                ax.scatter([s["best_step"]], [s["best_val"]], s=110, color="green", edgecolors="darkgreen", zorder=5)
        if single and s["best_val"] is not None:
            arrow = dict(arrowstyle="->", color="darkgreen")
            linear.annotate(f"best: {s['best_val']:.4f}\n(step {s['best_step']:,})", (s["best_step"], s["best_val"]),
                            xytext=(-60, 40), textcoords="offset points", arrowprops=arrow, fontweight="bold")
            if s["best_step"] < steps[-1]:
                linear.axvspan(s["best_step"], steps[-1], color="red", alpha=0.08, label="after the best val loss")
        zoomed += [loss for step, t, v in points if step >= start for loss in (t, v)]
    if reference > 0:
        for ax in (linear, logscale, final):
            ax.axhline(reference, color="purple", ls="--", lw=2, alpha=0.5, label=f"reference {reference:g} "
                       "(GPT-2 124M on OpenWebText: ~3.12)")
    logscale.set_yscale("log")
    zoomed = finite(zoomed + ([reference] if reference > 0 else []))
    if zoomed:
        pad = 0.1 * (max(zoomed) - min(zoomed)) or 0.05
        final.set_ylim(min(zoomed) - pad, max(zoomed) + pad)
    final.set_xlim(start, last + 0.02 * (last - first or 1))
    if single and finite([curves[0][1][-1][2]]):
        end_step, _, end_val = curves[0][1][-1]
        above = end_val < sum(final.get_ylim()) / 2  # the label on the emptier side of the point
        final.annotate(f"final: {end_val:.4f}", (end_step, end_val), xytext=(-110, 35 if above else -45),
                       textcoords="offset points", arrowprops=dict(arrowstyle="->", color="darkgreen"),
                       fontweight="bold")
    titles = ((linear, "eval losses (best: green dot, final: orange square)"), (logscale, "full curve, log scale"),
              (final, f"final region: the last {zoom * 100:g}% of the iterations (step {start:,.0f} on)"))
    for ax, title in titles:
        ax.set_title(title, fontweight="bold")
        ax.set_xlabel("training iterations")
        ax.set_ylabel("loss (log scale)" if ax is logscale else "loss")
        ax.grid(alpha=0.3)
    linear.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def save_chart(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    plots.save(fig, path)


def chart(paths, cfg):
    """--chart: read every run or log, print its numbers, draw the chart."""
    if cfg.run or cfg.plot:
        raise UserError("--chart draws finished runs or console logs on their own: drop --run and --plot")
    if cfg.reference_loss < 0:
        raise UserError(f"reference_loss must be 0 (no line) or positive, got {cfg.reference_loss}")
    if not 0 < cfg.zoom <= 1:
        raise UserError(f"zoom is the final share of the iterations to show, in (0, 1]; got {cfg.zoom}")
    check_plot_path(cfg.chart, "--chart")
    names = [chart_name(p) for p in paths]
    if len(set(names)) < len(names):
        names = [os.path.normpath(p) for p in paths]
    curves = [(name, eval_curve(p)) for name, p in zip(names, paths)]
    print_chart_table(curves)
    write_plot(cfg.chart, lambda path: save_chart(figure_loss_chart(curves, cfg.reference_loss, cfg.zoom), path))
    return curves


def check_plot_path(path, option="--plot"):
    """Refuse, before any run is read or trained, a plot path that cannot be written: a folder
    of that name, or a file where one of its folders should be."""
    if os.path.isdir(path):
        raise UserError(f"{option}={path} is a folder; give a .png file"
                        + (" (or 'none')" if option == "--plot" else ""))
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):  # the folders the plot would make
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise UserError(f"{option}={path}: {folder} is a file, not a folder; choose another {option}"
                        + (" (or --out_root)" if option == "--plot" else ""))


def variant_option(cfg, paths):
    """'ablate' or 'sweep' when one is given (checked: with --run, one config, not both, no
    --rope_variants), else None."""
    given = [option for option in ("ablate", "sweep") if option in cfg.explicit]  # --ablate= too: an error later
    if not given:
        return None
    option = f"--{given[0]}"
    if len(given) > 1:
        raise UserError("--ablate and --sweep together: one kind of variant at a time (run two comparisons)")
    if cfg.rope_variants:
        raise UserError(f"{option} and --rope_variants together: one kind of variant at a time (run two comparisons)")
    if not cfg.run:
        raise UserError(f"{option} trains variants of a config: add --run and give one config file")
    if len(paths) != 1:
        raise UserError(f"{option} varies one config; give one config file, not {len(paths)}")
    return given[0]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    paths = [a for a in argv if not a.startswith("-")]  # run folders, metrics files or (--run) configs
    cfg = load_settings(SETTINGS, [a for a in argv if a.startswith("-")],
                        description=__doc__.strip().splitlines()[0], allow_config_file=False)
    variants = variant_option(cfg, paths)
    if not paths:
        raise UserError("give the runs to compare (folders or metrics.jsonl files; with --chart also console logs), "
                        "or --run and config files")
    if cfg.max_iters < 0:
        raise UserError(f"max_iters must not be negative, got {cfg.max_iters}")
    if cfg.seeds < 1:
        raise UserError(f"seeds must be at least 1, got {cfg.seeds}")
    if cfg.chart:
        return chart(paths, cfg)
    plot = cfg.plot or os.path.join(cfg.out_root, "compare.png")
    drawing = plot.lower() != "none"
    if drawing:
        check_plot_path(plot)
        if variants == "sweep":
            check_plot_path(sweep_plot_path(plot))
    changed, swept = {}, None  # {run name: what it changed}, (key, values) of a sweep
    if cfg.run:
        train_args = checked_train_args(cfg.train_args)
        if variants:
            make_plan = ablation_plan if variants == "ablate" else sweep_plan
            plan, changed, swept = make_plan(paths[0], getattr(cfg, variants), train_args)
        else:
            plan = planned_runs(paths, cfg.rope_variants, train_args)
        groups = train_runs(plan, cfg, train_args)
    else:
        if cfg.rope_variants or cfg.max_iters or cfg.train_args or cfg.seeds != 1:
            raise UserError("--rope_variants, --max_iters, --train_args and --seeds only apply with --run")
        names = [run_name(p) for p in paths]
        if len(set(names)) < len(names):  # e.g. a/out and b/out: the paths tell them apart
            names = [os.path.normpath(p) for p in paths]
        groups = [(name, seed_folders(p) or [p]) for name, p in zip(names, paths)]
    multi = any(len(folders) > 1 for _, folders in groups)
    grouped_rows = [(name, [summarize(f"{name}/{os.path.basename(os.path.normpath(f))}" if len(folders) > 1 else name,
                                      read_metrics(f)) for f in folders]) for name, folders in groups]
    rows = [r for _, group_rows in grouped_rows for r in group_rows]
    for name, group_rows in grouped_rows:
        for r in group_rows:
            r["changed"] = changed.get(name)  # what the run of --ablate or --sweep changed
    if len(rows) < 2:
        raise UserError("a comparison needs two or more runs")
    print()
    print_table(rows)
    if multi:
        print_seed_summary(grouped_rows)
    if drawing:
        write_plot(plot, lambda path: plot_bands(grouped_rows, path) if multi else plot_curves(rows, path))
        if swept:
            write_plot(sweep_plot_path(plot), lambda path: save_chart(figure_sweep(*swept, grouped_rows), path))
    return rows


if __name__ == "__main__":
    run_main(main)
