"""
Checkpoints: the one place that writes and reads them, for every script.

Writes are atomic (temporary file, fsync, rename), reads always use weights_only=True, and the
original WiggleGPT files load beside this project's own (wigglegpt.compat translates them).
Also here: what train_bio.py keeps and restores for an exact resume (the RNG snapshots) and
ckpt_best.pt as a hard link. The formats: README.md, "Loading the published checkpoints".
"""

import errno
import os
import random
from dataclasses import asdict, fields

import numpy as np
import torch

from model_bio import GPT, GPTConfig
from wigglegpt import oscillate_triton  # noqa: F401  (registers the fused op wigglegpt::oscillate that GPT uses)
from wigglegpt import compat
from wigglegpt.common import CheckpointError, UserError, fsync, remove_quietly, write_error
from wigglegpt.compat import clean_state_dict
from wigglegpt.distributed import all_gather, print0

FORMAT = "wigglegpt-bio/1"


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
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", folder)
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "wb") as f:
            writer = _RecordingWriter(f)
            try:
                torch.save(ckpt, writer)
            except RuntimeError:  # torch's zip writer reports a failed write (ENOSPC) as a RuntimeError
                if writer.error is None:
                    raise
                raise writer.error from None
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
        fsync(folder, directory=True)  # the rename itself durable
    except OSError as e:
        raise CheckpointError(str(write_error(path, e, advice))) from None
    finally:
        remove_quietly(tmp)  # also after Ctrl-C or any other failure mid-write


class _RecordingWriter:
    """The file torch.save writes through, keeping the OSError of a failed write (a full disk):
    torch turns it into a RuntimeError that no longer says why."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        self.f.flush()


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
        reason = reason.split(". ")[0]  # torch's first sentence; the rest is advice about weights_only
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: cut off, or another kind of file "
                              f"({reason[:160]})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path} is not a WiggleGPT checkpoint (no 'model' weights in it)")
    return ckpt


def is_original_format(ckpt):
    return ckpt.get("format") != FORMAT


def model_config(ckpt, path="checkpoint"):
    """The GPTConfig a checkpoint was trained with (original format: legacy_rope turned on)."""
    known = {f.name for f in fields(GPTConfig)}
    if is_original_format(ckpt):
        args = compat.original_model_args(ckpt, path, known)
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
    return load_weights(GPT(config), state, source)


def load_weights(model, state, source, assign=False):
    """model.load_state_dict(state, strict=True, assign=assign), with names and shapes that do not
    fit as one CheckpointError naming source; returns model."""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        def brief(keys):
            return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
        problems = ([f"missing {brief(missing)}"] if missing else []) + \
                   ([f"unexpected {brief(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"weights in {source} do not fit its config: {'; '.join(problems)}")
    try:
        model.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if "size mismatch" in line]
        raise CheckpointError(f"weights in {source} do not fit its config: {lines[0] if lines else e}") from None
    return model


# ---------------------------------------------------------------------------------------
# training checkpoints: the latest and the best, and every random stream for an exact resume

def training_checkpoint(model, optimizer, scaler, train_config, state, rngs, dist, tokenizer=None):
    """What train_bio.py saves: the model, the optimizer and loss-scale state, the run's settings,
    its counters (state: iter_num, best_val_loss, tokens, last_eval_iter, last_hellaswag_iter,
    wandb_run_id) and every process's random streams (rngs, one snapshot per rank). tokenizer: a
    character-level run's vocabulary, {'kind': 'char', 'itos': [str, ...]} (chardata.CharVocab.
    as_checkpoint), kept as 'tokenizer'; without it (GPT-2 tokens) the key is left out, as before."""
    return checkpoint_dict(
        model, **({"tokenizer": tokenizer} if tokenizer is not None else {}),
        optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), train_config=train_config,
        iter_num=state["iter_num"], best_val_loss=float(state["best_val_loss"]), tokens=state["tokens"],
        last_eval_iter=state["last_eval_iter"], last_hellaswag_iter=state["last_hellaswag_iter"],
        rng={k: v for k, v in rngs[0].items() if k != "sampler"},
        sampler={"generator": rngs[0]["sampler"], "world_size": dist.world},
        rank_states=rngs if dist.ddp else None, wandb_run_id=state["wandb_run_id"])


def save_training(out_dir, ckpt, best):
    """Write out_dir/ckpt.pt, and ckpt_best.pt when best; returns the ckpt.pt path."""
    path = os.path.join(out_dir, "ckpt.pt")
    save_checkpoint(ckpt, path, resume_advice(path))
    if best:
        keep_as_best(ckpt, path, os.path.join(out_dir, "ckpt_best.pt"))
    return path


def resume_advice(latest):
    """What to do after a failed write (disk full, no permission): the run stops there."""
    if os.path.exists(latest):
        return f"continue from the last good {latest} with --init_from=resume"
    return "run again"


def keep_as_best(ckpt, latest, best):
    """ckpt_best.pt as a hard link to the file just written (no second copy on disk); the
    next atomic save of ckpt.pt makes a new file and leaves this one alone."""
    tmp = f"{best}.tmp{os.getpid()}"
    try:
        if os.path.exists(tmp):
            os.remove(tmp)
        os.link(latest, tmp)
        os.replace(tmp, best)
    except OSError:  # a filesystem without hard links
        if os.path.exists(tmp):
            os.remove(tmp)
        save_checkpoint(ckpt, best, resume_advice(latest))


def rng_snapshot(sampler):
    """This process's generators as plain tensors/lists (weights_only=True cannot load numpy)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    snap = {"python": random.getstate(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state(),
            "sampler": sampler.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        snap["cuda"] = torch.cuda.get_rng_state_all()
    return snap


def restore_rng(snap, sampler):
    random.setstate(snap["python"])
    n = snap["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(snap["torch"])
    sampler.set_state(snap["sampler"])
    if "cuda" in snap and torch.cuda.is_available() and len(snap["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(snap["cuda"])


def gather_rng(sampler, dist):
    """Every process's snapshot (a collective: all ranks call it together)."""
    return all_gather(rng_snapshot(sampler), dist)


def restore_training(ckpt, settings, optimizer, scaler, sampler, dist, fresh_seed, tokens_per_iter, path):
    """Resume from a training checkpoint: the optimizer and loss-scale state and this process's
    random streams (fresh_seed + iter_num when the checkpoint has none for this many processes).
    settings: the resumed run's, whose optimizer_type and freeze_layers must be the saved ones.
    Returns the run's counters {iter_num, best_val_loss, tokens, last_eval_iter, wandb_run_id,
    last_hellaswag_iter}."""
    saved = ckpt.get("train_config", {})
    # the optimizer's state fits only the same optimizer over the same trainable parameters
    for key, default in (("freeze_layers", 0), ("optimizer_type", "adamw")):
        value = saved.get(key, default)
        if value != settings[key]:
            raise UserError(f"{path} was trained with {key}={value!r}; resume with --{key}={value}, or "
                            "fine-tune from it with --init_from=<that path>")
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler.is_enabled() and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    counters = dict(iter_num=ckpt["iter_num"], best_val_loss=float(ckpt.get("best_val_loss", float("inf"))),
                    tokens=int(ckpt.get("tokens", ckpt["iter_num"] * tokens_per_iter)),
                    last_eval_iter=int(ckpt.get("last_eval_iter", -1)), wandb_run_id=ckpt.get("wandb_run_id"),
                    last_hellaswag_iter=int(ckpt.get("last_hellaswag_iter", -1)))
    # one snapshot per process: rank_states under torchrun; a plain run saves its own as rng + sampler
    snaps = ckpt.get("rank_states") or ([{**ckpt["rng"], "sampler": ckpt["sampler"]["generator"]}]
                                        if "rng" in ckpt else [])
    if len(snaps) == dist.world:  # plain <-> torchrun with one process is the same single stream
        restore_rng(snaps[dist.rank], sampler)
    else:
        why = (f"was written by {len(snaps)} process(es), this run has {dist.world}" if snaps
               else "holds no random-number state")
        print0(dist, f"warning: {path} {why}: batches and dropout will not continue exactly")
        sampler.manual_seed(fresh_seed + counters["iter_num"])
    print0(dist, f"resuming from {path} at iter {counters['iter_num']:,}")
    return counters
