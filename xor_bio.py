"""
XOR with ONE neuron: the oscillating activation against monotonic ones.

    python xor_bio.py                      # 10 seeds, prints accuracy per activation and seed
    python xor_bio.py --plot=xor.png       # and draws the learned decision curves

One neuron y = f(w.x + b) on the four XOR points, trained with Adam on the squared error, for
the model's oscillating activation (model_bio.OscillatingActivation) and GELU, ReLU and tanh;
all seeds train at once, side by side. Why a monotonic f gets at most 3 of the 4 points right:
README.md, "Research tools".
"""

import os

import torch
import torch.nn.functional as F

from model_bio import OscillateFunction, OscillatingActivation
from wigglegpt.common import UserError, run_main, write_error
from wigglegpt.settings import load_settings

SETTINGS = {
    "seeds": (10, "number of seeds; seeds 0 .. seeds-1 are run, none left out"),
    "steps": (500, "Adam steps per neuron"),
    "lr": (0.1, "Adam learning rate"),
    "plot": ("", "PNG file for the learned decision curves (default: no plot)"),
}

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
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.savefig(path, dpi=100)
    plt.close(fig)


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


def main(argv=None):
    cfg = load_settings(SETTINGS, argv, description=__doc__.strip().splitlines()[0], allow_config_file=False)
    if cfg.seeds < 1:
        raise UserError(f"seeds must be >= 1, got {cfg.seeds}")
    folder = os.path.dirname(os.path.abspath(cfg.plot)) if cfg.plot else ""
    if folder and not os.path.isdir(folder):  # before the training, not after it
        raise UserError(f"--plot={cfg.plot}: folder {folder} does not exist")
    if cfg.plot and os.path.isdir(cfg.plot):
        raise UserError(f"--plot={cfg.plot} is a folder; give a .png file")
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
