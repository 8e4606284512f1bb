"""Protects checkpoint_bio.py: our checkpoints round-trip to identical logits and rebuild with
GPTConfig(**ckpt['config']); the original WiggleGPT format (model_args, training config under
'config', '_orig_mod.' keys, tensor best_val_loss) loads with legacy_rope on; bad files give
one clear error; a save is atomic."""

import errno
import os
import pickle

import pytest
import torch

from checkpoint_bio import (CheckpointError, checkpoint_dict, clean_state_dict, load_checkpoint,
                            load_model, save_checkpoint)
from conftest import tiny_config
from model_bio import GPT, GPTConfig


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
