"""Protects wigglegpt/bands.py and analyze_bio.py --bands, the original analyze_brainwaves.py's
EEG-style analysis: the band shares of known omegas against a count written out here from the
original's ranges (of all neurons, and of the banded ones its bar chart shows; |omega| used,
[low, high) edges, 3 and above in no band); the spectrum against the kernel density written out
here (and scipy's gaussian_kde with bw_method=0.05 where scipy is installed); the coherence,
channel and topography numbers; the five figures written; the band table through the real
command line; and a GELU checkpoint with --bands as one error line (exit 2, no traceback)."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, tiny_config
from model_bio import GPT
from wigglegpt import bands
from wigglegpt.checkpoint import checkpoint_dict, save_checkpoint

# analyze_brainwaves.py's EEG_BANDS, written out again
ORIGINAL_RANGES = {"Delta": (0.0, 0.4), "Theta": (0.4, 0.8), "Alpha": (0.8, 1.2), "Beta": (1.2, 1.8),
                   "Gamma": (1.8, 3.0)}
# 12 neurons: each edge on the side the original's (|w| >= low) & (|w| < high) puts it, signs mixed
OMEGAS = np.array([-0.1, 0.39, 0.4, -0.79, 0.8, 1.19, -1.2, 1.79, 1.8, -2.99, 3.0, -5.0])


def test_band_shares_for_known_omegas():
    s = bands.band_shares(OMEGAS)
    assert [b.name for b in bands.BANDS] == list(ORIGINAL_RANGES)
    counts = [sum(1 for w in OMEGAS if low <= abs(w) < high) for low, high in ORIGINAL_RANGES.values()]
    assert counts == [2, 2, 2, 2, 2]
    assert s["counts"] == counts and s["n"] == 12 and s["other"] == 2  # 3.0 and -5.0
    assert s["share"] == pytest.approx([c / 12 for c in counts])  # the printed table: of all neurons
    assert s["banded_share"] == pytest.approx([c / 10 for c in counts])  # the bar chart: of the banded ones
    skewed = bands.band_shares([1.0, 1.1, -0.9, 0.1])
    assert bands.dominant_band(skewed).name == "Alpha"
    assert skewed["share"] == pytest.approx([0.25, 0, 0.75, 0, 0])


def test_spectrum_is_the_original_kernel_density():
    rng = np.random.default_rng(0)
    omega = np.concatenate([rng.normal(1.0, 0.2, 300), rng.normal(-2.0, 0.3, 100), [4.0, 5.0]])
    grid = np.linspace(0, 3, 500)
    f = np.clip(np.abs(omega), 0, 3)  # |omega|, what is above 3 at 3
    h = 0.05 * f.std(ddof=1)
    expected = np.exp(-0.5 * ((grid[:, None] - f[None, :]) / h) ** 2).sum(axis=1)
    power = bands.power_spectrum(omega, grid)
    assert power == pytest.approx(expected / expected.max(), rel=1e-9, abs=1e-12)
    assert power.max() == pytest.approx(1.0)
    try:
        from scipy.stats import gaussian_kde
    except ImportError:
        return
    kde = gaussian_kde(f, bw_method=0.05)(grid)
    assert power == pytest.approx(kde / kde.max(), rel=1e-6, abs=1e-9)


def test_coherence_channels_and_topography():
    n = 64
    same = {"omega": np.linspace(0.5, 1.5, n), "phi": np.zeros(n)}
    shifted = {"omega": np.linspace(0.5, 1.5, n)[::-1] * -1, "phi": np.zeros(n)}  # the same |omega| histogram
    other = {"omega": np.full(n, 2.5), "phi": np.full(n, math.pi / 2)}
    layers = [same, shifted, other]
    edges = np.linspace(0, 3, 50)
    hists = [np.histogram(np.abs(layer["omega"]), bins=edges, density=True)[0] for layer in layers]
    matrix = bands.coherence(layers)
    assert matrix.shape == (3, 3)
    assert matrix[0, 1] == pytest.approx(1.0)
    assert matrix[0, 2] == pytest.approx(np.corrcoef(hists[0], hists[2])[0, 1])
    assert matrix[0, 2] < 0.1

    traces = bands.channel_traces([other], seed=0)
    t = np.linspace(0, 4 * math.pi, 500)
    assert traces[0][0] == pytest.approx(np.sin(2.5 * t + math.pi / 2))  # 20 neurons of one wave: that wave
    assert traces[0][1] == pytest.approx(2.5)

    spots = bands.topography([same, other])
    # on an arc from 0.2 pi to 0.8 pi, radius 0.8 + 0.3 i / n, squashed by 0.9 in y
    assert spots[0][:2] == pytest.approx((0.8 * math.cos(0.2 * math.pi), 0.9 * 0.8 * math.sin(0.2 * math.pi)))
    assert spots[1][:2] == pytest.approx((0.95 * math.cos(0.8 * math.pi), 0.9 * 0.95 * math.sin(0.8 * math.pi)))
    assert spots[1][2:] == pytest.approx((0.0, 2.5))  # std and mean of omega


def test_the_five_figures(tmp_path):
    rng = np.random.default_rng(1)
    layers = [{"omega": rng.normal(1.0, 0.5, 128), "phi": rng.normal(0, 0.3, 128)} for _ in range(3)]
    runs = [("pretrained", layers), ("fine-tuned", [{k: v + 0.05 for k, v in layer.items()} for layer in layers])]
    written = []
    for name, draw in bands.figures(runs):
        draw(str(tmp_path / name))
        written.append(name)
    assert written == ["eeg_power_spectrum.png", "band_power_comparison.png", "eeg_channels.png",
                       "brain_topography.png", "coherence_heatmap.png"]
    for name in written:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name


def known_checkpoint(path, omegas):
    """A tiny model (2 layers of 128 neurons) whose every layer holds omegas, repeated."""
    model = GPT(tiny_config())
    with torch.no_grad():
        for block in model.transformer.h:
            a = block.mlp.activation
            a.omega.copy_(torch.tensor(omegas, dtype=torch.float32).repeat(a.omega.numel() // len(omegas)))
    save_checkpoint(checkpoint_dict(model), path)
    return path


def analyze(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "analyze_bio.py"), *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_bands_command_line_prints_the_table(tmp_path):
    # 16 values (128 neurons a layer = 8 repeats): 2 Delta, 2 Theta, 8 Alpha, 2 Beta, 1 Gamma, 1 other
    omegas = [0.1, -0.3, 0.5, 0.7, 0.9, 1.0, 1.0, 1.1, -1.0, 0.95, 0.85, 1.15, 1.3, -1.5, 2.0, 3.2]
    r = analyze(f"--ckpt={known_checkpoint(str(tmp_path / 'ckpt.pt'), omegas)}", "--bands")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()
            if line.split() and line.split()[0] in {"Delta", "Theta", "Alpha", "Beta", "Gamma", "other"}}
    # columns: band, |omega| range, EEG name (1 or 2 words), neurons, share, share of the banded
    expected = {"Delta": (2, 15), "Theta": (2, 15), "Alpha": (8, 15), "Beta": (2, 15), "Gamma": (1, 15)}
    for band, (count, banded) in expected.items():
        assert rows[band][-3:] == [f"{count * 16}", f"{count / 16:.2%}", f"{count / banded:.2%}"], rows[band]
    assert rows["other"][-3:] == ["16", f"{1 / 16:.2%}", "-"]
    assert "256 neurons, dominant band Alpha" in r.stdout


def test_bands_on_a_gelu_checkpoint_is_one_error_line(tmp_path):
    path = str(tmp_path / "gelu.pt")
    save_checkpoint(checkpoint_dict(GPT(tiny_config(use_bio_mlp=False))), path)
    r = analyze(f"--ckpt={path}", "--bands", f"--plots={tmp_path / 'plots'}")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: ") and "no oscillating neurons" in r.stderr
    assert not (tmp_path / "plots").exists()
