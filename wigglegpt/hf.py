"""
OpenAI's GPT-2 as a reference model: its weights, loaded through Hugging Face transformers,
converted into this repo's GPT (the GELU/LayerNorm baseline configuration), so that training,
sampling, chat and evaluation treat GPT-2 like any of our checkpoints.

    python sample_bio.py --init_from=gpt2 --start="The meaning of life is"
    python train_bio.py config/shakespeare_gelu.py --init_from=gpt2-medium   # fine-tune GPT-2
    python sample_bio.py --init_from=path/to/folder   # written by transformers' save_pretrained

wigglegpt.loader calls load_gpt2 for these sources; transformers is optional and imported only
then. The conversion, weight by weight: README.md, "GPT-2 as the reference".
"""

import os

from wigglegpt import checkpoint
from model_bio import GPTConfig
from wigglegpt.common import UserError

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
INSTALL_HINT = "pip install transformers (or pip install -r requirements-optional.txt)"
# transformers' names for GPT-2's activation -> our gelu_approximate
ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}
LAYER_NORM_EPS = 1e-5  # what make_norm's nn.LayerNorm uses (its default)
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def is_gpt2_source(init_from):
    """Whether init_from names GPT-2 weights: a GPT-2 model name on the Hub (also with its
    'openai-community/' prefix) or a folder written by save_pretrained (it has config.json)."""
    if not isinstance(init_from, str) or not init_from:
        return False
    name = init_from.removeprefix("openai-community/")
    if name in GPT2_NAMES and not os.path.exists(init_from):
        return True
    return os.path.isdir(init_from) and os.path.isfile(os.path.join(init_from, "config.json"))


def import_transformers():
    try:
        import transformers
    except ImportError:
        raise UserError(f"GPT-2 weights are loaded through transformers, which is not installed: {INSTALL_HINT}") from None
    return transformers


def config_from_hf(hf_config, source="GPT-2"):
    """The GPTConfig of a transformers GPT2Config; anything our model cannot reproduce is a UserError."""
    if getattr(hf_config, "model_type", None) != "gpt2":
        raise UserError(f"{source} holds a {getattr(hf_config, 'model_type', 'unknown')!r} model; only GPT-2 "
                        "models (model_type 'gpt2') convert to this repo's GPT")
    activation = getattr(hf_config, "activation_function", "gelu_new")
    problems = []
    if activation not in ACTIVATIONS:
        problems.append(f"activation_function {activation!r} (supported: {', '.join(ACTIVATIONS)})")
    if abs(hf_config.layer_norm_epsilon - LAYER_NORM_EPS) > 1e-12:
        problems.append(f"layer_norm_epsilon {hf_config.layer_norm_epsilon} (this model's LayerNorm uses {LAYER_NORM_EPS})")
    if hf_config.n_inner not in (None, 4 * hf_config.n_embd):
        problems.append(f"n_inner {hf_config.n_inner} (the MLP is 4 x n_embd = {4 * hf_config.n_embd} wide)")
    if not getattr(hf_config, "scale_attn_weights", True) or getattr(hf_config, "scale_attn_by_inverse_layer_idx", False):
        problems.append("attention scaling other than 1/sqrt(head_dim)")
    if not getattr(hf_config, "tie_word_embeddings", True):
        problems.append("an lm_head not tied to the token embedding")
    if getattr(hf_config, "add_cross_attention", False):
        problems.append("cross-attention layers")
    if problems:
        raise UserError(f"{source} cannot be converted: {'; '.join(problems)}")
    try:
        return GPTConfig(block_size=hf_config.n_positions, vocab_size=hf_config.vocab_size, n_layer=hf_config.n_layer,
                         n_head=hf_config.n_head, n_embd=hf_config.n_embd, dropout=0.0, bias=True,
                         use_bio_mlp=False, use_rmsnorm=False, use_rope=False,
                         gelu_approximate=ACTIVATIONS[activation])
    except (TypeError, ValueError) as e:
        raise UserError(f"{source}: bad model config: {e}") from None


def state_dict_from_hf(hf_state):
    """GPT2LMHeadModel's state dict in our parameter names and layouts (float32)."""
    ours = {}
    for key, value in hf_state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers of older transformers versions, not weights
        value = value.detach().float()
        ours[key] = value.t().contiguous() if key.endswith(CONV1D_WEIGHTS) else value
    ours.setdefault("lm_head.weight", ours.get("transformer.wte.weight"))  # tied: may be saved once
    return ours


def from_hf(hf_model, source="GPT-2", **overrides):
    """Our GPT with the weights of a transformers GPT2LMHeadModel (CPU, float32, eval mode).
    overrides set config fields that do not change the weights (dropout, gradient_checkpointing)."""
    config = config_from_hf(hf_model.config, source)
    state = state_dict_from_hf(hf_model.state_dict())
    return checkpoint.model_with_weights(config, state, source, **overrides).eval()


def load_gpt2(source, device="cpu", **overrides):
    """GPT-2 weights (a name in GPT2_NAMES or a save_pretrained folder) as our GPT on device."""
    transformers = import_transformers()
    try:
        hf_model = transformers.GPT2LMHeadModel.from_pretrained(source)
    except (OSError, ValueError) as e:  # offline and not cached, a broken folder, a foreign model
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        where = ("a GPT-2 name needs the Hugging Face Hub or a copy in the local cache; a save_pretrained "
                 "folder works offline" if not os.path.isdir(source) else "is it a save_pretrained folder of a GPT-2 model?")
        raise UserError(f"could not load GPT-2 weights from {source!r} ({reason}); {where}") from None
    model = from_hf(hf_model, source, **overrides)
    del hf_model
    return model.to(device)
