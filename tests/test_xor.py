"""Protects xor_bio.py and the claim behind it: ONE oscillating neuron (model_bio's own
activation and init) solves XOR on at least 9 of the 10 default seeds 0..9, while GELU, ReLU
and tanh neurons never exceed 75% on any seed (a monotonic function of a linear projection is
a linear classifier); the report and the decision-curve PNG are produced; bad settings are
one clear error."""

import pytest

import xor_bio
from wigglegpt.common import UserError


@pytest.fixture(scope="module")
def results():
    return xor_bio.run_all(seeds=range(10))  # the script's defaults: seeds 0..9, 500 steps, lr 0.1


def test_oscillating_neuron_solves_xor(results):
    osc = results["oscillating"]
    assert osc["seeds"] == list(range(10))
    assert sum(a == 1.0 for a in osc["accuracy"]) >= 9
    assert xor_bio.share_perfect(osc) >= 0.9
    # solved with a margin, not by a hair at the 0.5 threshold
    solved = [i for i, a in enumerate(osc["accuracy"]) if a == 1.0]
    assert max(osc["loss"][i] for i in solved) < 0.01


@pytest.mark.parametrize("name", ["gelu", "relu", "tanh"])
def test_monotonic_neurons_stay_at_or_below_75_percent(results, name):
    assert len(results[name]["accuracy"]) == 10
    assert max(results[name]["accuracy"]) <= 0.75
    assert xor_bio.share_perfect(results[name]) == 0.0


def test_seeds_are_independent_of_each_other():
    # training seeds side by side must give each seed the result it gets alone
    together = xor_bio.train_xor("oscillating", seeds=[3, 7], steps=200)
    alone = xor_bio.train_xor("oscillating", seeds=[7], steps=200)
    assert together["loss"][1] == pytest.approx(alone["loss"][0], rel=1e-4, abs=1e-7)
    assert together["w"][1].tolist() == pytest.approx(alone["w"][0].tolist(), rel=1e-4, abs=1e-6)


def test_report_and_plot(tmp_path, capsys):
    plot = tmp_path / "xor.png"
    xor_bio.main(["--seeds=3", "--steps=200", f"--plot={plot}"])
    out = capsys.readouterr().out
    assert "oscillating" in out and "relu" in out and "100% seeds" in out
    data = plot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="seeds"):
        xor_bio.main(["--seeds=0"])
    with pytest.raises(UserError, match="lr"):
        xor_bio.main(["--lr=-1"])
