"""
The one way every script loads a model to train, sample, chat with or evaluate: --init_from
names it ('resume', a checkpoint file, GPT-2), --ckpt=FILE is the older spelling of
--init_from=FILE.
"""

import os
from dataclasses import fields

from model_bio import GPTConfig
from wigglegpt import chardata, checkpoint, export, hf, hub
from wigglegpt.common import CheckpointError, UserError
from wigglegpt.tokenizer import VOCAB_SIZE

# the GPTConfig fields a checkpoint fixes: its weights were trained with them
ARCH_FIELDS = [f.name for f in fields(GPTConfig)
               if f.name not in ("block_size", "dropout", "gradient_checkpointing", "activation_kernel")]

INIT_FROM_MEANING = ("'resume' (out_dir/ckpt.pt), a checkpoint file, a model on the Hugging Face Hub "
                     f"({hub.NAME_FORM}), or GPT-2: gpt2, gpt2-medium, gpt2-large, gpt2-xl or a transformers "
                     "save_pretrained folder")
REVISION_MEANING = "with an hf:// init_from: the branch, tag or commit to load (empty: the repo's default branch)"


def model_settings(purpose):
    """The settings that name the model, for the scripts that load one (wigglegpt.settings format)."""
    return {"out_dir": ("out", f"folder of the checkpoint to {purpose} (its ckpt.pt) with init_from='resume'"),
            "init_from": ("resume", INIT_FROM_MEANING),
            "ckpt": ("", "checkpoint file; the same as --init_from=<file>"),
            "revision": ("", REVISION_MEANING)}


def model_source(ckpt, init_from, default="resume"):
    """The model --ckpt and --init_from name (init_from's default is the script's): one of them."""
    if ckpt and init_from and init_from != default:
        raise UserError(f"--ckpt={ckpt} and --init_from={init_from} both name the model; give one")
    source = ckpt or init_from
    if not source:
        raise UserError("give exactly one model: --ckpt=path/to/ckpt.pt or --init_from=gpt2 (gpt2-medium, ...)")
    return source


def load_model_from(init_from, out_dir="out", device="cpu", revision="", **overrides):
    """The model init_from names, for every script that starts from existing weights: 'resume'
    (out_dir/ckpt.pt), a checkpoint file, a folder written by export_bio.py (wigglegpt/export.py),
    an hf:// name on the Hugging Face Hub (downloaded into its cache at revision, see
    wigglegpt/hub.py), or GPT-2 (a name such as 'gpt2' or a save_pretrained folder; see
    wigglegpt/hf.py). Returns (model, ckpt dict or None for an export or GPT-2, source path or
    name); overrides as in checkpoint.load_model."""
    if hub.is_hub_name(init_from):
        local = hub.resolve(init_from, revision)
        model, ckpt, _ = load_model_from(local, out_dir, device, **overrides)
        return model, ckpt, init_from
    if init_from == "resume":
        path = os.path.join(out_dir, "ckpt.pt")
        if not os.path.exists(path):
            raise CheckpointError(f"init_from='resume' but {path} does not exist; point --out_dir at the run's "
                                  "folder, or give a checkpoint file or GPT-2 name as init_from")
        return (*checkpoint.load_model(path, device, **overrides), path)
    if export.is_export_folder(init_from):  # before GPT-2: an export folder has a config.json too
        return export.load_export(init_from, device, **overrides), None, init_from
    if hf.is_gpt2_source(init_from):
        return hf.load_gpt2(init_from, device, **overrides), None, init_from
    if init_from == "scratch":
        raise CheckpointError("init_from='scratch' has no weights to load; give 'resume', a checkpoint file or a "
                              "GPT-2 name")
    if not os.path.exists(init_from):
        raise CheckpointError(f"init_from={init_from!r}: no such checkpoint (checkpoint not found); use 'resume' "
                              f"(out_dir/ckpt.pt), a checkpoint file, a Hub name ({hub.NAME_FORM}), a GPT-2 name "
                              f"({', '.join(hf.GPT2_NAMES)}) or a folder written by transformers' save_pretrained")
    return (*checkpoint.load_model(init_from, device, **overrides), init_from)


def load_for_training(cfg, defaults, device, vocab=None, folder="", say=print):
    """The model a training run with cfg.init_from other than 'scratch' starts from: (model on
    device, checkpoint to resume or None when fine-tuning, {architecture field: the checkpoint's
    value} where it differs from cfg). The checkpoint's architecture wins; a field the user set
    away from its default (defaults) is said to be ignored. vocab: the data folder's characters
    (None: GPT-2 tokens), which the checkpoint's own vocabulary must match."""
    model, ckpt, source = load_model_from(cfg.init_from, cfg.out_dir, device, cfg.revision, dropout=cfg.dropout,
                                          gradient_checkpointing=cfg.gradient_checkpointing,
                                          activation_kernel=cfg.activation_kernel)
    arch = {}
    for name in ARCH_FIELDS:
        mine, theirs = getattr(cfg, name), getattr(model.config, name)
        if mine != theirs:
            if mine != defaults[name]:
                say(f"warning: {name}={mine!r} ignored: {source} was trained with {name}={theirs!r}")
            arch[name] = theirs
    if cfg.block_size > model.config.block_size:
        raise UserError(f"block_size={cfg.block_size} is larger than the block_size {model.config.block_size} of "
                        f"{source}; use --block_size={model.config.block_size} or less")
    chardata.vocab_for(chardata.checkpoint_vocab(ckpt, source), vocab, model.config.vocab_size, source, folder)
    if cfg.init_from == "resume":
        for key in ("optimizer", "iter_num"):
            if key not in ckpt:
                raise UserError(f"{source} has no {key!r}: it cannot be resumed; fine-tune from it with --init_from={source}")
        return model, ckpt, arch
    # fine-tune: the weights only; a fresh optimizer at iteration 0
    note = ("" if ckpt is not None and not checkpoint.is_original_format(ckpt) else
            " (GPT-2 weights through transformers)" if ckpt is None else " (original WiggleGPT format: legacy_rope on)")
    say(f"fine-tuning from {source}{note}")
    return model, None, arch


def load_for_inference(init_from, out_dir="out", device="cpu", needs_tokenizer="", revision=""):
    """(model in eval mode, where it came from) for sampling, chat and evaluation. needs_tokenizer
    names what needs GPT-2's token ids (e.g. 'sampling'): a smaller vocabulary, or a
    character-level model, is then a UserError (see require_gpt2)."""
    model, source, vocab = load_with_vocab(init_from, out_dir, device, revision)
    if needs_tokenizer:
        require_gpt2(model, source, vocab, needs_tokenizer)
    return model, source


def load_with_vocab(init_from, out_dir="out", device="cpu", revision=""):
    """(model in eval mode, where it came from, its vocabulary) for the scripts that read a
    character-level model too: the vocabulary is the checkpoint's own (a chardata.CharVocab), or
    None for GPT-2 BPE (every other checkpoint, an export folder, GPT-2)."""
    model, ckpt, source = load_model_from(init_from, out_dir, device, revision, dropout=0.0)
    vocab = chardata.checkpoint_vocab(ckpt, source)
    if vocab is not None and len(vocab) > model.config.vocab_size:
        raise CheckpointError(f"{source} has {len(vocab):,} characters but vocab_size {model.config.vocab_size:,}")
    return model.eval(), source, vocab


def require_gpt2(model, source, vocab, what):
    """A UserError unless the model reads GPT-2 BPE ids; what names the use that needs them."""
    if vocab is not None:
        raise UserError(f"{source} is a character-level model ({len(vocab):,} characters of its own) with no GPT-2 "
                        f"tokenizer and no chat template: {what} needs GPT-2 BPE; sample_bio.py and eval_bio.py "
                        "--tasks=val work with it")
    if model.config.vocab_size < VOCAB_SIZE:
        raise UserError(f"{source} has vocab_size {model.config.vocab_size}; {what} needs the GPT-2 "
                        f"tokenizer's {VOCAB_SIZE} ids")
