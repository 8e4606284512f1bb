"""
The transformers face of model_bio.GPT: the "remote code" of an exported folder (export_bio.py).

wigglegpt/export.py copies this file, as it is, into the folder as modeling_wigglegpt.py, beside a
verbatim copy of model_bio.py, and config.json's auto_map points at the two classes here:

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

There is no second model: WiggleGPTForCausalLM holds a model_bio.GPT and only translates
transformers' calling conventions (labels, attention mask, the KV cache) into its forward.
"""

from dataclasses import fields

import torch
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

try:  # in an exported folder: the copy of model_bio.py beside this file (transformers follows relative imports)
    from .model_bio import GPT, GPTConfig, rope_tables
except ImportError:  # in this repository, as wigglegpt.hf_remote
    from model_bio import GPT, GPTConfig, rope_tables

MODEL_TYPE = "wigglegpt"
EOT = 50256  # GPT-2's <|endoftext|>: begins documents, ends replies
# the output field of the KV cache: transformers 5.x renamed past_key_values to cache
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class WiggleGPTConfig(PretrainedConfig):
    """The GPTConfig fields, under their own names, plus what transformers expects of a causal LM."""

    model_type = MODEL_TYPE
    # transformers' usual names (used by generate, lm-evaluation-harness, device maps) for ours
    attribute_map = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
                     "max_position_embeddings": "block_size"}

    def __init__(self, use_cache=True, bos_token_id=EOT, eos_token_id=EOT, tie_word_embeddings=True, **kwargs):
        model = {f.name: kwargs.pop(f.name, f.default) for f in fields(GPTConfig)}
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.use_cache = use_cache
        for name, value in model.items():
            setattr(self, name, value)

    def gpt_config(self):
        return GPTConfig(**{f.name: getattr(self, f.name) for f in fields(GPTConfig)})


class CacheView:
    """model_bio's KVCache interface (pos, insert, advance) over a transformers Cache, so that
    generate() keeps, reorders and crops the keys and values its own way."""

    def __init__(self, cache):
        self.cache, self.pos = cache, cache.get_seq_length()

    def insert(self, layer, k, v):
        end = self.pos + k.shape[2]
        keys, values = self.cache.update(k, v, layer)
        return keys[:, :, :end], values[:, :, :end]  # a static cache hands back its whole preallocated length

    def advance(self, n):
        self.pos += n


class WiggleGPTForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = WiggleGPTConfig
    base_model_prefix = "model"  # the saved names are GPT's own; transformers puts "model." in front
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    _tied_weights_keys = {"model.lm_head.weight": "model.transformer.wte.weight"}  # GPT ties them

    def __init__(self, config):
        super().__init__(config)
        self.model = GPT(config.gpt_config())
        self.post_init()

    def _init_weights(self, module):
        # from_pretrained builds the model on the meta device and loads the saved weights; the
        # rest is made here: GPT's own initialization for anything not loaded (transformers skips
        # what was), and the buffers GPT.__init__ computes instead of saving
        if not isinstance(module, GPT):
            return
        module.init_weights()
        if hasattr(module, "rope_cos"):
            cos, sin = rope_tables(module.config.n_embd // module.config.n_head, module.config.block_size)
            module.rope_cos.copy_(cos)
            module.rope_sin.copy_(sin)
        module.firing_stats.zero_()

    def get_input_embeddings(self):
        return self.model.transformer.wte

    def set_input_embeddings(self, value):
        self.model.transformer.wte = value

    def get_output_embeddings(self):
        return self.model.lm_head

    def set_output_embeddings(self, value):
        self.model.lm_head = value

    def forward(self, input_ids, attention_mask=None, cache=None, labels=None, use_cache=None,
                logits_to_keep=0, return_dict=None, past_key_values=None, **kwargs):
        """transformers' causal-LM forward: logits of every position (the last logits_to_keep if
        given), the loss when labels are (labels as the inputs, -100 ignored, shifted here), and the
        KV cache (a transformers Cache; one is started when use_cache and none is given).

        GPT takes no attention mask: padding may only come after the real tokens (right padding),
        where causal attention never lets a real token see it; other masks are a ValueError."""
        cache = cache if cache is not None else past_key_values  # the name before transformers 5.x
        if use_cache is None:  # a training step keeps no cache
            use_cache = self.config.use_cache and not self.training
        if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[1] > 1 \
                and bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
            raise ValueError("WiggleGPT has no attention mask: padding must come after the tokens (right padding); "
                             "generate one prompt at a time, or prompts of the same length")
        if use_cache and cache is None:
            cache = DynamicCache()
        T = input_ids.shape[1]
        if labels is not None:  # GPT's targets are the next tokens, -1 ignored
            targets = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -1)], dim=1)
            targets = targets.masked_fill(targets == -100, -1)
        elif T > 1 and logits_to_keep != 1:
            targets = torch.full(input_ids.shape, -1, device=input_ids.device)  # GPT gives all logits only with targets
        else:
            targets = None  # the last position's logits: what generate asks for
        logits, loss = self.model(input_ids, targets, kv_cache=CacheView(cache) if use_cache else None)
        if logits_to_keep and logits.shape[1] > logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        out = CausalLMOutputWithPast(loss=loss if labels is not None else None, logits=logits,
                                     **{CACHE_FIELD: cache if use_cache else None})
        return out.to_tuple() if return_dict is False else out
