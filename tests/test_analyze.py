"""Protects analyze_bio.py: the model card's numbers for omega, phi, baseline and the sparse gate
are right on a checkpoint whose parameters we set by hand (mean, std, min, max, share
|omega| > 0.1, phi coverage after wrapping); the stability table between two checkpoints gets
the moved shares and linearized shares right; the original WiggleGPT format ('_orig_mod.'
keys, model_args, training config, tensor best_val_loss) analyzes; --plots writes PNGs; a GELU
model or checkpoints of different shapes give one clear error line (exit 2, no traceback)."""

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
    stats = analyze_bio.analyze(neurons["layers"])
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
    a, b = (analyze_bio.load_neurons(p) for p in ckpts)
    cmp = analyze_bio.compare(a["layers"], b["layers"])
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
                "config": {**model_args, "dataset": "openwebtext", "learning_rate": 6e-4, "compile": True}}, path)
    result = analyze_bio.main([f"--ckpt={path}"])
    out = capsys.readouterr().out
    assert "original WiggleGPT format, iter 600000, best val loss 3.1621" in out
    assert "sparse gate on" in out
    overall = result["stats"]["overall"]
    assert overall["omega"]["mean"] == pytest.approx(1.25)
    assert overall["gate_weight"]["mean"] == pytest.approx(2.0)
    assert overall["gate_bias"]["min"] == pytest.approx(-1.0)
    assert overall["gate_bias"]["max"] == pytest.approx(1.0)
    assert overall["gate_bias"]["mean"] == pytest.approx(0.0, abs=1e-6)


def test_v2_event_layer_checkpoint_reads_the_mlp_neurons(tmp_path):
    model = GPT(tiny_config(use_sparse_gate=True, sparse_gate_kind="event_layer"))
    with torch.no_grad():
        for block in model.transformer.h:
            block.mlp.oscillating.omega.fill_(0.75)
            block.mlp.sparse_gate.activation.omega.fill_(3.0)  # the gate's own neurons: not these
    path = str(tmp_path / "v2.pt")
    save_checkpoint(checkpoint_dict(model), path)
    neurons = analyze_bio.load_neurons(path)
    assert all((layer["omega"] == 0.75).all() for layer in neurons["layers"])


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
    assert result["stats"]["overall"]["omega"]["near_init_share"] == 0.0
    for name in ("omega_phi_scatter.png", "omega_deviation.png", "drift_hist.png", "before_after_scatter.png"):
        data = (plots / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
        assert f"wrote {plots / name}" in out

    single = tmp_path / "single"
    analyze_bio.main([f"--ckpt={ckpts[0]}", f"--plots={single}"])
    assert (single / "omega_phi_scatter.png").exists() and not (single / "drift_hist.png").exists()
