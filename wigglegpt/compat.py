"""
Everything that translates the original WiggleGPT (Eden-Eldith/WiggleGPT): its training settings'
names and meanings, and its checkpoints (model_args, missing fields, its RoPE, the v2 gate,
torch.compile's key prefixes). The rest of the code sees only this project's settings and configs.
"""

from wigglegpt.common import CheckpointError, UserError

PREPARE_HINT = ("data is prepared apart: python prepare_smoltalk.py (--dataset, --dataset_config, --split, "
                "--max_examples, --val_fraction), then train with dataset='smoltalk'")
# settings of the original WiggleGPT scripts that mean nothing to train_bio.py: what to do instead
ORIGINAL_ONLY = {
    "pretrained_ckpt": "fine-tune from a checkpoint with init_from='path/to/ckpt.pt'",
    "bio_compartments": "this is WiggleGPT v1's dendritic MLP, which cannot be built here (the original removed it "
                        "in v2); its successor, the v2 model, trains with config/bio_45m_sparse_3070.py",
    **{key: PREPARE_HINT for key in ("dataset_name", "dataset_subset", "dataset_split", "max_samples",
                                     "chunk_size", "val_split")},
}


def resolved_aliases(cfg):
    """The settings the original's names stand for, as {setting: value} to keep beside the user's
    (which stay as given): beta1/beta2 replace the parts of betas, and lr_schedule='wsd' with
    stable_iters given (or > 0) is the original's wsd, here 'wsd_cosine' (stable_iters=0: cosine)."""
    derived = {}
    betas = tuple(cfg.betas)
    for i, key in enumerate(("beta1", "beta2")):  # the original's names win over betas
        value = getattr(cfg, key)
        if value is not None:
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0):
                raise UserError(f"{key} must be a number in [0, 1), got {value!r}")
            betas = tuple(value if j == i else b for j, b in enumerate(betas))
            derived[key] = None
    if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in betas):
        raise UserError(f"betas must be two numbers in [0, 1), got {betas!r}")
    derived["betas"] = tuple(float(b) for b in betas)
    stable_given = "stable_iters" in getattr(cfg, "explicit", ()) or (isinstance(cfg.stable_iters, int)
                                                                     and cfg.stable_iters > 0)
    if cfg.lr_schedule == "wsd" and stable_given:
        # what lr_schedule='wsd' with stable_iters meant in the original: with stable_iters=0, plain cosine
        derived["lr_schedule"] = "wsd_cosine"
    return derived


def original_architecture(cfg, explicit):
    """What an original WiggleGPT config trained, where this project's defaults would build another
    model: ({setting: value} to derive beside the settings as given, [notes to print]).

    bio_threshold set, no gate setting, and the original's names beta1/beta2 (what its v2 and
    optimizations/ configs hold): its v2 model, whose oscillating MLP always ended in the
    event-layer gate, with LayerNorm and a learned position table unless the config sets
    use_rmsnorm / use_rope. explicit: the settings a config file or the command line gave.
    Fine-tuning and resuming take the checkpoint's architecture instead."""
    derived, notes = {}, []
    if cfg.init_from != "scratch" or not cfg.use_bio_mlp:
        return derived, notes
    gate_given = explicit & {"use_sparse_gate", "sparse_gate_kind"}
    if "bio_threshold" in explicit and not gate_given and not explicit & {"beta1", "beta2"}:
        notes.append("bio_threshold has no effect without a sparse gate (use_sparse_gate=True)")
    elif "bio_threshold" in explicit and not gate_given:
        derived = {"use_sparse_gate": True, "sparse_gate_kind": "event_layer",
                   **{key: False for key in ("use_rmsnorm", "use_rope") if key not in explicit}}
        notes.append("an original WiggleGPT config with bio_threshold and no gate setting (v2, optimizations/): "
                     "training its model, the oscillating MLP with the event-layer gate" + ("" if "use_rmsnorm" in explicit else ", LayerNorm")
                     + ("" if "use_rope" in explicit else ", learned positions")
                     + " (this project's config for it: config/bio_45m_sparse_3070.py)")
    if (cfg.use_rope and "use_rope" in explicit and "legacy_rope" not in explicit
            and explicit & {"beta1", "beta2", "stable_iters"}):  # the original's setting names
        notes.append("use_rope=True here encodes positions; the original's RoPE did not (its published models "
                     "load with legacy_rope=True); add legacy_rope=True to train exactly what it trained")
    return derived, notes


# GPTConfig defaults of the original code, for fields its older checkpoints may lack
ORIGINAL_DEFAULTS = dict(bias=True, use_bio_mlp=False, use_rmsnorm=False, use_rope=False,
                         gradient_checkpointing=False, dropout=0.0)


def original_model_args(ckpt, path, known):
    """The GPTConfig arguments of an original-format checkpoint (fields in known only)."""
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
    return args


# the GPTConfig fields of the original's newest model_bio.py (v3), which its chat.py and sample_bio.py
# build with GPTConfig(**checkpoint['model_args']): any other key is a TypeError there
ORIGINAL_FIELDS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "use_bio_mlp",
                   "use_rmsnorm", "use_rope", "gradient_checkpointing")


def original_checkpoint(model, ckpt=None):
    """A checkpoint in the original WiggleGPT's format (model, model_args, iter_num, best_val_loss,
    config) that its chat.py and sample_bio.py load, of model (a model_bio.GPT) and the checkpoint
    dict it came from (or None). A model the original's v3 code would build differently is one
    UserError saying what."""
    cfg = model.config
    if cfg.use_sparse_gate:
        raise UserError(f"this model has the {cfg.sparse_gate_kind} sparse gate, which the original's newest "
                        "model (v3, what its chat.py and sample_bio.py build) does not have")
    if cfg.use_rope and not cfg.legacy_rope:
        raise UserError("this model's RoPE encodes positions; the original's RoPE did not (legacy_rope=True), so "
                        "its code would compute other outputs from these weights")
    if not cfg.use_bio_mlp and cfg.gelu_approximate != "none":
        raise UserError(f"this model's GELU is gelu_approximate={cfg.gelu_approximate!r} (GPT-2's); the original's "
                        "MLP uses the exact GELU")
    ckpt = ckpt if isinstance(ckpt, dict) else {}
    out = {"model": {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()},
           "model_args": {name: getattr(cfg, name) for name in ORIGINAL_FIELDS},
           "iter_num": int(ckpt.get("iter_num", 0)), "best_val_loss": float(ckpt.get("best_val_loss", float("inf")))}
    out["model_args"]["gradient_checkpointing"] = False  # how one machine trained, not part of the model
    if isinstance(ckpt.get("train_config"), dict):
        out["config"] = dict(ckpt["train_config"])
    elif isinstance(ckpt.get("config"), dict):
        out["config"] = dict(ckpt["config"])
    return out


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
