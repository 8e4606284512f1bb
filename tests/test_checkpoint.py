"""Protects wigglegpt/checkpoint.py: our checkpoints round-trip to identical logits and rebuild with
GPTConfig(**ckpt['config']); the original WiggleGPT format (model_args, training config under
'config', '_orig_mod.' keys, tensor best_val_loss) loads with legacy_rope on; bad files give
one clear error; a save is atomic; a v2 file (the 45.31M sparse model: event-layer gate,
LayerNorm, learned positions) loads and gives the logits of an independent v2 forward."""

import errno
import math
import os
import pickle

import pytest
import torch

from wigglegpt.checkpoint import (CheckpointError, checkpoint_dict, clean_state_dict, load_checkpoint,
                            load_model, save_checkpoint)
from conftest import tiny_config
from model_bio import GPT, GPTConfig
import torch.nn.functional as F


def original_format_checkpoint(model, compiled_keys=True):
    """A checkpoint shaped like the one the original WiggleGPT train_bio.py wrote."""
    cfg = model.config
    model_args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                      bias=cfg.bias, vocab_size=cfg.vocab_size, dropout=cfg.dropout, use_bio_mlp=cfg.use_bio_mlp,
                      use_rmsnorm=cfg.use_rmsnorm, use_rope=cfg.use_rope, gradient_checkpointing=False)
    prefix = "_orig_mod." if compiled_keys else ""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return {
        "model": {prefix + k: v for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "model_args": model_args,
        "iter_num": 600000,
        "best_val_loss": torch.tensor(3.1621),
        "config": {**model_args, "dataset": "openwebtext", "batch_size": 2, "learning_rate": 6e-4,
                   "betas": (0.9, 0.95), "compile": True, "wandb_log": False},
    }


def test_round_trip_gives_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = GPT(tiny_config(use_sparse_gate=True)).eval()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(checkpoint_dict(model, iter_num=7), str(path))
    loaded, ckpt = load_model(str(path))
    idx = torch.randint(0, 96, (2, 12))
    assert torch.equal(model(idx, idx)[0], loaded.eval()(idx, idx)[0])
    assert ckpt["iter_num"] == 7
    # the model card's usage line works on our checkpoints
    raw = torch.load(path, weights_only=True)
    assert GPTConfig(**raw["config"]) == model.config == GPTConfig(**raw["model_args"])
    assert not any(k.startswith("_orig_mod.") for k in raw["model"])
    assert raw["config"]["legacy_rope"] is False


def test_compiled_model_is_saved_without_prefix(tmp_path):
    model = GPT(tiny_config())
    compiled = torch.compile(model)
    ckpt = checkpoint_dict(compiled)
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])


@pytest.mark.parametrize("compiled_keys", [True, False])
def test_original_format_loads_with_legacy_rope(tmp_path, compiled_keys):
    torch.manual_seed(0)
    # the published models: RoPE on, which in their code meant no positional signal
    legacy = GPT(tiny_config(bias=False, legacy_rope=True)).eval()
    path = tmp_path / "ckpt_pretrain.pt"
    torch.save(original_format_checkpoint(legacy, compiled_keys), path)
    loaded, ckpt = load_model(str(path))
    assert loaded.config.legacy_rope is True and loaded.config.use_rope is True
    idx = torch.randint(0, 96, (1, 10))
    assert torch.equal(legacy(idx, idx)[0], loaded.eval()(idx, idx)[0])
    assert loaded(torch.tensor([[5]]))[0].shape == (1, 1, 96)  # a 1-token prompt works
    assert float(ckpt["best_val_loss"]) == pytest.approx(3.1621)


def test_original_format_gelu_baseline_uses_original_defaults(tmp_path):
    model = GPT(tiny_config(bias=True, use_bio_mlp=False, use_rmsnorm=False, use_rope=False))
    ckpt = original_format_checkpoint(model)
    for key in ("bias", "use_bio_mlp", "use_rmsnorm", "use_rope"):
        del ckpt["model_args"][key]  # an older file without these fields: original defaults apply
    path = tmp_path / "old.pt"
    torch.save(ckpt, path)
    loaded, _ = load_model(str(path))
    assert loaded.config.use_rope is False and loaded.config.legacy_rope is False
    assert loaded.config.bias is True


def test_clean_state_dict_strips_prefixes_and_mask_buffer():
    sd = {"_orig_mod.transformer.wte.weight": 1, "module._orig_mod.lm_head.weight": 2,
          "transformer.h.0.attn.bias": 3, "transformer.h.0.attn.c_attn.bias": 4}
    assert clean_state_dict(sd) == {"transformer.wte.weight": 1, "lm_head.weight": 2,
                                    "transformer.h.0.attn.c_attn.bias": 4}


class NotAllowed:
    pass


def test_bad_checkpoints_give_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "nope.pt"))
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(str(tmp_path))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(str(garbage))
    truncated = tmp_path / "truncated.pt"
    save_checkpoint(checkpoint_dict(GPT(tiny_config())), str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(str(truncated))
    unsafe = tmp_path / "unsafe.pt"
    with open(unsafe, "wb") as f:
        pickle.dump({"model": NotAllowed()}, f, protocol=2)  # weights_only refuses arbitrary objects
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(str(unsafe))
    no_model = tmp_path / "no_model.pt"
    torch.save({"weights": {}}, no_model)
    with pytest.raises(CheckpointError, match="no 'model' weights"):
        load_checkpoint(str(no_model))


def test_a_checkpoint_cut_off_anywhere_is_one_clear_error(tmp_path):
    # a copy that stopped part way (a full disk elsewhere, an interrupted download or scp), at
    # offsets all through the file: the zip header, the pickle, the tensors, the directory at the end
    whole_path = tmp_path / "whole.pt"
    save_checkpoint(checkpoint_dict(GPT(tiny_config()), iter_num=3), str(whole_path))
    whole = whole_path.read_bytes()
    cut = tmp_path / "cut.pt"
    offsets = sorted({0, 1, 2, 3, 4, 30, 100, len(whole) - 22, len(whole) - 1,
                      *range(512, len(whole), max(1, len(whole) // 40))})
    for n in offsets:
        cut.write_bytes(whole[:n])
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(str(cut))
        message = str(info.value)
        assert "\n" not in message and "not a readable PyTorch checkpoint: cut off" in message, (n, message)
    assert load_checkpoint(str(whole_path))["iter_num"] == 3


def test_weights_that_do_not_fit_the_config(tmp_path):
    model = GPT(tiny_config())
    ckpt = checkpoint_dict(model)
    ckpt["config"]["n_embd"] = 64
    path = tmp_path / "mismatch.pt"
    save_checkpoint(ckpt, str(path))
    with pytest.raises(CheckpointError, match="do not fit its config"):
        load_model(str(path))
    ckpt = checkpoint_dict(model)
    del ckpt["model"]["lm_head.weight"], ckpt["model"]["transformer.wte.weight"]
    save_checkpoint(ckpt, str(path))
    with pytest.raises(CheckpointError, match="missing transformer.wte.weight|missing lm_head"):
        load_model(str(path))
    ckpt = checkpoint_dict(model)
    ckpt["config"]["n_layers"] = 3
    save_checkpoint(ckpt, str(path))
    with pytest.raises(CheckpointError, match="unknown model config field"):
        load_model(str(path))


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    model = GPT(tiny_config())
    save_checkpoint(checkpoint_dict(model, iter_num=1), str(path))

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(CheckpointError, match=r"could not write .*ckpt\.pt: No space left on device; free some disk"):
        save_checkpoint(checkpoint_dict(model, iter_num=2), str(path))
    assert load_checkpoint(str(path))["iter_num"] == 1  # the previous checkpoint survives
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def v2_state_dict(n_layer, n_embd, vocab, block_size, bias, generator):
    """Random weights under the key layout of WiggleGPT-V2-OLD/model_bio.py (BioMLP with its
    SparseEventLayer), made without this project's model."""
    rand = lambda *shape, std=0.3: torch.randn(*shape, generator=generator) * std
    H = 4 * n_embd
    sd = {"transformer.wte.weight": rand(vocab, n_embd), "transformer.wpe.weight": rand(block_size, n_embd),
          "transformer.ln_f.weight": 1 + rand(n_embd, std=0.1)}
    linears = {"attn.c_attn": (3 * n_embd, n_embd), "attn.c_proj": (n_embd, n_embd), "mlp.c_fc": (H, n_embd),
               "mlp.sparse_gate.gate": (H, H), "mlp.sparse_gate.transform": (H, H), "mlp.c_proj": (n_embd, H)}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        for name, shape in linears.items():
            wide = 6 if name.endswith(".gate") else 1  # voltages spread on both sides of the threshold
            sd[p + name + ".weight"] = rand(*shape, std=wide / math.sqrt(shape[1]))
            if bias:
                sd[p + name + ".bias"] = rand(shape[0], std=0.1)
        for ln in ("ln_1", "ln_2"):
            sd[p + ln + ".weight"] = 1 + rand(n_embd, std=0.1)
            if bias:
                sd[p + ln + ".bias"] = rand(n_embd, std=0.1)
        for osc in ("mlp.oscillating", "mlp.sparse_gate.activation"):
            sd[p + osc + ".omega"] = 1 + rand(H)
            sd[p + osc + ".phi"] = rand(H)
            sd[p + osc + ".baseline"] = rand(H, std=0.1)
    if bias:
        sd["transformer.ln_f.bias"] = rand(n_embd, std=0.1)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]  # tied
    return sd


def v2_reference_logits(sd, idx, n_layer, n_head, threshold):
    """The v2 forward written out from its description: LayerNorm (eps 1e-5), learned
    positions, causal attention, c_fc -> oscillate -> sparse event layer -> c_proj."""
    get = lambda key: sd.get(key)
    linear = lambda x, name: F.linear(x, sd[name + ".weight"], get(name + ".bias"))
    oscillate = lambda x, name: torch.sin(sd[name + ".omega"] * x + sd[name + ".phi"]) * torch.tanh(x) + sd[name + ".baseline"]
    norm = lambda x, name: F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], get(name + ".bias"), 1e-5)
    B, T = idx.shape
    firing = []  # per layer: the share of voltages above the threshold (v2's "sparsity")
    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    C = x.shape[-1]
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        q, k, v = linear(norm(x, p + "ln_1"), p + "attn.c_attn").split(C, dim=2)
        q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(C // n_head)
        scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
        x = x + linear(y, p + "attn.c_proj")
        h = oscillate(linear(norm(x, p + "ln_2"), p + "mlp.c_fc"), p + "mlp.oscillating")
        voltage = torch.sigmoid(linear(h, p + "mlp.sparse_gate.gate"))
        firing.append((voltage > threshold).float().mean().item())
        gated = h * torch.sigmoid((voltage - threshold) * 5.0)
        h = oscillate(linear(gated, p + "mlp.sparse_gate.transform"), p + "mlp.sparse_gate.activation")
        x = x + linear(h, p + "mlp.c_proj")
    x = norm(x, "transformer.ln_f")
    return x @ sd["lm_head.weight"].T, sum(firing) / len(firing)


@pytest.mark.parametrize("bias", [False, True])
def test_v2_sparse_checkpoint_loads_with_equal_logits(tmp_path, bias):
    n_layer, n_head, n_embd, vocab, block_size = 2, 2, 16, 80, 24
    sd = v2_state_dict(n_layer, n_embd, vocab, block_size, bias, torch.Generator().manual_seed(0))
    # what v2's train_bio.py saved: nanoGPT's fields plus its bio ones, no gate switch
    model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias,
                      vocab_size=vocab, dropout=0.0, use_bio_mlp=True, bio_compartments=4, bio_threshold=0.25)
    path = tmp_path / "ckpt_v2.pt"
    torch.save({"model": sd, "optimizer": {}, "model_args": model_args, "iter_num": 200000,
                "best_val_loss": torch.tensor(3.587), "config": {**model_args, "dataset": "openwebtext"}}, path)
    model, ckpt = load_model(str(path))
    cfg = model.config
    assert cfg.use_sparse_gate and cfg.sparse_gate_kind == "event_layer" and cfg.bio_threshold == 0.25
    assert not cfg.use_rope and not cfg.use_rmsnorm and cfg.bias is bias
    idx = torch.randint(0, vocab, (2, 20), generator=torch.Generator().manual_seed(1))
    expected, expected_firing = v2_reference_logits(sd, idx, n_layer, n_head, 0.25)
    model.eval()
    with torch.no_grad():
        logits, _ = model(idx, idx)
    assert torch.allclose(logits, expected, atol=1e-4), (logits - expected).abs().max()
    assert 0.05 < expected_firing < 0.95  # a figure that can tell firing from silent shares
    assert model.firing_share() == pytest.approx(expected_firing, abs=1e-3)
    # the original's count: every weight once (lm_head is wte), the position table left out
    assert model.get_num_params() == sum(t.numel() for k, t in sd.items()
                                         if k not in ("lm_head.weight", "transformer.wpe.weight"))
    assert float(ckpt["best_val_loss"]) == pytest.approx(3.587)
    # it resumes training as this project's format and reloads the same
    again = tmp_path / "again.pt"
    save_checkpoint(checkpoint_dict(model), str(again))
    reloaded, _ = load_model(str(again))
    assert torch.equal(reloaded.eval()(idx, idx)[0], logits)


def test_checkpoints_from_before_the_gate_kinds_load_as_the_lightweight_gate(tmp_path):
    torch.manual_seed(0)
    model = GPT(tiny_config(use_sparse_gate=True)).eval()
    ckpt = checkpoint_dict(model)
    for args in (ckpt["config"], ckpt["model_args"]):
        del args["sparse_gate_kind"]  # written before the field existed
    path = tmp_path / "old_sparse.pt"
    save_checkpoint(ckpt, str(path))
    loaded, _ = load_model(str(path))
    assert loaded.config.use_sparse_gate and loaded.config.sparse_gate_kind == "lightweight"
    idx = torch.randint(0, 96, (2, 12))
    assert torch.equal(model(idx, idx)[0], loaded.eval()(idx, idx)[0])
    # the original format with the per-unit gate and no switch for it in model_args
    legacy = GPT(tiny_config(use_sparse_gate=True, legacy_rope=True)).eval()
    path = tmp_path / "original_sparse.pt"
    torch.save(original_format_checkpoint(legacy), path)
    loaded, _ = load_model(str(path))
    assert loaded.config.use_sparse_gate and loaded.config.sparse_gate_kind == "lightweight"
    assert torch.equal(legacy(idx, idx)[0], loaded.eval()(idx, idx)[0])
