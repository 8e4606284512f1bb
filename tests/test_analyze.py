"""Protects analyze_bio.py: the model card's numbers for omega, phi, baseline and the sparse gate
are right on a checkpoint whose parameters we set by hand (mean, std, min, max, share
|omega| > 0.1, phi coverage after wrapping); the stability table between two checkpoints gets
the moved shares and linearized shares right; the original WiggleGPT format ('_orig_mod.'
keys, model_args, training config, tensor best_val_loss) analyzes, its best_val_loss printed as
the val loss at the last save when its config says always_save_checkpoint=True; a v2 checkpoint
(the original's key layout) counts both its oscillator sets, each with its own tables and bands;
the original's 2 x 2 and 2 x 3 figures have their panels in place with the right counts; --plots
writes PNGs; a GELU model or checkpoints of different shapes give one clear error line (exit 2,
no traceback)."""

import math
import os
import subprocess
import sys

import pytest
import torch

import analyze_bio
from wigglegpt.checkpoint import checkpoint_dict, save_checkpoint
from conftest import ROOT, tiny_config
from model_bio import GPT
from wigglegpt.common import UserError

HIDDEN = 160  # n_embd 40: 25% (40) and 10% (16) of a layer's neurons are whole numbers


def known_model(**overrides):
    """Two layers of 160 neurons with hand-set parameters:
    layer 0: omega 0.5 (80 neurons) and 1.5 (80); phi: one neuron in the middle of each of
             the 36 bins of [-pi, pi), the rest 0; baseline 0.25
    layer 1: omega 0.0 (40, linearized) and 2.0 (120); phi 0.3, but 20 neurons at 0.3 + 2 pi
             (the same phase once wrapped); baseline -0.25
    """
    model = GPT(tiny_config(n_embd=40, **overrides))
    with torch.no_grad():
        a0, a1 = (b.mlp.activation for b in model.transformer.h)
        a0.omega.copy_(torch.tensor([0.5] * 80 + [1.5] * 80))
        centres = [-math.pi + (k + 0.5) * 2 * math.pi / 36 for k in range(36)]
        a0.phi.copy_(torch.tensor(centres + [0.0] * (HIDDEN - 36)))
        a0.baseline.fill_(0.25)
        a1.omega.copy_(torch.tensor([0.0] * 40 + [2.0] * 120))
        a1.phi.copy_(torch.tensor([0.3] * 140 + [0.3 + 2 * math.pi] * 20))
        a1.baseline.fill_(-0.25)
    return model


def shifted(model):
    """The same model after a 'fine-tune' that moved, in each layer, omega of neurons 40..79
    by +0.2 (25%) and of 80..95 by +0.6 (10%), and phi of neurons 100..115 by +0.3 (10%)."""
    with torch.no_grad():
        for block in model.transformer.h:
            a = block.mlp.activation
            a.omega[40:80] += 0.2
            a.omega[80:96] += 0.6
            a.phi[100:116] += 0.3
    return model


@pytest.fixture
def ckpts(tmp_path):
    torch.manual_seed(0)
    model = known_model()
    before = str(tmp_path / "before.pt")
    save_checkpoint(checkpoint_dict(model, train_config={"iter_num": 250, "best_val_loss": 4.5}), before)
    after = str(tmp_path / "after.pt")
    save_checkpoint(checkpoint_dict(shifted(model)), after)
    return before, after


def test_card_statistics_on_known_parameters(ckpts):
    neurons = analyze_bio.load_neurons(ckpts[0])
    assert [s["name"] for s in neurons["sets"]] == ["mlp.activation"]
    stats = analyze_bio.analyze(neurons["sets"][0]["layers"])
    l0, l1, overall = stats["layers"][0], stats["layers"][1], stats["overall"]

    assert l0["omega"]["mean"] == pytest.approx(1.0)
    assert l0["omega"]["std"] == pytest.approx(0.5)
    assert (l0["omega"]["min"], l0["omega"]["max"]) == pytest.approx((0.5, 1.5))
    assert l0["omega"]["active_share"] == 1.0
    assert l1["omega"]["mean"] == pytest.approx(1.5)
    assert l1["omega"]["std"] == pytest.approx(math.sqrt(0.75))
    assert l1["omega"]["active_share"] == pytest.approx(0.75)
    assert l1["omega"]["linear_share"] == pytest.approx(0.25)
    assert overall["omega"]["mean"] == pytest.approx(400 / 320)
    assert overall["omega"]["active_share"] == pytest.approx(280 / 320)
    assert (overall["omega"]["min"], overall["omega"]["max"]) == pytest.approx((0.0, 2.0))
    assert overall["omega"]["std"] == pytest.approx(0.75)  # sqrt(680/320 - 1.25^2)
    assert overall["omega"]["n"] == 320

    # every bin of [-pi, pi) holds a neuron in layer 0; wrapping puts all of layer 1 in one bin
    assert l0["phi"]["coverage"] == 1.0
    assert l1["phi"]["coverage"] == pytest.approx(1 / 36)
    assert l1["phi"]["range"] == pytest.approx(2 * math.pi, abs=1e-5)
    assert l1["phi"]["mean"] == pytest.approx(0.3 + 2 * math.pi * 20 / 160, abs=1e-5)
    assert overall["phi"]["coverage"] == 1.0

    assert l0["baseline"]["mean"] == pytest.approx(0.25)
    assert overall["baseline"]["mean"] == pytest.approx(0.0)
    assert overall["baseline"]["std"] == pytest.approx(0.25)
    assert "gate_weight" not in overall
    assert neurons["info"]["iter_num"] == 250


def test_stability_shares(ckpts):
    a, b = (analyze_bio.load_neurons(p)["sets"][0]["layers"] for p in ckpts)
    cmp = analyze_bio.compare(a, b)
    for group in [cmp["overall"], *cmp["layers"]]:
        om, ph = group["omega"], group["phi"]
        assert om["moved"][0.1] == pytest.approx(0.35)
        assert om["moved"][0.5] == pytest.approx(0.10)
        assert om["mean_abs_change"] == pytest.approx((40 * 0.2 + 16 * 0.6) / 160)
        assert om["max_abs_change"] == pytest.approx(0.6)
        assert om["change"]["mean"] == pytest.approx((40 * 0.2 + 16 * 0.6) / 160)
        assert ph["moved"][0.1] == pytest.approx(0.10)
        assert ph["moved"][0.5] == 0.0
    o = cmp["overall"]
    assert o["linear_before"] == pytest.approx(40 / 320)
    assert o["linear_after"] == pytest.approx(40 / 320)  # the shifted neurons were not the linear ones
    assert o["omega"]["before"]["max"] == pytest.approx(2.0)
    assert o["omega"]["after"]["max"] == pytest.approx(2.6)
    assert o["omega"]["change"]["max"] == pytest.approx(0.6)
    assert cmp["layers"][1]["linear_before"] == pytest.approx(0.25)


def test_linearized_share_follows_omega():
    before = [dict(omega=torch.tensor([1.0, 1.0, 0.05, 1.0]).double().numpy(),
                   phi=torch.zeros(4).double().numpy())]
    after = [dict(omega=torch.tensor([0.0, -0.05, 0.05, 1.0]).double().numpy(),
                  phi=torch.zeros(4).double().numpy())]
    s = analyze_bio.compare(before, after)["overall"]
    assert (s["linear_before"], s["linear_after"]) == (0.25, 0.75)
    assert s["omega"]["moved"][0.5] == 0.5  # 1.0 -> 0.0 and 1.0 -> -0.05


def test_script_prints_card_stability_and_writes_plots(ckpts, tmp_path):
    plots = tmp_path / "plots"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "analyze_bio.py"), f"--ckpt={ckpts[0]}",
                        f"--compare={ckpts[1]}", f"--plots={plots}"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "iter 250" in out and "best val loss 4.5000" in out
    all_layers = next(line for line in out.splitlines() if line.strip().startswith("all layers"))
    assert all_layers.split()[2:] == ["1.2500", "0.7500", "0.0000", "2.0000", "87.5%"]  # the omega table
    assert "neurons whose omega moved > 0.1: 35.00%" in out
    assert "neurons whose omega moved > 0.5: 10.00%" in out
    assert "linearized neurons (|omega| < 0.1): 12.50% before, 12.50% after" in out
    for name in ("omega_phi_hist.png", "omega_phi_layers.png", "activations.png"):
        data = (plots / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name


def test_original_format_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    model = known_model(use_sparse_gate=True)
    with torch.no_grad():
        for block in model.transformer.h:
            block.mlp.gate_weight.fill_(2.0)
            block.mlp.gate_bias.copy_(torch.linspace(-1, 1, HIDDEN))
    cfg = model.config
    model_args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                      bias=cfg.bias, vocab_size=cfg.vocab_size, dropout=0.0, use_bio_mlp=True,
                      use_rmsnorm=True, use_rope=True, use_sparse_gate=True)
    path = str(tmp_path / "ckpt_pretrain.pt")
    torch.save({"model": {"_orig_mod." + k: v for k, v in model.state_dict().items()},
                "model_args": model_args, "iter_num": 600000, "best_val_loss": torch.tensor(3.1621),
                "config": {**model_args, "dataset": "openwebtext", "learning_rate": 6e-4, "compile": True,
                           "always_save_checkpoint": True}}, path)  # the original train_bio.py's default
    result = analyze_bio.main([f"--ckpt={path}"])
    out = capsys.readouterr().out
    # with always_save_checkpoint=True the original stored every save's val loss as best_val_loss
    assert "original WiggleGPT format, iter 600000, val loss at the last save 3.1621" in out
    assert "best val loss" not in out
    assert "sparse gate on" in out
    overall = result["sets"][0]["stats"]["overall"]
    assert overall["omega"]["mean"] == pytest.approx(1.25)
    assert overall["gate_weight"]["mean"] == pytest.approx(2.0)
    assert overall["gate_bias"]["min"] == pytest.approx(-1.0)
    assert overall["gate_bias"]["max"] == pytest.approx(1.0)
    assert overall["gate_bias"]["mean"] == pytest.approx(0.0, abs=1e-6)


def test_val_loss_label_follows_always_save_checkpoint():
    original = {"model": {}, "model_args": {}, "best_val_loss": torch.tensor(3.5)}
    last = analyze_bio.checkpoint_info({**original, "config": {"always_save_checkpoint": True}})
    assert last["val_loss_label"] == "val loss at the last save" and last["val_loss"] == pytest.approx(3.5)
    for config in ({"always_save_checkpoint": False}, {"dataset": "smoltalk2"}):  # its HF fine-tune kept a real best
        assert analyze_bio.checkpoint_info({**original, "config": config})["val_loss_label"] == "best val loss"
    ours = checkpoint_dict(GPT(tiny_config()), best_val_loss=2.0, train_config={"always_save_checkpoint": True})
    assert analyze_bio.checkpoint_info(ours)["val_loss_label"] == "best val loss"  # this project keeps the best


def v2_original_checkpoint(path, n_layer=2, n_embd=16):
    """A v2 checkpoint as WiggleGPT-V2-OLD's train_bio.py saved it (its key layout from
    test_checkpoint.v2_state_dict), with known oscillators: in every layer the MLP's own set
    (mlp.oscillating) at omega 0.9, the sparse event layer's set (mlp.sparse_gate.activation) at
    omega 0.2, 1.0, 2.5 and 3.5 for a quarter of its 4 * n_embd neurons each."""
    from test_checkpoint import v2_state_dict
    H = 4 * n_embd
    sd = v2_state_dict(n_layer, n_embd, 80, 24, False, torch.Generator().manual_seed(0))
    for i in range(n_layer):
        sd[f"transformer.h.{i}.mlp.oscillating.omega"] = torch.full((H,), 0.9)
        gate_omega = torch.tensor([0.2, 1.0, 2.5, 3.5]).repeat_interleave(H // 4)
        sd[f"transformer.h.{i}.mlp.sparse_gate.activation.omega"] = gate_omega
        sd[f"transformer.h.{i}.mlp.sparse_gate.activation.phi"] = torch.full((H,), 0.5)
    model_args = dict(n_layer=n_layer, n_head=2, n_embd=n_embd, block_size=24, bias=False, vocab_size=80,
                      dropout=0.0, use_bio_mlp=True, bio_compartments=4, bio_threshold=0.25)
    torch.save({"model": {"_orig_mod." + k: v for k, v in sd.items()}, "model_args": model_args,
                "iter_num": 200000, "best_val_loss": torch.tensor(3.587),
                "config": {**model_args, "always_save_checkpoint": True}}, path)
    return path


def test_v2_checkpoint_counts_both_oscillator_sets(tmp_path, capsys):
    path = v2_original_checkpoint(str(tmp_path / "ckpt_v2.pt"))
    neurons = analyze_bio.load_neurons(path)
    assert [s["name"] for s in neurons["sets"]] == ["mlp.oscillating", "mlp.sparse_gate.activation"]
    first, second = (s["layers"] for s in neurons["sets"])
    assert all((layer["omega"] == pytest.approx(0.9)) for layer in first)
    assert all(layer["omega"].size == 64 for layer in first + second)

    result = analyze_bio.main([f"--ckpt={path}", "--bands"])
    out = capsys.readouterr().out
    assert "2 layers x 2 oscillator sets x 64 neurons = 256 oscillating neurons" in out
    assert "val loss at the last save 3.5870" in out
    assert "=== oscillator set 1 of 2: mlp.oscillating" in out
    assert "=== oscillator set 2 of 2: mlp.sparse_gate.activation" in out
    gate = result["sets"][1]
    assert gate["name"] == "mlp.sparse_gate.activation"
    assert gate["stats"]["overall"]["omega"]["n"] == 128
    assert gate["stats"]["overall"]["omega"]["mean"] == pytest.approx((0.2 + 1.0 + 2.5 + 3.5) / 4)
    assert gate["stats"]["overall"]["phi"]["mean"] == pytest.approx(0.5)
    assert result["sets"][0]["stats"]["overall"]["omega"]["mean"] == pytest.approx(0.9)
    # the bands of each set: all of the first in Alpha; the second a quarter each in Delta, Alpha, Gamma, other
    assert result["sets"][0]["bands"][0]["share"] == pytest.approx([0, 0, 1, 0, 0])
    assert result["sets"][1]["bands"][0]["share"] == pytest.approx([0.25, 0, 0.25, 0, 0.25])
    assert result["sets"][1]["bands"][0]["other"] == 32
    assert ("EEG-style bands of |omega| (the original's analyze_brainwaves.py), oscillator set "
            "mlp.sparse_gate.activation:") in out
    # the first set's figures in the plots folder, each further set's in a folder of its own
    assert analyze_bio.set_folder("plots", neurons, 0) == "plots"
    assert analyze_bio.set_folder("plots", neurons, 1) == os.path.join("plots", "sparse_gate.activation")
    runs = analyze_bio.set_runs([("v2", neurons)], 1)
    assert runs[0][0] == "v2 [mlp.sparse_gate.activation]" and runs[0][1] is second


def test_the_original_2x2_and_2x3_figures(ckpts):
    import matplotlib.pyplot as plt
    before, after = (analyze_bio.load_neurons(p)["sets"][0]["layers"] for p in ckpts)
    fig = analyze_bio.figure_wiggle_analysis(before, "before")
    try:
        assert len(fig.axes) == 4
        assert {ax.get_subplotspec().get_geometry()[:2] for ax in fig.axes} == {(2, 2)}
        hist, phases, deviation, scatter = fig.axes  # row by row, as the original draws them
        assert "frequencies (omega)" in hist.get_title() and "phases (phi)" in phases.get_title()
        assert "omega - 1" in deviation.get_title() and "omega vs phi" in scatter.get_title()
        assert sum(p.get_height() for p in hist.patches) == 320  # every neuron of both layers, once
        assert "learned mean (1.250)" in hist.get_legend_handles_labels()[1]
        assert "init mean (1)" in hist.get_legend_handles_labels()[1]
        assert scatter.collections[0].get_offsets().shape == (320, 2)
    finally:
        plt.close(fig)

    fig = analyze_bio.figure_wiggle_finetune_analysis(before, after, ["pre", "fine"])
    try:
        assert len(fig.axes) == 6
        assert {ax.get_subplotspec().get_geometry()[:2] for ax in fig.axes} == {(2, 3)}
        titles = [ax.get_title() for ax in fig.axes]
        assert titles[0] == "omega distribution" and titles[1] == "phi distribution"
        assert "drift" in titles[2] and titles[3].startswith("omega: before vs after")
        assert titles[4].startswith("phi: before vs after") and titles[5] == "fine: omega vs phi"
        drift = fig.axes[2].patches  # 80 bars of omega's drift, then 80 of phi's
        assert len(drift) == 160
        assert sum(p.get_height() for p in drift[:80]) == 320 and sum(p.get_height() for p in drift[80:]) == 320
        # the omega density integrates to 1 for each checkpoint
        widths = [p.get_width() * p.get_height() for p in fig.axes[0].patches]
        assert sum(widths) == pytest.approx(2.0)
    finally:
        plt.close(fig)


def test_gelu_model_is_one_clear_error(tmp_path):
    path = str(tmp_path / "gelu.pt")
    save_checkpoint(checkpoint_dict(GPT(tiny_config(use_bio_mlp=False))), path)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "analyze_bio.py"), f"--ckpt={path}"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "no oscillating neurons" in r.stderr


def test_different_shapes_and_missing_inputs_are_user_errors(ckpts, tmp_path):
    other = str(tmp_path / "three_layers.pt")
    save_checkpoint(checkpoint_dict(GPT(tiny_config(n_layer=3, n_embd=40))), other)
    with pytest.raises(UserError, match="different shapes"):
        analyze_bio.main([f"--ckpt={ckpts[0]}", f"--compare={other}"])
    with pytest.raises(UserError, match="--ckpt"):
        analyze_bio.main([])
    with pytest.raises(UserError, match="not found"):
        analyze_bio.main([f"--ckpt={tmp_path / 'missing.pt'}"])


def test_near_init_share_and_the_original_figures(ckpts, tmp_path, capsys):
    omega = torch.tensor([1.0, 1.19, 0.81, 1.25, 0.5, -1.0]).double().numpy()
    assert analyze_bio.near_init_share(omega) == pytest.approx(3 / 6)
    assert analyze_bio.omega_stats(omega)["near_init_share"] == pytest.approx(3 / 6)

    # layer 0's omegas are 0.5 and 1.5, layer 1's 0.0 and 2.0: none is near init
    plots = tmp_path / "plots"
    result = analyze_bio.main([f"--ckpt={ckpts[0]}", f"--compare={ckpts[1]}", f"--plots={plots}"])
    out = capsys.readouterr().out
    assert "near init: 0.00% of neurons have |omega - 1| < 0.2 (per layer: 0.0%, 0.0%)" in out
    assert result["sets"][0]["stats"]["overall"]["omega"]["near_init_share"] == 0.0
    for name in ("omega_phi_scatter.png", "omega_deviation.png", "drift_hist.png", "before_after_scatter.png"):
        data = (plots / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
        assert f"wrote {plots / name}" in out

    single = tmp_path / "single"
    analyze_bio.main([f"--ckpt={ckpts[0]}", f"--plots={single}"])
    assert (single / "omega_phi_scatter.png").exists() and not (single / "drift_hist.png").exists()
