"""
What did the oscillating neurons learn? Statistics of omega, phi and baseline in a checkpoint.

    python analyze_bio.py --ckpt=out-shakespeare-bio/ckpt.pt
    python analyze_bio.py --ckpt=ckpt_pretrain.pt --compare=ckpt_finetune.pt --plots=plots
    python analyze_bio.py --ckpt=ckpt_pretrain.pt --compare=ckpt_finetune.pt --bands --plots=plots

Reads only the state dict and config (this project's checkpoints or the original WiggleGPT
files) and prints the statistics overall and per layer, next to their initial values, for
every oscillator set (v2 checkpoints have two per block); --compare adds the stability table
between two checkpoints of one shape, --bands the EEG-style band table of the original's
analyze_brainwaves.py (wigglegpt/bands.py), --plots writes the figures, the original's among
them. What each figure means: README.md, "Research tools".
"""

import math
import os

import numpy as np
import torch
from tqdm import tqdm

from model_bio import OscillateFunction
from wigglegpt import bands, hub, plots
from wigglegpt.checkpoint import CheckpointError, clean_state_dict, is_original_format, load_checkpoint, model_config
from wigglegpt.common import UserError, run_main, write_error
from wigglegpt.loader import REVISION_MEANING
from wigglegpt.settings import load_settings

SETTINGS = {
    "ckpt": ("", "checkpoint to analyze (this project's format or the original WiggleGPT one; hf://OWNER/REPO/FILE "
                 "for one on the Hub)"),
    "revision": ("", REVISION_MEANING),
    "compare": ("", "a second checkpoint of the same shape: print the stability table from ckpt to it"),
    "plots": ("", "folder for the PNG figures: histograms, activation curves, the original's wiggle_analysis.png "
                  "(and wiggle_finetune_analysis.png with --compare); a second oscillator set's in a subfolder "
                  "(default: no plots)"),
    "bands": (False, "also print the EEG-style band table of |omega| (the original's analyze_brainwaves.py); "
                     "with --plots also draw its five figures"),
    "seed": (0, "random seed for the random neurons drawn in the activation-curve plot"),
}

# (mean, std) at init, as model_bio.GPT.init_weights sets them (the same for every oscillator set)
INIT = {"omega": (1.0, 0.1), "phi": (0.0, 0.1), "baseline": (0.0, 0.0), "gate_weight": (1.0, 0.0),
        "gate_bias": (0.0, 0.0)}
ACTIVE_OMEGA = 0.1  # |omega| above this: the neuron oscillates; below: close to linear
PHASE_BINS = 36  # coverage of [-pi, pi) is counted in 36 bins of 10 degrees
SHIFTS = (0.1, 0.5)  # per-neuron change thresholds of the stability table
NEAR_INIT = 0.2  # |omega - 1| below this: the neuron's frequency stayed near its init
SCATTER_POINTS = 20_000  # scatter plots draw at most this many neurons (a seeded sample)
OSCILLATOR = ("omega", "phi", "baseline")  # the parameters of one OscillatingActivation
PARAMS = OSCILLATOR + ("gate_weight", "gate_bias")
# the lightweight sparse gate's vectors, in front of mlp.activation (under transformer.h.{i}.)
GATE = {"gate_weight": "mlp.gate_weight", "gate_bias": "mlp.gate_bias"}
# what each oscillator set is, by its module's name under transformer.h.{i}.
SET_ABOUT = {"mlp.activation": "the MLP's activation",
             "mlp.oscillating": "v2: the MLP's activation, after c_fc",
             "mlp.sparse_gate.activation": "v2: the sparse event layer's own activation, after its transform"}


# ---------------------------------------------------------------------------------------
# reading the neurons out of a checkpoint

def oscillator_sets(state):
    """The names of block 0's oscillator sets (modules with an omega), in state-dict order:
    ['mlp.activation'], or v2's ['mlp.oscillating', 'mlp.sparse_gate.activation']."""
    prefix = "transformer.h.0."
    return [key[len(prefix):-len(".omega")] for key in state if key.startswith(prefix) and key.endswith(".omega")]


def load_neurons(path, revision=""):
    """The oscillating parameters of a checkpoint, per oscillator set and layer, as float64 numpy arrays.

    Returns dict(path, config, info, sets) with sets a list of dict(name, layers), one per
    oscillator set (oscillator_sets), layers a list of {"omega", "phi", "baseline"[, "gate_weight",
    "gate_bias"]} per transformer block (the gate's vectors go with mlp.activation).
    """
    if hub.is_hub_name(path):
        path = hub.resolve(path, revision)
    ckpt = load_checkpoint(path)
    config = model_config(ckpt, path)
    state = clean_state_dict(ckpt["model"])
    names = oscillator_sets(state)
    if not names:
        raise UserError(f"{path} has no oscillating neurons (use_bio_mlp={config.use_bio_mlp}: "
                        f"its MLPs use GELU); nothing to analyze")
    sets = []
    for name in names:
        layers = []
        for i in range(config.n_layer):
            prefix = f"transformer.h.{i}."
            missing = [f"{prefix}{name}.{k}" for k in OSCILLATOR if f"{prefix}{name}.{k}" not in state]
            if missing:
                raise CheckpointError(f"{path}: layer {i} has no {', '.join(missing)}")
            layer = {k: state[f"{prefix}{name}.{k}"].detach().double().numpy().ravel() for k in OSCILLATOR}
            if name == "mlp.activation":
                layer.update({k: state[prefix + v].detach().double().numpy().ravel()
                              for k, v in GATE.items() if prefix + v in state})
            layers.append(layer)
        sets.append(dict(name=name, layers=layers))
    return dict(path=path, config=config, info=checkpoint_info(ckpt), sets=sets)


def checkpoint_info(ckpt):
    """Format, iteration and the stored val loss, with what that number is.

    The original's train loop (train_bio.py, finetune_native.py; v1 and v2 alike) with
    always_save_checkpoint=True, its default, set best_val_loss to every eval's val loss before
    saving: the number is the last save's val loss, not the best. Its checkpoints keep that
    setting in their 'config'. This project's best_val_loss is the best.
    """
    train = ckpt.get("train_config") if isinstance(ckpt.get("train_config"), dict) else {}
    iter_num = ckpt.get("iter_num", train.get("iter_num"))
    val_loss = ckpt.get("best_val_loss", train.get("best_val_loss"))
    if isinstance(val_loss, torch.Tensor):
        val_loss = val_loss.item()
    original = is_original_format(ckpt)
    stored = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    last_save = original and stored.get("always_save_checkpoint") is True
    return dict(format="original WiggleGPT" if original else "wigglegpt-bio", iter_num=iter_num,
                val_loss=val_loss, val_loss_is_last_save=last_save,
                val_loss_label="val loss at the last save" if last_save else "best val loss")


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
    """Two checkpoints can be compared neuron by neuron only if they have the same oscillator
    sets and every layer of each has the same size."""
    def shape(neurons):
        sets = [(s["name"], [layer["omega"].size for layer in s["layers"]]) for s in neurons["sets"]]
        return sets, "; ".join(f"{name}: " + (f"{len(sizes)} layers x {sizes[0]} neurons" if len(set(sizes)) == 1
                                               else f"layer sizes {sizes}") for name, sizes in sets)
    (sa, ta), (sb, tb) = shape(a), shape(b)
    if sa != sb:
        raise UserError(f"cannot compare checkpoints of different shapes: {a['path']} has {ta}, {b['path']} has {tb}")


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


def set_heading(neurons, k):
    """The line that names oscillator set k, when a checkpoint has more than one."""
    name = neurons["sets"][k]["name"]
    about = SET_ABOUT.get(name, "an oscillating activation")
    return f"=== oscillator set {k + 1} of {len(neurons['sets'])}: {name} ({about})"


def print_card(neurons, stats):
    """The model card; stats: analyze() of each oscillator set, in the order of neurons['sets']."""
    cfg, info, sets = neurons["config"], neurons["info"], neurons["sets"]
    per_layer = sets[0]["layers"][0]["omega"].size
    n_total = sum(layer["omega"].size for s in sets for layer in s["layers"])
    extra = ""
    if info["iter_num"] is not None:
        extra += f", iter {info['iter_num']}"
    if info["val_loss"] is not None:
        extra += f", {info['val_loss_label']} {float(info['val_loss']):.4f}"
    print(f"checkpoint {neurons['path']} ({info['format']} format{extra})")
    if info["val_loss_is_last_save"]:
        print("  (the original saved with always_save_checkpoint=True and stored each save's val loss as "
              "best_val_loss: this is the latest eval's, not the best)")
    gate = f"on, {cfg.sparse_gate_kind}" if cfg.use_sparse_gate else "off"
    count = (f"{per_layer:,} oscillating neurons = {n_total:,} neurons" if len(sets) == 1 else
             f"{len(sets)} oscillator sets x {per_layer:,} neurons = {n_total:,} oscillating neurons")
    print(f"{cfg.n_layer} layers x {count} (n_embd {cfg.n_embd}, sparse gate {gate}; "
          f"set{'s' if len(sets) > 1 else ''}: {', '.join(s['name'] for s in sets)})")
    for k, set_stats in enumerate(stats):
        if len(sets) > 1:
            print()
            print(set_heading(neurons, k))
        print_set_tables(set_stats)


def print_set_tables(stats):
    """The tables of one oscillator set: omega, phi, baseline and the gate's vectors if any."""
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


def print_stability(a, b, cmp, k=0):
    """The stability table of oscillator set k from checkpoint a to b; cmp: compare() of that set."""
    print()
    where = f", oscillator set {a['sets'][k]['name']}" if len(a["sets"]) > 1 else ""
    print(f"stability: {a['path']} -> {b['path']}{where}")
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

def plot_histograms(runs, path):
    """Overall omega and phi histograms; runs is [(label, layers)] (one oscillator set of one or two
    checkpoints), one overlaid colour each."""
    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, name in zip(axes, ("omega", "phi")):
        values = [all_layers(layers, name) for _, layers in runs]
        edges = np.histogram_bin_edges(np.concatenate(values), bins=80)
        for (label, _), v in zip(runs, values):
            ax.hist(v, bins=edges, alpha=0.55 if len(runs) > 1 else 0.85, label=f"{label} ({v.size} neurons)")
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
    plots.save(fig, path)


def plot_layer_histograms(runs, path):
    """One row per parameter (omega, phi), one column per layer, as a grid of small histograms
    (wrapped in rows of at most 6 layers)."""
    plt = plots.pyplot()
    n_layer = len(runs[0][1])
    per_row = min(6, n_layer)
    row_blocks = math.ceil(n_layer / per_row)
    fig, axes = plt.subplots(2 * row_blocks, per_row, figsize=(2.6 * per_row, 2.2 * 2 * row_blocks),
                             squeeze=False)
    for p, name in enumerate(("omega", "phi")):
        edges = np.histogram_bin_edges(np.concatenate([all_layers(layers, name) for _, layers in runs]), bins=50)
        for i in range(row_blocks * per_row):
            ax = axes[2 * (i // per_row) + p, i % per_row]
            if i >= n_layer:
                ax.axis("off")
                continue
            for label, layers in runs:
                ax.hist(layers[i][name], bins=edges, alpha=0.55 if len(runs) > 1 else 0.85, label=label)
            ax.set_title(f"layer {i}: {name}", fontsize=9)
            ax.tick_params(labelsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8, ncol=len(runs))
    fig.suptitle("omega and phi per layer", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    plots.save(fig, path)


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
    plt = plots.pyplot()
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
    plots.save(fig, path)


def sample_index(n, seed=0, size=SCATTER_POINTS):
    """Indices of at most size of n neurons (all when fewer): scatters stay readable and small."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def plot_omega_phi_scatter(runs, path, seed=0):
    """omega against phi, one dot per neuron (one colour per checkpoint): which phases go with which frequencies."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(8, 6))
    for label, layers in runs:
        omega, phi = all_layers(layers, "omega"), all_layers(layers, "phi")
        idx = sample_index(omega.size, seed)
        ax.scatter(omega[idx], phi[idx], s=3, alpha=0.3, label=f"{label} ({idx.size} of {omega.size} neurons)")
    ax.scatter([INIT["omega"][0]], [INIT["phi"][0]], marker="x", color="k", s=60, label="init mean")
    ax.set_xlabel("omega (frequency)")
    ax.set_ylabel("phi (phase)")
    ax.set_title("omega vs phi, all layers")
    ax.legend(fontsize=8, markerscale=3)
    fig.tight_layout()
    plots.save(fig, path)


def plot_omega_deviation(runs, path):
    """Histogram of omega - 1 (the distance from init), with the +-0.2 band and its share."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    deviations = [all_layers(layers, "omega") - INIT["omega"][0] for _, layers in runs]
    edges = np.histogram_bin_edges(np.concatenate(deviations), bins=80)
    for (label, layers), dev in zip(runs, deviations):
        share = near_init_share(all_layers(layers, "omega"))
        ax.hist(dev, bins=edges, alpha=0.55 if len(runs) > 1 else 0.85,
                label=f"{label}: {share:.1%} within +-{NEAR_INIT}")
    ax.axvspan(-NEAR_INIT, NEAR_INIT, color="gray", alpha=0.2, label=f"|omega - 1| < {NEAR_INIT}")
    ax.axvline(0, color="k", lw=1)
    ax.set_xlabel("omega - 1 (deviation from the init value)")
    ax.set_ylabel("neurons")
    ax.set_title("how far omega moved from its init")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots.save(fig, path)


def plot_drift(before, after, path):
    """Histogram of the per-neuron drift |after - before| of omega and of phi."""
    plt = plots.pyplot()
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
    plots.save(fig, path)


def plot_before_after(before, after, labels, path, seed=0):
    """omega before vs after and phi before vs after, one dot per neuron; the diagonal is 'unchanged'."""
    plt = plots.pyplot()
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
    plots.save(fig, path)


def figure_wiggle_analysis(layers, label, seed=0):
    """The original analyze_wiggle-pretrain.py's 2 x 2 figure (wiggle_analysis.png), panel for
    panel: the omega histogram with its init and learned means, the phi histogram likewise,
    the histogram of omega - 1, and omega against phi (10,000 sampled neurons). Returns the Figure."""
    plt = plots.pyplot()
    omega, phi = all_layers(layers, "omega"), all_layers(layers, "phi")
    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    for ax, values, name, colour, title, unit in (
            (axes[0, 0], omega, "omega", "tab:blue", "learned frequencies", "omega"),
            (axes[0, 1], phi, "phi", "tab:orange", "learned phases", "phi (radians)")):
        ax.hist(values, bins=100, color=colour, alpha=0.7, edgecolor="k", linewidth=0.5)
        ax.axvline(INIT[name][0], color="r", ls="--", lw=2, label=f"init mean ({INIT[name][0]:g})")
        ax.axvline(values.mean(), color="g", lw=2, label=f"learned mean ({values.mean():.3f})")
        ax.set_title(f"distribution of the {title} ({name})", fontweight="bold")
        ax.set_xlabel(unit)
    ax = axes[1, 0]
    ax.hist(omega - INIT["omega"][0], bins=100, color="purple", alpha=0.7, edgecolor="k", linewidth=0.5)
    ax.axvline(0, color="r", ls="--", lw=2, label="no change from init")
    ax.set_title(f"omega deviation from init (omega - {INIT['omega'][0]:g})", fontweight="bold")
    ax.set_xlabel("deviation from the initial value")
    for ax in (axes[0, 0], axes[0, 1], axes[1, 0]):
        ax.set_ylabel("neurons")
        ax.legend()
    ax = axes[1, 1]
    idx = sample_index(omega.size, seed, size=10_000)
    ax.scatter(omega[idx], phi[idx], s=1, alpha=0.3)
    ax.axhline(INIT["phi"][0], color="gray", ls="--", alpha=0.5)
    ax.axvline(INIT["omega"][0], color="gray", ls="--", alpha=0.5)
    ax.set_title(f"omega vs phi ({idx.size:,} of {omega.size:,} neurons)", fontweight="bold")
    ax.set_xlabel("omega (frequency)")
    ax.set_ylabel("phi (phase)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle(label)
    fig.tight_layout()
    return fig


def figure_wiggle_finetune_analysis(before, after, labels, seed=0):
    """The original analyze_wiggle-finetune.py's 2 x 3 figure (wiggle_finetune_analysis.png),
    panel for panel. Top: omega and phi densities of both checkpoints with the init value, the
    drift |after - before| of omega and phi. Bottom: omega before vs after and phi before vs
    after (5,000 sampled neurons, the diagonal is 'no change'), omega vs phi of the second
    checkpoint. Returns the Figure."""
    plt = plots.pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    fig.suptitle(f"oscillation parameters before and after (pretrained vs fine-tuned): {labels[0]} -> {labels[1]}",
                 fontweight="bold")
    values = {name: (all_layers(before, name), all_layers(after, name)) for name in ("omega", "phi")}
    for ax, name in zip(axes[0, :2], ("omega", "phi")):
        edges = np.histogram_bin_edges(np.concatenate(values[name]), bins=80)
        for v, label, colour in zip(values[name], labels, ("tab:blue", "tab:red")):
            ax.hist(v, bins=edges, density=True, alpha=0.6, color=colour, label=label)
        ax.axvline(INIT[name][0], color="k", ls="--", lw=1, label=f"init ({INIT[name][0]:g})")
        ax.set_title(f"{name} distribution")
        ax.set_xlabel(name)
        ax.set_ylabel("density")
    ax = axes[0, 2]
    drift = {name: np.abs(values[name][1] - values[name][0]) for name in ("omega", "phi")}
    edges = np.histogram_bin_edges(np.concatenate(list(drift.values())), bins=80)
    for name, colour, alpha in (("omega", "purple", 0.7), ("phi", "orange", 0.5)):
        ax.hist(drift[name], bins=edges, alpha=alpha, color=colour, label=f"{name} drift")
    ax.set_title(f"parameter drift (|{labels[1]} - {labels[0]}|)", fontsize=10)
    ax.set_xlabel("absolute change")
    ax.set_ylabel("neurons")
    idx = sample_index(values["omega"][0].size, seed, size=5_000)
    for ax, name in zip(axes[1, :2], ("omega", "phi")):
        x, y = values[name]
        ax.scatter(x[idx], y[idx], s=2, alpha=0.2)
        lims = [min(x.min(), y.min()), max(x.max(), y.max())]
        ax.plot(lims, lims, "r--", lw=1, label="no change")
        ax.set_title(f"{name}: before vs after ({idx.size:,} of {x.size:,} neurons)")
        ax.set_xlabel(f"{name}: {labels[0]}")
        ax.set_ylabel(f"{name}: {labels[1]}")
    ax = axes[1, 2]
    ax.scatter(values["omega"][1][idx], values["phi"][1][idx], s=2, alpha=0.2, color="green")
    ax.axhline(INIT["phi"][0], color="gray", ls="--", alpha=0.5)
    ax.axvline(INIT["omega"][0], color="gray", ls="--", alpha=0.5)
    ax.set_title(f"{labels[1]}: omega vs phi", fontsize=10)
    ax.set_xlabel("omega (frequency)")
    ax.set_ylabel("phi (phase)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_jobs(runs, seed=0, with_bands=False):
    """[(file name, function(path) that writes it)] of every figure for runs [(label, layers)]:
    one oscillator set of one checkpoint or of two (then also the drift, before-vs-after and the
    original's 2 x 3 figures); activation curves of the last; the band figures when asked."""
    label, layers = runs[0]
    jobs = [("omega_phi_hist.png", lambda path: plot_histograms(runs, path)),
            ("omega_phi_layers.png", lambda path: plot_layer_histograms(runs, path)),
            ("activations.png", lambda path: plot_activations(runs[-1][1], path, seed=seed)),
            ("omega_phi_scatter.png", lambda path: plot_omega_phi_scatter(runs, path, seed=seed)),
            ("omega_deviation.png", lambda path: plot_omega_deviation(runs, path)),
            ("wiggle_analysis.png", lambda path: plots.save(figure_wiggle_analysis(layers, label, seed), path))]
    if len(runs) == 2:
        before, after, labels = runs[0][1], runs[1][1], [lab for lab, _ in runs]
        jobs += [("drift_hist.png", lambda path: plot_drift(before, after, path)),
                 ("before_after_scatter.png", lambda path: plot_before_after(before, after, labels, path, seed=seed)),
                 ("wiggle_finetune_analysis.png",
                  lambda path: plots.save(figure_wiggle_finetune_analysis(before, after, labels, seed), path))]
    if with_bands:
        jobs += bands.figures(runs, seed)
    return jobs


def set_runs(checkpoints, k):
    """[(label, layers)] of oscillator set k in each of checkpoints [(label, neurons)]; the set's
    name joins the label when a checkpoint has several."""
    several = len(checkpoints[0][1]["sets"]) > 1
    return [(f"{label} [{n['sets'][k]['name']}]" if several else label, n["sets"][k]["layers"])
            for label, n in checkpoints]


def set_folder(folder, neurons, k):
    """Where oscillator set k's figures go: the first set's in folder, each further set's in
    folder/<its name without 'mlp.'> (v2: folder/sparse_gate.activation)."""
    name = neurons["sets"][k]["name"]
    return folder if k == 0 else os.path.join(folder, name[len("mlp."):] if name.startswith("mlp.") else name)


def write_plots(folder, checkpoints, seed=0, with_bands=False):
    """Every figure of every oscillator set of checkpoints [(label, neurons)] (one or two), as
    PNGs under folder (set_folder). Returns the paths."""
    first = checkpoints[0][1]
    jobs = [(os.path.join(set_folder(folder, first, k), name), draw)
            for k in range(len(first["sets"])) for name, draw in plot_jobs(set_runs(checkpoints, k), seed, with_bands)]
    for path, draw in tqdm(jobs, desc="figures", unit="figure", leave=False, disable=None):  # matplotlib: about a second a figure
        os.makedirs(os.path.dirname(path), exist_ok=True)
        draw(path)
    return [path for path, _ in jobs]


def main(argv=None):
    cfg = load_settings(SETTINGS, argv, description=__doc__.strip().splitlines()[0], allow_config_file=False)
    if not cfg.ckpt:
        raise UserError("give the checkpoint to analyze: --ckpt=path/to/ckpt.pt")
    if cfg.plots and os.path.exists(cfg.plots) and not os.path.isdir(cfg.plots):
        raise UserError(f"--plots={cfg.plots} is a file; give a folder for the figures")
    neurons = load_neurons(cfg.ckpt, cfg.revision)
    checkpoints = [(cfg.ckpt, neurons)]
    results = [dict(name=s["name"], stats=analyze(s["layers"]), compare=None, bands=None) for s in neurons["sets"]]
    print_card(neurons, [r["stats"] for r in results])
    if cfg.compare:
        other = load_neurons(cfg.compare, cfg.revision)
        check_same_shape(neurons, other)
        checkpoints.append((cfg.compare, other))
        for k, r in enumerate(results):
            r["compare"] = compare(neurons["sets"][k]["layers"], other["sets"][k]["layers"])
            print_stability(neurons, other, r["compare"], k)
    if cfg.bands:
        for k, r in enumerate(results):
            print()
            print("EEG-style bands of |omega| (the original's analyze_brainwaves.py)"
                  + (f", oscillator set {r['name']}" if len(results) > 1 else "") + ":")
            r["bands"] = bands.print_band_table([(label, n["sets"][k]["layers"]) for label, n in checkpoints])
    if cfg.plots:
        print()
        try:
            paths = write_plots(cfg.plots, checkpoints, seed=cfg.seed, with_bands=cfg.bands)
        except OSError as e:  # no permission, a full disk, a file in the way
            raise write_error(cfg.plots, e, "run again") from None
        for path in paths:
            print(f"wrote {path}")
    return dict(sets=results)


if __name__ == "__main__":
    run_main(main)
