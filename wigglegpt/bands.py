"""
EEG-style bands of the learned frequencies: the numbers and the five figures of the original
WiggleGPT's analyze_brainwaves.py (the same quantities, written anew).

A neuron's frequency is |omega| (sin(omega x + phi) repeats every 2 pi / |omega| in x); it is
not a frequency in Hz. The original sorts |omega| into five ranges and names them after the
EEG bands; the names are an analogy, the ranges are what counts. analyze_bio.py --bands uses
this module; each run is (label, layers) with layers as analyze_bio.load_neurons reads them:
[{"omega": array, "phi": array, ...} per transformer block].
"""

from collections import namedtuple

import numpy as np

from wigglegpt import plots

Band = namedtuple("Band", "name symbol low high colour meaning eeg")
# [low, high) ranges of |omega| (analyze_brainwaves.py's EEG_BANDS), with the EEG band each is named after
BANDS = (
    Band("Delta", "δ", 0.0, 0.4, "#9B59B6", "deep patterns", "0.5-4 Hz"),
    Band("Theta", "θ", 0.4, 0.8, "#3498DB", "memory, learning", "4-8 Hz"),
    Band("Alpha", "α", 0.8, 1.2, "#2ECC71", "baseline, calm", "8-13 Hz"),
    Band("Beta", "β", 1.2, 1.8, "#F39C12", "active processing", "13-30 Hz"),
    Band("Gamma", "γ", 1.8, 3.0, "#E74C3C", "high cognition", "30-100+ Hz"),
)
TOP = BANDS[-1].high  # |omega| >= 3 is in no band ("other"); the spectrum clips it to 3
KDE_FACTOR = 0.05  # the original's gaussian_kde(bw_method=0.05): kernel std = 0.05 x sample std (n-1)
SPECTRUM_POINTS = 500  # the spectrum is evaluated on 500 points of [0, 3]
COHERENCE_EDGES = np.linspace(0.0, TOP, 50)  # 49 histogram bins of |omega| per layer
CHANNEL_NEURONS = 20  # each EEG channel (layer) is the mean wave of this many random neurons
CHANNEL_TIME = np.linspace(0.0, 4 * np.pi, 500)  # the channels' simulated time axis
FIGURES = ("eeg_power_spectrum.png", "band_power_comparison.png", "eeg_channels.png", "brain_topography.png",
           "coherence_heatmap.png")


# ---------------------------------------------------------------------------------------
# the numbers

def frequency(omega):
    return np.abs(np.asarray(omega, dtype=np.float64))


def band_index(omega):
    """The band of each neuron (0..4), or -1 for |omega| >= 3."""
    f = frequency(omega)
    index = np.searchsorted([b.high for b in BANDS], f, side="right")  # [low, high): high goes up
    return np.where(index < len(BANDS), index, -1)


def band_shares(omega):
    """Per band: neurons, share of all neurons (the original's printed table) and share of the
    neurons in some band (its bar chart, which leaves 'other' out)."""
    index = band_index(omega)
    counts = np.array([(index == k).sum() for k in range(len(BANDS))])
    banded = counts.sum()
    return dict(n=int(index.size), counts=counts.tolist(), other=int(index.size - banded),
                share=(counts / index.size).tolist(),
                banded_share=(counts / banded if banded else np.zeros(len(BANDS))).tolist())


def dominant_band(shares):
    """The band holding the most neurons ('other' does not count, as in the original)."""
    return BANDS[int(np.argmax(shares["counts"]))]


def band_of_value(value):
    k = band_index([value])[0]
    return BANDS[k] if k >= 0 else None


def power_spectrum(omega, grid):
    """The original's 'power': a Gaussian kernel density of |omega| clipped to [0, 3], its
    bandwidth 0.05 x the sample standard deviation (scipy's gaussian_kde with bw_method=0.05),
    divided by its peak."""
    f = np.clip(frequency(omega), 0.0, TOP)
    std = f.std(ddof=1) if f.size > 1 else 0.0
    h = max(KDE_FACTOR * std, 1e-3)  # all neurons at one value: a narrow spike rather than 0/0
    grid = np.asarray(grid, dtype=np.float64)
    density = np.zeros(grid.size)
    for start in range(0, f.size, 8192):  # (points, neurons) blocks keep memory small for 124M models
        z = (grid[:, None] - f[None, start:start + 8192]) / h
        density += np.exp(-0.5 * z * z).sum(axis=1)
    return density / density.max()


def coherence(layers):
    """Layer-by-layer 'coherence': the Pearson correlation of the layers' |omega| histograms
    (density, 49 bins of [0, 3]). NaN where a histogram is flat (no neuron in [0, 3], say)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        hists = np.array([np.histogram(frequency(layer["omega"]), bins=COHERENCE_EDGES, density=True)[0]
                          for layer in layers])
        return np.corrcoef(hists) if len(layers) > 1 else np.ones((1, 1))


def channel_traces(layers, seed=0):
    """One 'EEG channel' per layer: the mean of sin(omega t + phi) over up to 20 random neurons
    of the layer, on t in [0, 4 pi]. Returns [(trace, mean |omega| of the whole layer)]."""
    rng = np.random.default_rng(seed)
    traces = []
    for layer in layers:
        pick = rng.choice(layer["omega"].size, size=min(CHANNEL_NEURONS, layer["omega"].size), replace=False)
        waves = np.sin(layer["omega"][pick, None] * CHANNEL_TIME[None, :] + layer["phi"][pick, None])
        traces.append((waves.mean(axis=0), float(frequency(layer["omega"]).mean())))
    return traces


def topography(layers):
    """The 'brain map' electrodes, one per layer, placed on an arc as the original placed them:
    [(x, y, std of omega, mean of omega)]."""
    n = len(layers)
    angles = np.linspace(0.2 * np.pi, 0.8 * np.pi, n)
    spots = []
    for i, layer in enumerate(layers):
        r = 0.8 + 0.3 * i / n  # deeper layers a little further out
        spots.append((r * np.cos(angles[i]), 0.9 * r * np.sin(angles[i]), float(layer["omega"].std()),
                      float(layer["omega"].mean())))
    return spots


def all_omega(layers):
    return np.concatenate([layer["omega"] for layer in layers])


# ---------------------------------------------------------------------------------------
# the table

def print_band_table(runs):
    """The band table for one run or two (then the change from the first, A, to the second, B).
    Returns band_shares of each run."""
    shares = [band_shares(all_omega(layers)) for _, layers in runs]
    tags = [""] if len(runs) == 1 else [" A", " B"]
    columns = [c + t for t in tags for c in ("neurons", "share", "banded")] + (["change"] if len(runs) == 2 else [])
    print(f"{'band':<8}{'|omega|':>10}{'EEG name':>12}" + "".join(f"{c:>11}" for c in columns))
    for k, band in enumerate(BANDS):
        cells = []
        for s in shares:
            cells += [f"{s['counts'][k]:,}", f"{s['share'][k]:.2%}", f"{s['banded_share'][k]:.2%}"]
        if len(runs) == 2:
            cells.append(f"{(shares[1]['share'][k] - shares[0]['share'][k]) * 100:+.2f} pt")
        print(f"{band.name:<8}{f'{band.low:.1f}-{band.high:.1f}':>10}{band.eeg:>12}"
              + "".join(f"{c:>11}" for c in cells))
    other = []
    for s in shares:
        other += [f"{s['other']:,}", f"{s['other'] / s['n']:.2%}", "-"]
    print(f"{'other':<8}{f'>= {TOP:.1f}':>10}{'-':>12}" + "".join(f"{c:>11}" for c in other))
    for tag, (label, _), s in zip(tags, runs, shares):
        name = f"{tag.strip()}: {label}" if tag else label
        print(f"  {name}: {s['n']:,} neurons, dominant band {dominant_band(s).name}")
    print("  (|omega| is the neuron's frequency in x, not Hz: the EEG names are the original's analogy.\n"
          "   share: of all neurons, the original's printed table; banded: of the neurons in the five\n"
          "   bands, its band power bar chart" + ("; change: share B - share A, in percentage points)" if len(runs) == 2
                                                  else ")"))
    return shares


# ---------------------------------------------------------------------------------------
# the five figures; runs = [(label, layers)], one panel (or bar) each

def _save(fig, path):
    fig.tight_layout()
    plots.save(fig, path, dpi=90)


def plot_power_spectrum(runs, path):
    """Per run the spectrum of |omega| (power_spectrum), filled band by band in the band colours."""
    plt = plots.pyplot()
    grid = np.linspace(0.0, TOP, SPECTRUM_POINTS)
    fig, axes = plt.subplots(len(runs), 1, figsize=(14, 4.5 * len(runs)), squeeze=False)
    for ax, (label, layers) in zip(axes[:, 0], runs):
        power = power_spectrum(all_omega(layers), grid)
        for band in BANDS:
            inside = (grid >= band.low) & (grid <= band.high)
            ax.fill_between(grid[inside], 0, power[inside], color=band.colour, alpha=0.45,
                            label=f"{band.name} ({band.symbol}), |omega| {band.low:g}-{band.high:g}")
            ax.axvline(band.low, color="gray", lw=0.5, ls="--")
        ax.plot(grid, power, color="k", lw=1.5)
        ax.set_xlim(0, TOP)
        ax.set_ylim(0, 1.1)
        ax.set_xlabel("frequency |omega| (values above 3 drawn at 3)")
        ax.set_ylabel("power (density, peak = 1)")
        ax.set_title(f"neural frequency spectrum: {label}")
        ax.legend(fontsize=8, loc="upper right")
    _save(fig, path)


def plot_band_power(runs, path):
    """Share of the banded neurons per band, one bar per run (hatched: the second)."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(12, 6))
    x = np.arange(len(BANDS))
    width = 0.8 / len(runs)
    for r, (label, layers) in enumerate(runs):
        pct = np.array(band_shares(all_omega(layers))["banded_share"]) * 100
        bars = ax.bar(x + (r - (len(runs) - 1) / 2) * width, pct, width, color=[b.colour for b in BANDS],
                      alpha=0.8 if r == 0 else 0.45, hatch=None if r == 0 else "//", edgecolor="k", label=label)
        for bar, p in zip(bars, pct):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.5, f"{p:.1f}%", ha="center",
                    va="bottom", fontsize=8)
    ax.set_xticks(x, [f"{b.name} ({b.symbol})\n|omega| {b.low:g}-{b.high:g}\n{b.meaning}" for b in BANDS], fontsize=9)
    ax.set_ylabel("% of the neurons in the five bands")
    ax.set_title("band distribution of |omega|: " + " vs ".join(label for label, _ in runs))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)


def plot_channels(runs, path, seed=0):
    """Each layer as an 'EEG channel' (channel_traces), coloured by the band of its mean |omega|."""
    plt = plots.pyplot()
    n_layer = len(runs[0][1])
    fig, axes = plt.subplots(1, len(runs), figsize=(10 * len(runs), max(4.0, 0.8 * n_layer + 2)), squeeze=False)
    t = CHANNEL_TIME
    for ax, (label, layers) in zip(axes[0], runs):
        for i, (trace, mean_freq) in enumerate(channel_traces(layers, seed)):
            offset = (len(layers) - 1 - i) * 2.5  # layer 0 on top
            band = band_of_value(mean_freq)
            colour = band.colour if band else "gray"
            ax.plot(t, trace + offset, color=colour, lw=1)
            ax.fill_between(t, offset, trace + offset, color=colour, alpha=0.15)
            ax.text(-0.3, offset, f"L{i}", ha="right", va="center", fontsize=9, fontweight="bold")
            ax.text(t[-1] + 0.2, offset, f"mean |omega| {mean_freq:.2f}", ha="left", va="center", fontsize=7)
        ax.set_xlim(-1.2, t[-1] + 3)
        ax.set_ylim(-2, len(layers) * 2.5)
        ax.set_yticks([])
        ax.set_xlabel("time (simulated)")
        ax.set_ylabel("layer (channel)")
        ax.set_title(f"EEG-style layer activity: {label}\n(mean of sin(omega t + phi) over "
                     f"{CHANNEL_NEURONS} random neurons per layer; colour: band of its mean |omega|)", fontsize=10)
    _save(fig, path)


def plot_topography(runs, path):
    """A head seen from above with one electrode per layer: colour = std of omega, size = |mean omega|."""
    plt = plots.pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(8 * len(runs), 7), squeeze=False)
    around = np.linspace(0, 2 * np.pi, 100)
    for ax, (label, layers), cmap in zip(axes[0], runs, ("viridis", "plasma")):
        ax.plot(1.3 * np.cos(around), 1.4 * np.sin(around), color="gray", lw=2)  # the head
        ax.plot([-0.1, 0, 0.1], [1.4, 1.6, 1.4], color="gray", lw=2)  # the nose: front is up
        for side in (-1, 1):
            ax.plot(side * (1.3 + 0.15 * np.cos(around)), 0.15 * np.sin(around), color="gray", lw=1.5)
        spots = topography(layers)
        stds = [s[2] for s in spots]
        norm = plt.Normalize(vmin=min(stds), vmax=max(stds) if max(stds) > min(stds) else min(stds) + 1e-6)
        for i, (x, y, std, mean) in enumerate(spots):
            ax.scatter([x], [y], s=200 + 300 * abs(mean), color=plt.get_cmap(cmap)(norm(std)), edgecolors="k")
            ax.text(x, y, f"L{i}", ha="center", va="center", fontsize=8, fontweight="bold", color="w")
        ax.set_xlim(-2, 2)
        ax.set_ylim(-1.8, 2.2)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title(f"neural frequency topography: {label}\n(one electrode per layer; size: |mean omega|)")
        fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.5, label="std of omega in the layer")
    _save(fig, path)


def plot_coherence(runs, path):
    """The layer-by-layer coherence matrix (coherence) as a heatmap with its values."""
    plt = plots.pyplot()
    n_layer = len(runs[0][1])
    size = max(5.0, 0.55 * n_layer + 2)
    fig, axes = plt.subplots(1, len(runs), figsize=((size + 1.5) * len(runs), size), squeeze=False)
    for ax, (label, layers), cmap in zip(axes[0], runs, ("Blues", "Reds")):
        matrix = coherence(layers)
        image = ax.imshow(matrix, cmap=cmap, vmin=0, vmax=1)
        for i in range(n_layer):
            for j in range(n_layer):
                value = matrix[i, j]
                ax.text(j, i, "-" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="w" if value > 0.5 else "k")
        ticks = [f"L{i}" for i in range(n_layer)]
        ax.set_xticks(range(n_layer), ticks, fontsize=8)
        ax.set_yticks(range(n_layer), ticks, fontsize=8)
        ax.set_xlabel("layer")
        ax.set_ylabel("layer")
        ax.set_title(f"inter-layer frequency coherence: {label}\n(correlation of the layers' |omega| histograms)",
                     fontsize=10)
        fig.colorbar(image, ax=ax, shrink=0.8, label="coherence")
    _save(fig, path)


def figures(runs, seed=0):
    """[(file name, function(path) that writes it)] for the five figures, in the original's order."""
    return [(FIGURES[0], lambda path: plot_power_spectrum(runs, path)),
            (FIGURES[1], lambda path: plot_band_power(runs, path)),
            (FIGURES[2], lambda path: plot_channels(runs, path, seed)),
            (FIGURES[3], lambda path: plot_topography(runs, path)),
            (FIGURES[4], lambda path: plot_coherence(runs, path))]
