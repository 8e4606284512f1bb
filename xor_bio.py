"""
XOR with ONE neuron: the oscillating activation against monotonic ones.

    python xor_bio.py                      # 10 seeds, prints accuracy per activation and seed
    python xor_bio.py --plot=xor.png       # and draws the learned decision curves
    python xor_bio.py --suite              # the original WiggleGPT's architecture benchmark
    python xor_bio.py --suite --suite_plot=suite.png --tasks=xor,parity-4 --kinds=standard,oscillating

One neuron y = f(w.x + b) on the four XOR points, trained with Adam on the squared error, for
the model's oscillating activation (model_bio.OscillatingActivation) and GELU, ReLU and tanh;
all seeds train at once, side by side. Why a monotonic f gets at most 3 of the 4 points right:
README.md, "Research tools".

--suite runs the original's bio_inspired_neurons2.py benchmark instead (wigglegpt/archbench.py):
Standard, Oscillating, Sparse, Hybrid and Dendritic MLPs on XOR, Parity-4, Modular-5 and
Logical-Inference, every seed side by side, with each kind's accuracy against the Standard MLP's
as a paired 95 % confidence interval over the same seeds.
"""

import os

import torch
import torch.nn.functional as F

from model_bio import OscillateFunction, OscillatingActivation
from wigglegpt import archbench, plots
from wigglegpt.common import UserError, run_main, write_error
from wigglegpt.settings import load_settings
from wigglegpt.stats import mean_std

SETTINGS = {
    "seeds": (10, "number of seeds; seeds 0 .. seeds-1 are run, none left out"),
    "steps": (500, "Adam steps per neuron"),
    "lr": (0.1, "Adam learning rate"),
    "plot": ("", "PNG file for the learned decision curves (default: no plot)"),
    "suite": (False, "run the original WiggleGPT's architecture benchmark instead: every task x MLP kind"),
    "suite_seeds": (10, "--suite: seeds 0 .. suite_seeds-1, all trained side by side"),
    "suite_epochs": (200, "--suite: epochs at most, 25 Adam steps each (the original ran 1000; "
                          "a seed stops once its test MSE is below 1e-6)"),
    "tasks": (",".join(archbench.TASKS), "--suite: the tasks, comma separated"),
    "kinds": (",".join(archbench.KINDS), "--suite: the MLP kinds, comma separated (the confidence "
                                         "intervals are against standard)"),
    "suite_plot": ("", "--suite: PNG file for the accuracy per task and kind (default: no plot)"),
}
SUITE_ONLY = ("suite_seeds", "suite_epochs", "tasks", "kinds", "suite_plot")

ACTIVATIONS = ("oscillating", "gelu", "relu", "tanh")
MONOTONIC = {"gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh}
THRESHOLD = 0.5  # the readout: predicted class 1 when y > THRESHOLD


def xor_data():
    """The four XOR points in {-1, +1}^2 (centred, so no input is special) and 0/1 targets."""
    x = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])
    return x, y


def initial_weights(seeds):
    """w ~ N(0, 1) and b = 0 per seed, the same draws whatever the activation (a fair start)."""
    w = torch.stack([torch.randn(2, generator=torch.Generator().manual_seed(s)) for s in seeds])
    return w, torch.zeros(len(seeds))


def make_activation(name, seeds):
    """(f, its parameters). The oscillating one has one neuron per seed, initialised from the
    seed the way model_bio initialises the GPT's neurons: omega ~ N(1, 0.1), phi ~ N(0, 0.1),
    baseline 0."""
    if name in MONOTONIC:
        return MONOTONIC[name], []
    if name != "oscillating":
        raise UserError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")
    act = OscillatingActivation(len(seeds))
    with torch.no_grad():
        for i, s in enumerate(seeds):
            g = torch.Generator().manual_seed(10_000 + s)  # its own stream, apart from w's
            act.omega[i] = 1.0 + 0.1 * torch.randn((), generator=g)
            act.phi[i] = 0.1 * torch.randn((), generator=g)
        act.baseline.zero_()
    return act, list(act.parameters())


def train_xor(name, seeds=range(10), steps=500, lr=0.1):
    """Train one neuron per seed on XOR; return accuracies, losses and the learned neurons.

    Returns a dict: seeds, accuracy (per seed, 0..1), loss (final MSE per seed), w (S, 2),
    b (S,), f (the activation, for plotting) and outputs (4, S) on the four points.
    """
    seeds = list(seeds)
    if not seeds:
        raise UserError("need at least one seed")
    if steps < 1 or lr <= 0:
        raise UserError(f"steps must be >= 1 and lr > 0, got steps={steps}, lr={lr}")
    x, target = xor_data()
    w, b = initial_weights(seeds)
    w.requires_grad_(True)
    b.requires_grad_(True)
    f, act_params = make_activation(name, seeds)
    opt = torch.optim.Adam([w, b, *act_params], lr=lr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors of a few dozen numbers: more threads only add overhead
    try:
        fit(f, w, b, opt, x, target, steps)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        y = f(x @ w.T + b)
        accuracy = ((y > THRESHOLD).float() == target[:, None]).float().mean(0)
        final_loss = ((y - target[:, None]) ** 2).mean(0)
    return dict(name=name, seeds=seeds, accuracy=accuracy.tolist(), loss=final_loss.tolist(),
                w=w.detach(), b=b.detach(), f=f, outputs=y)


def fit(f, w, b, opt, x, target, steps):
    """Full-batch Adam on the mean squared error of every neuron at once."""
    for _ in range(steps):
        y = f(x @ w.T + b)  # (4 points, S neurons)
        loss = ((y - target[:, None]) ** 2).mean(0).sum()  # sum over seeds keeps them independent
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def run_all(seeds=range(10), steps=500, lr=0.1):
    """train_xor for every activation: {name: result}."""
    return {name: train_xor(name, seeds, steps, lr) for name in ACTIVATIONS}


def share_perfect(result):
    """Share of seeds where the neuron classifies all four points right."""
    return sum(a == 1.0 for a in result["accuracy"]) / len(result["accuracy"])


def best_monotonic(results):
    """The monotonic activation with the highest mean accuracy (lowest mean loss on a tie)."""
    def key(name):
        r = results[name]
        return (-sum(r["accuracy"]) / len(r["accuracy"]), sum(r["loss"]) / len(r["loss"]))
    return min((n for n in results if n in MONOTONIC), key=key)


# ---------------------------------------------------------------------------------------
# report

def print_report(results):
    seeds = next(iter(results.values()))["seeds"]
    print(f"XOR with one neuron y = f(w.x + b), inputs in {{-1,+1}}^2, predicted 1 when y > {THRESHOLD}")
    print(f"accuracy per seed ({len(seeds)} seeds: {seeds[0]}..{seeds[-1]})")
    head = "activation   " + " ".join(f"{s:>4}" for s in seeds) + "   100% seeds   mean MSE"
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        accs = " ".join(f"{a * 100:>3.0f}%" for a in r["accuracy"])
        n_perfect = round(share_perfect(r) * len(seeds))
        mse = sum(r["loss"]) / len(r["loss"])
        print(f"{name:<12} {accs}   {n_perfect:>3}/{len(seeds):<3} {share_perfect(r):>4.0%}   {mse:8.4f}")
    osc = results["oscillating"]
    best_mono = max(max(results[n]["accuracy"]) for n in results if n in MONOTONIC)
    print()
    print(f"oscillating neuron: 100% on {share_perfect(osc):.0%} of seeds; "
          f"best monotonic neuron on any seed: {best_mono:.0%} (a linear classifier's limit is 75%)")


def plot_decision(results, path, seed_index=0):
    """Two columns (oscillating, best monotonic), each for the first seed:
    top, y = f(w.x + b) over the input plane with the y = 0.5 boundary and the four points;
    bottom, f over the projection z = w.x + b with the points placed at their z."""
    plt = plots.pyplot()

    x, target = xor_data()
    names = ["oscillating", best_monotonic(results)]
    fig, axes = plt.subplots(2, 2, figsize=(11, 9))
    grid = torch.linspace(-1.6, 1.6, 201)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    plane = torch.stack([gx.flatten(), gy.flatten()], dim=1)
    colors = ["tab:blue" if t == 0 else "tab:red" for t in target.tolist()]
    for col, name in enumerate(names):
        r = results[name]
        w, b = r["w"][seed_index], r["b"][seed_index]
        acc, seed = r["accuracy"][seed_index], r["seeds"][seed_index]
        f = neuron_function(r, seed_index)
        with torch.no_grad():  # numpy for matplotlib
            surface = f(plane @ w + b).reshape(gx.shape).numpy()
            z_points = (x @ w + b).numpy()
            y_points = f(torch.from_numpy(z_points)).numpy()
        ax = axes[0, col]
        mesh = ax.pcolormesh(gx.numpy(), gy.numpy(), surface, shading="auto", cmap="coolwarm", vmin=-1, vmax=1.5)
        ax.contour(gx.numpy(), gy.numpy(), surface, levels=[THRESHOLD], colors="k", linewidths=1.5)
        ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), c=colors, s=120, edgecolors="k", zorder=3)
        for (px, py), t in zip(x.tolist(), target.tolist()):
            ax.annotate(f"target {t:.0f}", (px, py), textcoords="offset points", xytext=(8, 8))
        ax.set_title(f"{name} (seed {seed}): {acc:.0%} correct\nf(w.x+b) over the inputs, black: f = 0.5")
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.set_aspect("equal")
        fig.colorbar(mesh, ax=ax, fraction=0.046)

        ax = axes[1, col]
        lo, hi = float(z_points.min()), float(z_points.max())
        pad = max(1.0, 0.3 * (hi - lo))
        z = torch.linspace(lo - pad, hi + pad, 400)
        with torch.no_grad():
            ax.plot(z.numpy(), f(z).numpy(), color="k", lw=1.5, label="f(z)")
        ax.axhline(THRESHOLD, color="gray", ls="--", lw=1, label="readout threshold 0.5")
        ax.scatter(z_points, y_points, c=colors, s=100, edgecolors="k", zorder=3)
        ax.set_title(describe_neuron(r, seed_index))
        ax.set_xlabel("z = w.x + b")
        ax.set_ylabel("y = f(z)")
        ax.legend(loc="best", fontsize=8)
    fig.suptitle("XOR with one neuron (blue: target 0, red: target 1)")
    fig.tight_layout()
    plots.save(fig, path)


def neuron_function(result, i):
    """f for the neuron of seed index i alone (the oscillating module holds one neuron per seed)."""
    f = result["f"]
    if isinstance(f, OscillatingActivation):
        params = [p.detach()[i:i + 1] for p in (f.omega, f.phi, f.baseline)]
        return lambda z: OscillateFunction.apply(z[..., None], *params)[..., 0]
    return f


def describe_neuron(result, i):
    w, b = result["w"][i].tolist(), float(result["b"][i])
    text = f"w = ({w[0]:.2f}, {w[1]:.2f}), b = {b:.2f}"
    f = result["f"]
    if isinstance(f, OscillatingActivation):
        text += (f"\nomega = {float(f.omega[i].detach()):.2f}, phi = {float(f.phi[i].detach()):.2f}, "
                 f"baseline = {float(f.baseline[i].detach()):.2f}")
    return text


# ---------------------------------------------------------------------------------------
# --suite: the original's architecture benchmark

def pick_names(text, known, what):
    """A comma-separated list of names from known (case does not matter), in the order given."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError(f"--{what}= is empty; choose from {','.join(known)}")
    for n in names:
        if n not in known:
            raise UserError(f"--{what}: unknown name {n!r}; choose from {','.join(known)}")
    if len(set(names)) < len(names):
        raise UserError(f"--{what}={text} names one of them twice")
    return names


def format_spread(mean_sd, scale=1.0, digits=1):
    """'mean ± sd' (just the mean for one seed, '-' for none)."""
    mean, sd = mean_sd
    if mean is None:
        return "-"
    return f"{mean * scale:.{digits}f}" + ("" if sd is None else f" ± {sd * scale:.{digits}f}")


def format_ci(ci):
    """'+mean [low, high]' in percentage points (just the mean for one seed)."""
    mean, low, high = ci
    text = f"{mean * 100:+.1f}"
    return text + ("" if low is None else f" [{low * 100:+.1f}, {high * 100:+.1f}]")


def print_suite(results, seeds, epochs):
    """The table: per task and kind, accuracy, test MSE, epochs to 95 %, parameters, time, firing share,
    and the paired difference in accuracy to the Standard MLP with its 95 % CI."""
    print("Architecture benchmark of the original WiggleGPT (bio_inspired_neurons2.py): "
          f"{archbench.N_LAYERS} hidden layers of {archbench.HIDDEN}, Adam lr {archbench.LR}, "
          f"batch {archbench.BATCH_SIZE}, MSE, gradient norm clipped to {archbench.MAX_GRAD_NORM}")
    print(f"up to {epochs} epochs of the 800 training rows (a seed stops once its test MSE < {archbench.STOP_LOSS}); "
          f"{len(seeds)} seeds ({seeds[0]}..{seeds[-1]}) side by side; accuracy on the 200 test rows")
    head = (f"{'task':<18} {'kind':<12} {'accuracy %':>13} {'test MSE':>9} {'epochs to 95%':>15} {'reached':>7} "
            f"{'params':>7} {'time s':>7} {'firing %':>12}   acc - Standard, pp [95% CI]")
    print(head)
    print("-" * len(head))
    for (task, kind), r in results.items():
        s = archbench.summarize(r, results.get((task, "standard")) if kind != "standard" else None)
        diff = "" if s["versus_base"] is None else format_ci(s["versus_base"])
        print(f"{r['task']:<18} {archbench.KINDS[kind][0]:<12} {format_spread(s['accuracy'], 100):>13} "
              f"{s['test_mse'][0]:>9.2e} {format_spread(s['epochs_to_target']):>15} {s['n_reached']:>3}/{len(seeds):<3} "
              f"{r['params']:>7,} {r['seconds']:>7.1f} {format_spread(s['firing'], 100):>12}   {diff}".rstrip())
    print()
    print("accuracy: mean ± sample std over the seeds (Modular-5: the output rounded to the nearest "
          "of its levels 0, 0.2, .., 0.8); test MSE: the mean over the seeds")
    print("epochs to 95%: epochs trained when the test accuracy first reached 95%, over the seeds "
          "that reached it; time: all seeds together")
    print("firing: share of the sparse gates' units with voltage above the threshold, over the last "
          f"{archbench.FIRING_WINDOW} forward calls; acc - Standard: paired per seed, mean and Student t 95% CI")
    if "standard" not in {kind for _, kind in results}:
        print("(no confidence intervals: --kinds has no standard to compare with)")


def plot_suite(results, path):
    """One panel per task: each kind's mean accuracy as a bar with the sample std as its error
    bar (cut off at 0 and 100 %), and every seed's accuracy as a dot."""
    plt = plots.pyplot()

    tasks = list(dict.fromkeys(task for task, _ in results))
    kinds = list(dict.fromkeys(kind for _, kind in results))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks) + 1, 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for i, kind in enumerate(kinds):
            r = results[task, kind]
            mean, sd = mean_std(r["accuracy"])
            sd = sd or 0.0
            bar = [[min(sd, mean) * 100], [min(sd, 1.0 - mean) * 100]]  # the std, cut off at 0 % and 100 %
            ax.bar(i, mean * 100, yerr=bar, capsize=4, color=f"C{i}", alpha=0.7)
            n = len(r["accuracy"])
            offsets = [(j - (n - 1) / 2) * 0.5 / max(n, 1) for j in range(n)]  # the seeds spread across the bar
            ax.scatter([i + o for o in offsets], [a * 100 for a in r["accuracy"]], s=10, color="k", zorder=3)
        ax.set_xticks(range(len(kinds)), [archbench.KINDS[k][0] for k in kinds], rotation=30, ha="right")
        ax.set_title(results[task, kinds[0]]["task"])
        ax.set_ylim(0, 105)
        ax.set_ylabel("test accuracy %")
    seeds = next(iter(results.values()))["seeds"]
    fig.suptitle(f"Architecture benchmark: mean ± std (cut at 0 and 100 %) over {len(seeds)} seeds (dots: each seed)")
    fig.tight_layout()
    plots.save(fig, path)


def check_plot_path(path, key):
    """A plot's folder must exist and the path must not be a folder: checked before the training."""
    folder = os.path.dirname(os.path.abspath(path)) if path else ""
    if folder and not os.path.isdir(folder):
        raise UserError(f"--{key}={path}: folder {folder} does not exist")
    if path and os.path.isdir(path):
        raise UserError(f"--{key}={path} is a folder; give a .png file")


def run_suite(cfg):
    """--suite: check its settings, train every task x kind, print the table, draw the plot."""
    from tqdm import tqdm

    if cfg.suite_seeds < 1:
        raise UserError(f"suite_seeds must be >= 1, got {cfg.suite_seeds}")
    if cfg.suite_epochs < 1:
        raise UserError(f"suite_epochs must be >= 1, got {cfg.suite_epochs}")
    tasks = pick_names(cfg.tasks, list(archbench.TASKS), "tasks")
    kinds = pick_names(cfg.kinds, list(archbench.KINDS), "kinds")
    check_plot_path(cfg.suite_plot, "suite_plot")
    seeds = list(range(cfg.suite_seeds))
    with tqdm(total=len(tasks) * len(kinds) * cfg.suite_epochs, unit="epoch", desc="suite", disable=None) as bar:
        results = archbench.run_suite(tasks, kinds, seeds, cfg.suite_epochs, progress=bar)
    print_suite(results, seeds, cfg.suite_epochs)
    if cfg.suite_plot:
        try:
            plot_suite(results, cfg.suite_plot)
        except OSError as e:
            raise write_error(cfg.suite_plot, e, "run again") from None
        print(f"wrote {cfg.suite_plot}")
    return results


def main(argv=None):
    cfg = load_settings(SETTINGS, argv, description=__doc__.strip().splitlines()[0], allow_config_file=False)
    given = cfg.explicit  # the settings on the command line
    if cfg.suite:
        one_neuron = sorted(given & {"seeds", "steps", "lr", "plot"})
        if one_neuron:
            raise UserError(f"--{one_neuron[0]} is for the one-neuron XOR run, not --suite "
                            "(its settings: --suite_seeds, --suite_epochs, --tasks, --kinds, --suite_plot)")
        return run_suite(cfg)
    suite_only = [k for k in SUITE_ONLY if k in given]
    if suite_only:
        raise UserError(f"--{suite_only[0]} needs --suite")
    if cfg.seeds < 1:
        raise UserError(f"seeds must be >= 1, got {cfg.seeds}")
    check_plot_path(cfg.plot, "plot")
    results = run_all(range(cfg.seeds), cfg.steps, cfg.lr)
    print_report(results)
    if cfg.plot:
        try:
            plot_decision(results, cfg.plot)
        except OSError as e:  # no permission, a full disk
            raise write_error(cfg.plot, e, "run again") from None
        print(f"wrote {cfg.plot}")
    return results


if __name__ == "__main__":
    run_main(main)
