"""
Generation: a prompt in, new token ids out one at a time, over the model's KV cache.

    for token in generate(model, prompt_ids, max_new_tokens=100, temperature=0.8, top_k=200):
        ...

Also the sampling options (SAMPLING, PRESETS), TokenCache (a later prompt that starts with the
same ids, the next chat turn, is prefilled only from where it differs) and stream_text (tokens to
text, with stop strings). How the cache meets the context limit: README.md, "Sample and chat".
"""

from contextlib import nullcontext

import torch

from wigglegpt.checkpoint import unwrap  # the GPT inside torch.compile: config and new_kv_cache live there
from wigglegpt.common import UserError
from wigglegpt.tokenizer import StreamDecoder


# ---------------------------------------------------------------------------------------
# logits -> next token

# the sampling options, one dict from the settings through to generate (sample, chat and the web
# chat pass it on as it is): a new option is added here, in check_options, sampling_settings and generate
SAMPLING = ("temperature", "top_k", "top_p", "repetition_penalty", "repetition_window", "penalty_style")
PENALTY_STYLES = ("ctrl", "divide")


def sampling_options(cfg):
    """{option: value} of the SAMPLING options in a settings namespace."""
    return {key: getattr(cfg, key) for key in SAMPLING}


def check_options(max_new_tokens=0, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                  repetition_window=0, penalty_style="ctrl"):
    """Raise a UserError naming the first sampling option that makes no sense."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature >= 0:
        raise UserError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise UserError(f"top_k must be a whole number >= 0 (0 = off), got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or isinstance(top_p, bool)
                              or not 0 < top_p <= 1):
        raise UserError(f"top_p must be in (0, 1] (1 = off), got {top_p!r}")
    if (not isinstance(repetition_penalty, (int, float)) or isinstance(repetition_penalty, bool)
            or not repetition_penalty > 0):
        raise UserError(f"repetition_penalty must be a number > 0 (1 = off), got {repetition_penalty!r}")
    if not isinstance(repetition_window, int) or isinstance(repetition_window, bool) or repetition_window < 0:
        raise UserError(f"repetition_window must be a whole number >= 0 (0 = the whole context), "
                        f"got {repetition_window!r}")
    if penalty_style not in PENALTY_STYLES:
        raise UserError(f"penalty_style must be 'ctrl' (seen tokens always less likely) or 'divide' (the original "
                        f"WiggleGPT's), got {penalty_style!r}")


def sampling_settings(temperature, top_k, top_p, repetition_penalty, seed, seed_meaning, repetition_window=0):
    """The sampling and device settings sample_bio.py and chat_bio.py share, with each one's
    defaults (wigglegpt.settings format: name -> (default, meaning))."""
    return {
        "temperature": (temperature, "1.0 = the model's distribution, lower is more conservative, 0 = greedy"),
        "top_k": (top_k, "sample only among the k most likely tokens (0 or None = off)", None),
        "top_p": (top_p, "sample only from the smallest set of tokens holding this much probability (1 or None = off)",
                  None),
        "repetition_penalty": (repetition_penalty, "above 1 makes tokens already in the context less likely (1 = off)"),
        "repetition_window": (repetition_window, "the penalty looks at the last this many tokens of the context "
                                                 "(0 = all of it)"),
        "penalty_style": ("ctrl", "'ctrl': positive logits of seen tokens divided by the penalty, negative ones "
                                  "multiplied (always less likely); 'divide': every seen token's logit divided, the "
                                  "original WiggleGPT's (which makes seen tokens with negative logits more likely)"),
        "seed": (seed, seed_meaning),
        "device": ("auto", "auto, cpu, cuda, cuda:N or mps"),
        "dtype": ("auto", "auto, float32, bfloat16 or float16 (torch.autocast, also on the CPU)"),
    }


# --preset=original: the original WiggleGPT scripts' sampling, as sample_bio.py and chat_bio.py
# reproduce them token for token under the same seed (README.md, "Sample and chat"):
# - its chat.py: temperature 0.7, top-k 50, no nucleus, the penalty 1.15 dividing every logit of
#   the last 100 tokens, fp16 autocast on CUDA; its replies of up to 512 tokens and its prompt
#   rules are wigglegpt.chat's (reply_budget, Chat's original=True);
# - its sample_bio.py: temperature 0.5, top-k 200, the penalty 1.2 dividing every logit of the
#   whole context, 10 samples of 500 tokens, seed 1337, one random stream through all samples.
PRESETS = {
    "chat": {"original": dict(temperature=0.7, top_k=50, top_p=1.0, repetition_penalty=1.15, repetition_window=100,
                              penalty_style="divide", dtype="float16")},
    "sample": {"original": dict(temperature=0.5, top_k=200, top_p=1.0, repetition_penalty=1.2, repetition_window=0,
                                penalty_style="divide", num_samples=10, max_new_tokens=500, seed=1337)},
}
CUDA_ONLY = ("dtype",)  # the original ran autocast on CUDA only: elsewhere the preset leaves dtype alone


def apply_preset(cfg, script, device="cpu"):
    """Set the values of cfg.preset (one of PRESETS[script]) except for the settings given
    explicitly (cfg.explicit, from wigglegpt.settings.load_settings): defaults < preset < given."""
    if not cfg.preset:
        return cfg
    if cfg.preset not in PRESETS[script]:
        raise UserError(f"unknown preset {cfg.preset!r}; use one of {', '.join(PRESETS[script])} (or leave it empty)")
    given = getattr(cfg, "explicit", ())
    for key, value in PRESETS[script][cfg.preset].items():
        if key not in given and (key not in CUDA_ONLY or device.startswith("cuda")):
            setattr(cfg, key, value)
    return cfg


def preset_setting(script):
    what = {"chat": "the original WiggleGPT chat.py: temperature 0.7, top_k 50, the original's penalty 1.15 over the "
                    "last 100 tokens, 512-token replies, its prompt trimming and seeding",
            "sample": "the original WiggleGPT sample_bio.py: temperature 0.5, top_k 200, the original's penalty 1.2 "
                      "over the whole context, 10 samples of 500 tokens, seed 1337 as one stream"}[script]
    return {"preset": ("", f"sampling preset (original: {what}); explicit settings win")}


def apply_repetition_penalty(logits, context_ids, penalty, style="ctrl"):
    """Make tokens already in the context less likely (Keskar et al. 2019, "CTRL").

    style 'ctrl': positive logits are divided by the penalty and negative ones multiplied, so
    both move down for penalty > 1. style 'divide': every seen token's logit is divided, as the
    original WiggleGPT did, which moves negative logits up (toward more likely).
    logits: (..., V); ids outside the V columns are ignored.
    """
    if penalty == 1.0 or not context_ids:
        return logits
    vocab = logits.size(-1)
    ids = torch.tensor(sorted({i for i in context_ids if 0 <= i < vocab}), dtype=torch.long, device=logits.device)
    picked = logits.index_select(-1, ids)
    picked = picked / penalty if style == "divide" else torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.index_copy(-1, ids, picked)


def top_k_filter(logits, k):
    """Keep exactly the k largest logits (ties go to the lower id); the rest become -inf."""
    k = min(k, logits.size(-1))
    values, indices = torch.topk(logits, k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter(-1, indices, values)


def top_p_filter(logits, p):
    """Nucleus filter (Holtzman et al. 2019): keep the smallest set of most likely tokens whose
    probabilities add up to at least p, never fewer than one; the rest become -inf."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens; 0 for the first
    sorted_logits = sorted_logits.masked_fill(mass_before >= p, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Next-token logits (B, V) -> token ids (B,). temperature 0 is greedy (argmax);
    top_k 0/None and top_p 1/None are off. generator makes the draw reproducible."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    # the max subtracted first: a tiny temperature then sharpens toward argmax instead of
    # overflowing to inf (and NaN probabilities)
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


# ---------------------------------------------------------------------------------------
# the generation loop

def _device(model):
    return next(unwrap(model).parameters()).device


class TokenCache:
    """A model's KV cache plus the ids it holds, so that a later prompt sharing a prefix with
    them is prefilled only from the first position where they differ."""

    def __init__(self, model):
        self.kv = unwrap(model).new_kv_cache()
        self.ids = []

    def reset(self):
        self.kv.reset()
        self.ids = []

    def reusable(self, ids):
        """How many leading ids are cached already: at most len(ids) - 1, since the last one
        must go through the model to give the next token's logits."""
        if self.kv.pos != len(self.ids):  # out of step, e.g. a forward interrupted by Ctrl-C
            return 0
        n = min(len(self.ids), len(ids) - 1)
        if self.ids[:n] == ids[:n]:  # the common case, compared at C speed
            return n
        return next(i for i in range(n) if self.ids[i] != ids[i])

    def feed(self, model, ids, autocast):
        """Bring the cache to hold exactly ids; return the logits (1, V) after the last one."""
        start = self.reusable(ids)
        self.kv.pos, self.ids = start, self.ids[:start]  # positions past start are overwritten
        x = torch.tensor([ids[start:]], dtype=torch.long, device=_device(model))
        with torch.no_grad(), autocast:
            logits, _ = model(x, kv_cache=self.kv)
        self.ids.extend(ids[start:])
        return logits[:, -1, :]


def generate(model, prompt_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
             repetition_penalty=1.0, stop_tokens=(), seed=None, vocab_size=None,
             cache=None, use_cache=True, autocast=None, repetition_window=0, penalty_style="ctrl", generator=None):
    """Yield up to max_new_tokens new token ids (ints) as they are sampled.

    prompt_ids: at least one id; only the last block_size are seen. stop_tokens end the
    generation and are not yielded. seed: draws come from a torch.Generator seeded with it
    (None: the global RNG). vocab_size: sample only ids below it (the tokenizer's vocabulary;
    the model's table is padded past it). cache: a TokenCache to reuse across calls (default:
    a fresh one). use_cache=False recomputes the whole context every step (the reference).
    autocast: a context manager entered around each forward (mixed precision).
    repetition_window: the penalty sees only the last this many tokens (0: the whole context).
    penalty_style: 'ctrl' or 'divide' (apply_repetition_penalty). generator: a torch.Generator to
    draw from instead of one seeded with seed (a stream that goes on across calls).
    The model should be in eval mode; nothing here changes it.
    """
    check_options(max_new_tokens, temperature, top_k, top_p, repetition_penalty, repetition_window, penalty_style)
    context = [int(i) for i in prompt_ids]
    if not context:
        raise ValueError("generate needs at least one prompt token (e.g. <|endoftext|>)")
    block_size = unwrap(model).config.block_size
    device = _device(model)
    autocast = autocast if autocast is not None else nullcontext()
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    stop = set(stop_tokens)
    if use_cache and cache is None:
        cache = TokenCache(model)
    context = context[-block_size:]
    for _ in range(max_new_tokens):
        if use_cache:
            # one new token normally; the whole window after a crop (the cached positions moved)
            logits = cache.feed(model, context, autocast)
        else:
            x = torch.tensor([context], dtype=torch.long, device=device)
            with torch.no_grad(), autocast:
                logits = model(x)[0][:, -1, :]
        logits = logits.float()  # bf16 logits under autocast would make the penalty and softmax coarse
        if vocab_size is not None and vocab_size < logits.size(-1):
            # masked, not cut off: the draw then takes as many random numbers as the original's did
            # over the whole padded table, so --preset=original follows its random stream
            logits[:, vocab_size:] = float("-inf")
        logits = apply_repetition_penalty(logits, context[-repetition_window:] if repetition_window else context,
                                          repetition_penalty, penalty_style)
        token = int(sample_next(logits, temperature, top_k, top_p, generator)[0])
        if token in stop:
            return
        yield token
        context.append(token)
        if len(context) > block_size:
            context = context[-block_size:]


# ---------------------------------------------------------------------------------------
# ids -> text, with stop strings

def stream_text(tokens, stop_strings=(), decoder=None):
    """Decode an iterable of ids into text pieces as soon as they are complete, ending just
    before the first stop string (which is never yielded).

    Text that could still become a stop string (a tag spread over several tokens) is held
    back until it either completes the stop string or turns out to be ordinary text.
    decoder: a StreamDecoder that may already hold the prompt's unfinished bytes.
    """
    decoder = decoder if decoder is not None else StreamDecoder()
    stops = [s for s in stop_strings if s]
    held = ""

    def first_stop(text):
        found = [i for i in (text.find(s) for s in stops) if i >= 0]
        return min(found) if found else None

    def safe_length(text):  # how much of text cannot be the start of a stop string
        for n in range(min(len(text), max((len(s) for s in stops), default=0)), 0, -1):
            if any(s.startswith(text[-n:]) for s in stops):
                return len(text) - n
        return len(text)

    try:
        for token in tokens:
            held += decoder.push(token)
            end = first_stop(held)
            if end is not None:
                if end:
                    yield held[:end]
                return
            cut = safe_length(held)
            if cut:
                yield held[:cut]
                held = held[cut:]
        held += decoder.flush()
        end = first_stop(held)
        held = held if end is None else held[:end]
        if held:
            yield held
    finally:
        if hasattr(tokens, "close"):  # stop the generator now, not at garbage collection
            tokens.close()
