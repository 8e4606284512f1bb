"""
Checkpoints: the one place that writes and reads them, for every script.

This project's checkpoints are dicts with
    format        'wigglegpt-bio/1'
    model         the uncompiled module's state dict (no '_orig_mod.' prefix)
    config        the GPTConfig fields, so GPTConfig(**ckpt['config']) rebuilds the model
    model_args    the same dict, under the name the original code used
    train_config  the training settings, plus optimizer, scaler, iter_num, best_val_loss,
                  rng, sampler and wandb_run_id when written by train_bio.py

The original WiggleGPT files (the published ckpt_pretrain.pt / ckpt_finetune.pt) have
model_args for the model, the whole training config under 'config', and state-dict keys that
may carry torch.compile's '_orig_mod.' prefix. The v2 files (the 45.31M sparse model) also
have no switch for their gate: its weights (mlp.sparse_gate.*) say it is the event-layer gate.
Both formats load here, always with weights_only=True.
Writes are atomic (temporary file, fsync, rename): a crash mid-write never costs the last
good checkpoint.
"""

import os
from dataclasses import asdict, fields

import torch

from model_bio import GPT, GPTConfig
from wigglegpt import oscillate_triton  # noqa: F401  (registers the fused op wigglegpt::oscillate that GPT uses)
from wigglegpt.common import UserError, write_error

FORMAT = "wigglegpt-bio/1"

# GPTConfig defaults of the original code, for fields its older checkpoints may lack
ORIGINAL_DEFAULTS = dict(bias=True, use_bio_mlp=False, use_rmsnorm=False, use_rope=False,
                         gradient_checkpointing=False, dropout=0.0)


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable or does not fit its own config."""


def unwrap(model):
    """The plain GPT inside DDP and torch.compile wrappers (what checkpoints must hold)."""
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


def checkpoint_dict(model, **extra):
    """A checkpoint of this project's format for model, plus any extra fields."""
    model = unwrap(model)
    config = asdict(model.config)
    return {"format": FORMAT, "model": model.state_dict(), "config": config,
            "model_args": dict(config), **extra}


def save_checkpoint(ckpt, path, advice="run again"):
    """Write atomically: a temporary file in the same folder, flushed and fsynced, then renamed.
    A full disk or a folder without write permission is a CheckpointError (one line, naming the
    file and advice, what to do after fixing it); the previous file at path stays as it was and
    no temporary file is left."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
        if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as e:
        raise CheckpointError(str(write_error(path, e, advice))) from None
    finally:
        remove_quietly(tmp)  # also after Ctrl-C or any other failure mid-write


def remove_quietly(path):
    try:
        os.remove(path)
    except OSError:  # not there (the usual case), or the disk is gone: nothing more to do
        pass


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint dict safely (weights_only=True); every failure is one clear error."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder; give the checkpoint file (e.g. {os.path.join(path, 'ckpt.pt')})")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many kinds for truncated or foreign files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({reason[:200]})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path} is not a WiggleGPT checkpoint (no 'model' weights in it)")
    return ckpt


def is_original_format(ckpt):
    return ckpt.get("format") != FORMAT


def model_config(ckpt, path="checkpoint"):
    """The GPTConfig a checkpoint was trained with (original format: legacy_rope turned on)."""
    known = {f.name for f in fields(GPTConfig)}
    if is_original_format(ckpt):
        args = ckpt.get("model_args")
        if not isinstance(args, dict):
            raise CheckpointError(f"{path} has weights but no 'model_args' to rebuild the model from")
        args = {**ORIGINAL_DEFAULTS, **{k: v for k, v in args.items() if k in known}}
        if args.get("vocab_size") is None:
            args["vocab_size"] = ckpt["model"]["transformer.wte.weight"].shape[0] \
                if "transformer.wte.weight" in ckpt["model"] else 50304
        # the original RoPE rotated q and k alike at every position: no positional signal
        args["legacy_rope"] = bool(args.get("use_rope"))
        # v2 saved no gate switch: its use_bio_mlp meant oscillation plus SparseEventLayer
        keys = ckpt["model"].keys()
        if any(k.endswith("mlp.sparse_gate.gate.weight") for k in keys):
            args.update(use_sparse_gate=True, sparse_gate_kind="event_layer")
        elif any(k.endswith("mlp.gate_weight") for k in keys):
            args.update(use_sparse_gate=True, sparse_gate_kind="lightweight")
    else:
        args = ckpt.get("config")
        if not isinstance(args, dict):
            raise CheckpointError(f"{path} has no model 'config'")
        unknown = sorted(set(args) - known)
        if unknown:
            raise CheckpointError(f"{path}: unknown model config field(s) {', '.join(unknown)}")
    # how the activation ran is the training machine's choice, not the weights': a run trained
    # with activation_kernel='triton' on a GPU still samples on a CPU
    args = {k: v for k, v in args.items() if k != "activation_kernel"}
    try:
        return GPTConfig(**args)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad model config: {e}") from None


def clean_state_dict(state_dict):
    """Strip the prefixes torch.compile ('_orig_mod.') and DDP ('module.') add, and drop the
    causal-mask buffer the original's non-flash attention kept under 'attn.bias'."""
    clean = {}
    for key, value in state_dict.items():
        while key.startswith(("_orig_mod.", "module.")):
            key = key.split(".", 1)[1]
        if key.endswith(".attn.bias"):
            continue
        clean[key] = value
    return clean


def load_model(path, device="cpu", **overrides):
    """Build the model a checkpoint describes and load its weights (strict).

    Returns (model, ckpt). overrides replace config fields that do not change the weights
    (e.g. dropout, gradient_checkpointing).
    """
    ckpt = load_checkpoint(path)
    model = model_with_weights(model_config(ckpt, path), clean_state_dict(ckpt["model"]), path, **overrides)
    return model.to(device), ckpt


def model_with_weights(config, state, source, **overrides):
    """GPT(config) holding state (strict): names and shapes that do not fit are one
    CheckpointError naming source. overrides as in load_model."""
    for key, value in overrides.items():
        setattr(config, key, value)
    model = GPT(config)
    missing, unexpected = (sorted(set(model.state_dict()) - set(state)),
                           sorted(set(state) - set(model.state_dict())))
    if missing or unexpected:
        def brief(keys):
            return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
        problems = ([f"missing {brief(missing)}"] if missing else []) + \
                   ([f"unexpected {brief(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"weights in {source} do not fit its config: {'; '.join(problems)}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [l.strip() for l in str(e).splitlines() if "size mismatch" in l]
        raise CheckpointError(f"weights in {source} do not fit its config: {lines[0] if lines else e}") from None
    return model
