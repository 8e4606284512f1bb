"""
What did the oscillating neurons learn? Statistics of omega, phi and baseline in a checkpoint.

    python analyze_bio.py --ckpt=out-shakespeare-bio/ckpt.pt
    python analyze_bio.py --ckpt=ckpt_pretrain.pt --compare=ckpt_finetune.pt --plots=plots

Reads only the state dict and config (this project's checkpoints or the original WiggleGPT
files) and prints the statistics overall and per layer, next to their initial values;
--compare adds the stability table between two checkpoints of one shape, --plots writes the
figures. What each figure means: README.md, "Research tools".
"""

import math
import os

import numpy as np
import torch

from model_bio import OscillateFunction
from wigglegpt import hub
from wigglegpt.checkpoint import CheckpointError, clean_state_dict, is_original_format, load_checkpoint, model_config
from wigglegpt.common import UserError, run_main, write_error
from wigglegpt.loader import REVISION_MEANING
from wigglegpt.settings import load_settings

SETTINGS = {
    "ckpt": ("", "checkpoint to analyze (this project's format or the original WiggleGPT one; hf://OWNER/REPO/FILE "
                 "for one on the Hub)"),
    "revision": ("", REVISION_MEANING),
    "compare": ("", "a second checkpoint of the same shape: print the stability table from ckpt to it"),
    "plots": ("", "folder for PNG histograms and activation curves (default: no plots)"),
    "seed": (0, "random seed for the random neurons drawn in the activation-curve plot"),
}

# (mean, std) at init, as model_bio.GPT.init_weights sets them
INIT = {"omega": (1.0, 0.1), "phi": (0.0, 0.1), "baseline": (0.0, 0.0), "gate_weight": (1.0, 0.0),
        "gate_bias": (0.0, 0.0)}
ACTIVE_OMEGA = 0.1  # |omega| above this: the neuron oscillates; below: close to linear
PHASE_BINS = 36  # coverage of [-pi, pi) is counted in 36 bins of 10 degrees
SHIFTS = (0.1, 0.5)  # per-neuron change thresholds of the stability table
NEAR_INIT = 0.2  # |omega - 1| below this: the neuron's frequency stayed near its init
SCATTER_POINTS = 20_000  # scatter plots draw at most this many neurons (a seeded sample)
# where each parameter sits under transformer.h.{i}.mlp. in the state dict
STATE_NAMES = {"omega": "activation.omega", "phi": "activation.phi", "baseline": "activation.baseline",
               "gate_weight": "gate_weight", "gate_bias": "gate_bias"}
PARAMS = tuple(STATE_NAMES)


# ---------------------------------------------------------------------------------------
# reading the neurons out of a checkpoint

def load_neurons(path, revision=""):
    """The oscillating parameters of a checkpoint, per layer, as float64 numpy arrays.

    Returns dict(path, config, info, layers) with layers a list of
    {"omega", "phi", "baseline"[, "gate_weight", "gate_bias"]} per transformer block.
    """
    if hub.is_hub_name(path):
        path = hub.resolve(path, revision)
    ckpt = load_checkpoint(path)
    config = model_config(ckpt, path)
    state = clean_state_dict(ckpt["model"])
    names = dict(STATE_NAMES)
    if config.use_sparse_gate and config.sparse_gate_kind == "event_layer":
        # v2: the MLP's neurons are `oscillating`; the second set inside its gate is not read
        names.update(omega="oscillating.omega", phi="oscillating.phi", baseline="oscillating.baseline")
    layers = []
    for i in range(config.n_layer):
        prefix = f"transformer.h.{i}.mlp."
        layer = {k: state[prefix + v].detach().double().numpy().ravel()
                 for k, v in names.items() if prefix + v in state}
        if "omega" not in layer:
            if i == 0:
                raise UserError(f"{path} has no oscillating neurons (use_bio_mlp={config.use_bio_mlp}: "
                                f"its MLPs use GELU); nothing to analyze")
            raise CheckpointError(f"{path}: layer {i} has no {prefix}activation.omega")
        missing = [k for k in ("phi", "baseline") if k not in layer]
        if missing:
            raise CheckpointError(f"{path}: layer {i} has omega but no {', '.join(missing)}")
        layers.append(layer)
    return dict(path=path, config=config, info=checkpoint_info(ckpt), layers=layers)


def checkpoint_info(ckpt):
    """Format, iteration and best val loss, wherever the checkpoint keeps them."""
    train = ckpt.get("train_config") if isinstance(ckpt.get("train_config"), dict) else {}
    iter_num = ckpt.get("iter_num", train.get("iter_num"))
    best = ckpt.get("best_val_loss", train.get("best_val_loss"))
    if isinstance(best, torch.Tensor):
        best = best.item()
    return dict(format="original WiggleGPT" if is_original_format(ckpt) else "wigglegpt-bio",
                iter_num=iter_num, best_val_loss=best)


def all_layers(layers, name):
    return np.concatenate([layer[name] for layer in layers])


# ---------------------------------------------------------------------------------------
# statistics (plain dicts of floats, so tests can check the numbers)

def basic_stats(values):
    v = np.asarray(values, dtype=np.float64)
    return dict(n=int(v.size), mean=float(v.mean()), std=float(v.std()), min=float(v.min()), max=float(v.max()))


def wrap_phase(phi):
    """phi wrapped into [-pi, pi): the same sine, one period."""
    return np.mod(np.asarray(phi, dtype=np.float64) + math.pi, 2 * math.pi) - math.pi


def near_init_share(omega):
    """Share of neurons with |omega - init| < 0.2 (init 1.0): frequencies training left alone."""
    return float((np.abs(np.asarray(omega, dtype=np.float64) - INIT["omega"][0]) < NEAR_INIT).mean())


def omega_stats(omega):
    s = basic_stats(omega)
    a = np.abs(np.asarray(omega, dtype=np.float64))
    s["active_share"] = float((a > ACTIVE_OMEGA).mean())  # |omega| > 0.1
    s["linear_share"] = float((a < ACTIVE_OMEGA).mean())  # |omega| < 0.1
    s["near_init_share"] = near_init_share(omega)
    return s


def phi_stats(phi):
    """Basic statistics of the raw phi, its range, and the coverage of [-pi, pi) after wrapping."""
    s = basic_stats(phi)
    s["range"] = s["max"] - s["min"]
    bins = np.floor((wrap_phase(phi) + math.pi) / (2 * math.pi) * PHASE_BINS).astype(int)
    bins = np.clip(bins, 0, PHASE_BINS - 1)  # float rounding at exactly +pi
    s["coverage"] = len(np.unique(bins)) / PHASE_BINS
    return s


def group_stats(layer):
    """Every statistic of one group of neurons (a layer, or all layers concatenated)."""
    s = dict(omega=omega_stats(layer["omega"]), phi=phi_stats(layer["phi"]),
             baseline=basic_stats(layer["baseline"]))
    for name in ("gate_weight", "gate_bias"):
        if name in layer:
            s[name] = basic_stats(layer[name])
    return s


def merged(layers):
    return {name: all_layers(layers, name) for name in PARAMS if name in layers[0]}


def analyze(layers):
    """{"overall": group_stats of all neurons, "layers": [group_stats per layer]}."""
    return dict(overall=group_stats(merged(layers)), layers=[group_stats(layer) for layer in layers])


def check_same_shape(a, b):
    """Two neuron sets can be compared neuron by neuron only if every layer has the same size."""
    sa = [layer["omega"].size for layer in a["layers"]]
    sb = [layer["omega"].size for layer in b["layers"]]
    if sa != sb:
        def shape(s):
            return f"{len(s)} layers x {s[0]} neurons" if len(set(s)) == 1 else f"layer sizes {s}"
        raise UserError(f"cannot compare checkpoints of different shapes: {a['path']} has {shape(sa)}, "
                        f"{b['path']} has {shape(sb)}")


def shift_stats(before, after):
    """The stability numbers for one group of neurons: before, after, and what moved."""
    s = {}
    for name, stats in (("omega", omega_stats), ("phi", phi_stats)):
        b, a = stats(before[name]), stats(after[name])
        delta = np.abs(after[name] - before[name])
        s[name] = dict(before=b, after=a, change={k: a[k] - b[k] for k in ("mean", "std", "min", "max")},
                       mean_abs_change=float(delta.mean()), max_abs_change=float(delta.max()),
                       moved={t: float((delta > t).mean()) for t in SHIFTS})
    s["linear_before"] = s["omega"]["before"]["linear_share"]
    s["linear_after"] = s["omega"]["after"]["linear_share"]
    return s


def compare(a_layers, b_layers):
    """{"overall": shift_stats of all neurons, "layers": [shift_stats per layer]}."""
    return dict(overall=shift_stats(merged(a_layers), merged(b_layers)),
                layers=[shift_stats(x, y) for x, y in zip(a_layers, b_layers)])


# ---------------------------------------------------------------------------------------
# printing

def row(label, values):
    """A table row: floats to 4 decimals, strings (shares, '-') as given, 10 wide each."""
    return f"  {label:<12}" + "".join(f"{v:>10.4f}" if isinstance(v, float) else f"{v:>10}" for v in values)


def header(title, columns):
    return f"{title:<14}" + "".join(f"{c:>10}" for c in columns)


def print_card(neurons, stats):
    cfg, info, layers = neurons["config"], neurons["info"], neurons["layers"]
    n_total = sum(layer["omega"].size for layer in layers)
    extra = ""
    if info["iter_num"] is not None:
        extra += f", iter {info['iter_num']}"
    if info["best_val_loss"] is not None:
        extra += f", best val loss {float(info['best_val_loss']):.4f}"
    print(f"checkpoint {neurons['path']} ({info['format']} format{extra})")
    print(f"{cfg.n_layer} layers x {layers[0]['omega'].size} oscillating neurons = {n_total} neurons "
          f"(n_embd {cfg.n_embd}, sparse gate {'on' if 'gate_weight' in layers[0] else 'off'})")
    groups = [("all layers", stats["overall"])] + [(f"layer {i}", s) for i, s in enumerate(stats["layers"])]

    print()
    print(header("omega", ["mean", "std", "min", "max", "active"]))
    print(row("init", [INIT["omega"][0], INIT["omega"][1], "-", "-", "-"]))
    for label, s in groups:
        o = s["omega"]
        print(row(label, [o["mean"], o["std"], o["min"], o["max"], f"{o['active_share']:.1%}"]))
    print(f"  active: share of neurons with |omega| > {ACTIVE_OMEGA} (the others are close to linear)")
    print(f"  near init: {stats['overall']['omega']['near_init_share']:.2%} of neurons have |omega - "
          f"{INIT['omega'][0]:g}| < {NEAR_INIT} (per layer: "
          + ", ".join(f"{s['omega']['near_init_share']:.1%}" for s in stats["layers"]) + ")")

    print()
    print(header("phi", ["mean", "std", "min", "max", "range", "coverage"]))
    print(row("init", [INIT["phi"][0], INIT["phi"][1], "-", "-", "-", "-"]))
    for label, s in groups:
        p = s["phi"]
        print(row(label, [p["mean"], p["std"], p["min"], p["max"], p["range"], f"{p['coverage']:.1%}"]))
    print(f"  coverage: share of the {PHASE_BINS} equal bins of [-pi, pi) ({360 // PHASE_BINS} degrees each) "
          f"holding at least one neuron, after wrapping phi into [-pi, pi)")

    for name in ("baseline", "gate_weight", "gate_bias"):
        if name not in stats["overall"]:
            continue
        print()
        print(header(name, ["mean", "std", "min", "max"]))
        print(row("init", [*INIT[name], "-", "-"]))
        for label, s in groups:
            b = s[name]
            print(row(label, [b["mean"], b["std"], b["min"], b["max"]]))


def print_stability(a, b, cmp):
    print()
    print(f"stability: {a['path']} -> {b['path']}")
    o = cmp["overall"]
    print(header("", ["before", "after", "change"]))
    for name, label in (("omega", "omega"), ("phi", "phi")):
        for stat in ("mean", "std", "min", "max"):
            s = o[name]
            print(row(f"{label} {stat}", [f"{s['before'][stat]:.4f}", f"{s['after'][stat]:.4f}",
                                          f"{s['change'][stat]:+.4f}"]))
    om, ph = o["omega"], o["phi"]
    print(f"  mean |omega change| {om['mean_abs_change']:.4f}, max {om['max_abs_change']:.4f}; "
          f"mean |phi change| {ph['mean_abs_change']:.4f}, max {ph['max_abs_change']:.4f}")
    for t in SHIFTS:
        print(f"  neurons whose omega moved > {t}: {om['moved'][t]:.2%}; phi moved > {t}: {ph['moved'][t]:.2%}")
    print(f"  linearized neurons (|omega| < {ACTIVE_OMEGA}): {o['linear_before']:.2%} before, "
          f"{o['linear_after']:.2%} after")

    for name in ("omega", "phi"):
        cols = ["mean bef", "mean aft", "std bef", "std aft", "mean|d|", "max|d|", "d>0.1", "d>0.5"]
        print()
        print(header(f"{name} by layer", cols + (["lin bef", "lin aft"] if name == "omega" else [])))
        for i, s in enumerate(cmp["layers"]):
            p = s[name]
            values = [p["before"]["mean"], p["after"]["mean"], p["before"]["std"], p["after"]["std"],
                      p["mean_abs_change"], p["max_abs_change"], f"{p['moved'][0.1]:.1%}", f"{p['moved'][0.5]:.1%}"]
            if name == "omega":
                values += [f"{s['linear_before']:.1%}", f"{s['linear_after']:.1%}"]
            print(row(f"layer {i}", values))
    print("  (bef/aft: before/after; |d|: absolute per-neuron change; d>t: share of neurons that moved\n"
          "   more than t; lin: share of linearized neurons, |omega| < 0.1)")


# ---------------------------------------------------------------------------------------
# plots

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_histograms(sets, path):
    """Overall omega and phi histograms; sets is [(label, layers)], one overlaid colour each."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, name in zip(axes, ("omega", "phi")):
        values = [all_layers(layers, name) for _, layers in sets]
        edges = np.histogram_bin_edges(np.concatenate(values), bins=80)
        for (label, _), v in zip(sets, values):
            ax.hist(v, bins=edges, alpha=0.55 if len(sets) > 1 else 0.85, label=f"{label} ({v.size} neurons)")
        mean, std = INIT[name]
        ax.axvspan(mean - std, mean + std, color="gray", alpha=0.15, label=f"init mean +- std ({mean:g} +- {std:g})")
        if name == "omega":
            ax.axvspan(-ACTIVE_OMEGA, ACTIVE_OMEGA, color="red", alpha=0.15, label="|omega| < 0.1 (linear)")
        else:
            ax.axvline(-math.pi, color="k", ls=":", lw=1, label="-pi, pi")
            ax.axvline(math.pi, color="k", ls=":", lw=1)
        ax.set_title(f"{name}, all layers")
        ax.set_xlabel(name)
        ax.set_ylabel("neurons")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.35)  # headroom: the legend sits above the bars
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_layer_histograms(sets, path):
    """One row per parameter (omega, phi), one column per layer, as a grid of small histograms
    (wrapped in rows of at most 6 layers)."""
    plt = _pyplot()
    n_layer = len(sets[0][1])
    per_row = min(6, n_layer)
    row_blocks = math.ceil(n_layer / per_row)
    fig, axes = plt.subplots(2 * row_blocks, per_row, figsize=(2.6 * per_row, 2.2 * 2 * row_blocks),
                             squeeze=False)
    for p, name in enumerate(("omega", "phi")):
        edges = np.histogram_bin_edges(np.concatenate([all_layers(layers, name) for _, layers in sets]), bins=50)
        for i in range(row_blocks * per_row):
            ax = axes[2 * (i // per_row) + p, i % per_row]
            if i >= n_layer:
                ax.axis("off")
                continue
            for label, layers in sets:
                ax.hist(layers[i][name], bins=edges, alpha=0.55 if len(sets) > 1 else 0.85, label=label)
            ax.set_title(f"layer {i}: {name}", fontsize=9)
            ax.tick_params(labelsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8, ncol=len(sets))
    fig.suptitle("omega and phi per layer", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pick_neurons(layers, n_random=2, seed=0):
    """(layer, index) of the neurons with the lowest, median and highest omega, plus random ones."""
    omega = all_layers(layers, "omega")
    offsets = np.cumsum([0] + [layer["omega"].size for layer in layers])
    order = np.argsort(omega, kind="stable")
    chosen = [("lowest omega", order[0]), ("median omega", order[len(order) // 2]), ("highest omega", order[-1])]
    rng = np.random.default_rng(seed)
    for flat in rng.choice(len(omega), size=min(n_random, len(omega)), replace=False):
        chosen.append(("random", flat))
    picks = []
    for why, flat in chosen:
        layer = int(np.searchsorted(offsets, flat, side="right") - 1)
        picks.append((why, layer, int(flat - offsets[layer])))
    return picks


def activation_curve(layer, index, x):
    """The project's activation (model_bio.OscillateFunction) for one neuron over x."""
    params = [torch.tensor(layer[k][index:index + 1]) for k in ("omega", "phi", "baseline")]
    with torch.no_grad():
        return OscillateFunction.apply(torch.as_tensor(x)[:, None], *params)[:, 0].numpy()


def plot_activations(layers, path, seed=0):
    """f(x) on [-4, 4] for a few neurons, with GELU for reference."""
    plt = _pyplot()
    x = np.linspace(-4, 4, 801)
    fig, ax = plt.subplots(figsize=(10, 6.5))
    ax.plot(x, torch.nn.functional.gelu(torch.tensor(x)).numpy(), color="k", lw=2.5, ls="--", label="GELU")
    lo, hi = 0.0, 0.0
    for why, layer, index in pick_neurons(layers, seed=seed):
        p = layers[layer]
        y = activation_curve(p, index, x)
        lo, hi = min(lo, y.min()), max(hi, y.max())
        ax.plot(x, y, lw=1.5, label=f"{why}: layer {layer} #{index}, omega={p['omega'][index]:.2f}, "
                                    f"phi={p['phi'][index]:.2f}, baseline={p['baseline'][index]:.2f}")
    ax.set_ylim(lo - 0.3, max(hi + 0.3, 2.0))  # the neurons fill the plot; GELU leaves it at the top
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_xlabel("x (the neuron's input)")
    ax.set_ylabel("f(x) = sin(omega x + phi) tanh(x) + baseline")
    ax.set_title("learned activation curves vs GELU")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sample_index(n, seed=0):
    """Indices of at most SCATTER_POINTS of n neurons (all when fewer): scatters stay readable and small."""
    if n <= SCATTER_POINTS:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=SCATTER_POINTS, replace=False))


def plot_omega_phi_scatter(sets, path, seed=0):
    """omega against phi, one dot per neuron (one colour per checkpoint): which phases go with which frequencies."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 6))
    for label, layers in sets:
        omega, phi = all_layers(layers, "omega"), all_layers(layers, "phi")
        idx = sample_index(omega.size, seed)
        ax.scatter(omega[idx], phi[idx], s=3, alpha=0.3, label=f"{label} ({idx.size} of {omega.size} neurons)")
    ax.scatter([INIT["omega"][0]], [INIT["phi"][0]], marker="x", color="k", s=60, label="init mean")
    ax.set_xlabel("omega (frequency)")
    ax.set_ylabel("phi (phase)")
    ax.set_title("omega vs phi, all layers")
    ax.legend(fontsize=8, markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_omega_deviation(sets, path):
    """Histogram of omega - 1 (the distance from init), with the +-0.2 band and its share."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    deviations = [all_layers(layers, "omega") - INIT["omega"][0] for _, layers in sets]
    edges = np.histogram_bin_edges(np.concatenate(deviations), bins=80)
    for (label, layers), dev in zip(sets, deviations):
        share = near_init_share(all_layers(layers, "omega"))
        ax.hist(dev, bins=edges, alpha=0.55 if len(sets) > 1 else 0.85,
                label=f"{label}: {share:.1%} within +-{NEAR_INIT}")
    ax.axvspan(-NEAR_INIT, NEAR_INIT, color="gray", alpha=0.2, label=f"|omega - 1| < {NEAR_INIT}")
    ax.axvline(0, color="k", lw=1)
    ax.set_xlabel("omega - 1 (deviation from the init value)")
    ax.set_ylabel("neurons")
    ax.set_title("how far omega moved from its init")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_drift(before, after, path):
    """Histogram of the per-neuron drift |after - before| of omega and of phi."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for name in ("omega", "phi"):
        drift = np.abs(all_layers(after, name) - all_layers(before, name))
        ax.hist(drift, bins=80, alpha=0.6, label=f"{name}: mean {drift.mean():.4f}, max {drift.max():.4f}")
    ax.set_xlabel("|after - before| per neuron")
    ax.set_ylabel("neurons")
    ax.set_yscale("log")  # most neurons barely move; the tail is what matters
    ax.set_title("parameter drift between the checkpoints")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_before_after(before, after, labels, path, seed=0):
    """omega before vs after and phi before vs after, one dot per neuron; the diagonal is 'unchanged'."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    for ax, name in zip(axes, ("omega", "phi")):
        x, y = all_layers(before, name), all_layers(after, name)
        idx = sample_index(x.size, seed)
        ax.scatter(x[idx], y[idx], s=3, alpha=0.3)
        lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
        ax.plot([lo, hi], [lo, hi], color="r", lw=1, ls="--", label="unchanged (y = x)")
        ax.set_xlabel(f"{name}: {labels[0]}")
        ax.set_ylabel(f"{name}: {labels[1]}")
        ax.set_title(f"{name} before vs after ({idx.size} of {x.size} neurons)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(folder, sets, seed=0):
    """All PNGs for sets [(label, layers)]; activation curves for the last set; with two sets
    also the drift and before-vs-after figures. Returns the paths."""
    os.makedirs(folder, exist_ok=True)
    names = ["omega_phi_hist.png", "omega_phi_layers.png", "activations.png", "omega_phi_scatter.png",
             "omega_deviation.png"] + (["drift_hist.png", "before_after_scatter.png"] if len(sets) == 2 else [])
    paths = [os.path.join(folder, name) for name in names]
    plot_histograms(sets, paths[0])
    plot_layer_histograms(sets, paths[1])
    plot_activations(sets[-1][1], paths[2], seed=seed)
    plot_omega_phi_scatter(sets, paths[3], seed=seed)
    plot_omega_deviation(sets, paths[4])
    if len(sets) == 2:
        plot_drift(sets[0][1], sets[1][1], paths[5])
        plot_before_after(sets[0][1], sets[1][1], [label for label, _ in sets], paths[6], seed=seed)
    return paths


def main(argv=None):
    cfg = load_settings(SETTINGS, argv, description=__doc__.strip().splitlines()[0], allow_config_file=False)
    if not cfg.ckpt:
        raise UserError("give the checkpoint to analyze: --ckpt=path/to/ckpt.pt")
    if cfg.plots and os.path.exists(cfg.plots) and not os.path.isdir(cfg.plots):
        raise UserError(f"--plots={cfg.plots} is a file; give a folder for the figures")
    neurons = load_neurons(cfg.ckpt, cfg.revision)
    stats = analyze(neurons["layers"])
    print_card(neurons, stats)
    sets = [(cfg.ckpt, neurons["layers"])]
    cmp = None
    if cfg.compare:
        other = load_neurons(cfg.compare, cfg.revision)
        check_same_shape(neurons, other)
        cmp = compare(neurons["layers"], other["layers"])
        print_stability(neurons, other, cmp)
        sets.append((cfg.compare, other["layers"]))
    if cfg.plots:
        print()
        try:
            paths = write_plots(cfg.plots, sets, seed=cfg.seed)
        except OSError as e:  # no permission, a full disk, a file in the way
            raise write_error(cfg.plots, e, "run again") from None
        for path in paths:
            print(f"wrote {path}")
    return dict(stats=stats, compare=cmp)


if __name__ == "__main__":
    run_main(main)
