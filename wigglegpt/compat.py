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
    "freeze_layers": "freezing layers is not offered; fine-tune them all (gradient_checkpointing=True saves memory)",
    "bio_compartments": "the dendritic compartments of WiggleGPT v1 are gone (the original removed them too); drop it",
    **{key: PREPARE_HINT for key in ("dataset_name", "dataset_subset", "dataset_split", "max_samples",
                                     "chunk_size", "val_split")},
}


def resolved_aliases(cfg):
    """The settings the original's names stand for, as {setting: value} to keep beside the user's
    (which stay as given): beta1/beta2 replace the parts of betas, and lr_schedule='wsd' with
    stable_iters > 0 is the original's wsd, here 'wsd_cosine'."""
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
    if cfg.lr_schedule == "wsd" and isinstance(cfg.stable_iters, int) and cfg.stable_iters > 0:
        derived["lr_schedule"] = "wsd_cosine"  # what lr_schedule='wsd' with stable_iters meant in the original
    return derived


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
