"""Protects wigglegpt/engine.py: greedy decoding over the KV cache gives exactly the tokens of a
full-recompute loop (RoPE, learned wpe and legacy_rope models, also past block_size and for
over-long prompts); a reused cache prefills only what changed; the sampler's options do what
they say (top-k keeps exactly k, top-p keeps the nucleus, the repetition penalty divides
positive and multiplies negative logits, temperature 0 is greedy, seeds reproduce); stop
tokens and stop strings end the output without showing themselves; bad options are errors."""

import pytest
import torch

from conftest import tiny_config
from wigglegpt.engine import (TokenCache, apply_repetition_penalty, check_options, generate, sample_next,
                        stream_text, top_k_filter, top_p_filter)
from model_bio import GPT
from wigglegpt.common import UserError
from wigglegpt.tokenizer import decode, encode

BLOCK = 16


def varied_model(**overrides):
    """A tiny random model whose greedy output is not one token repeated: at the usual init
    the tied embeddings make the last token its own argmax, which would hide position bugs."""
    torch.manual_seed(0)
    model = GPT(tiny_config(block_size=BLOCK, vocab_size=64, n_head=2, **overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    return model


def full_recompute_greedy(model, prompt, n):
    """The reference: every step runs the model over the last block_size tokens, no cache."""
    context, out = list(prompt), []
    for _ in range(n):
        with torch.no_grad():
            logits, _ = model(torch.tensor([context[-BLOCK:]]))
        token = int(logits[0, -1].argmax())
        out.append(token)
        context.append(token)
    return out


class ForwardSpy:
    """Wraps a model and records how many tokens each forward was given."""

    def __init__(self, model):
        self.model, self.config, self.fed = model, model.config, []

    def parameters(self):
        return self.model.parameters()

    def new_kv_cache(self):
        return self.model.new_kv_cache()

    def __call__(self, idx, targets=None, kv_cache=None):
        self.fed.append(idx.shape[1])
        return self.model(idx, targets, kv_cache=kv_cache)


@pytest.mark.parametrize("variant", [dict(), dict(use_rope=False), dict(legacy_rope=True)],
                         ids=["rope", "learned_wpe", "legacy_rope"])
@pytest.mark.parametrize("prompt_len", [5, 2 * BLOCK - 3])
def test_cached_greedy_equals_full_recompute(variant, prompt_len):
    model = varied_model(**variant)
    prompt = [(7 * i + 3) % 64 for i in range(prompt_len)]
    n = 3 * BLOCK  # well past block_size: many crop-and-refill steps
    expected = full_recompute_greedy(model, prompt, n)
    assert len(set(expected)) > 3, "the reference must not be a single repeated token"
    assert list(generate(model, prompt, n, temperature=0)) == expected
    assert list(generate(model, prompt, n, temperature=0, use_cache=False)) == expected


def test_cache_is_used_one_token_per_step_until_the_context_is_full():
    spy = ForwardSpy(varied_model())
    list(generate(spy, [1, 2, 3], BLOCK - 3 + 2, temperature=0))
    # prefill of 3, then single tokens until block_size, then a full window after each crop
    assert spy.fed == [3] + [1] * (BLOCK - 3) + [BLOCK]


def test_seeded_sampling_is_reproducible_and_same_with_or_without_cache():
    model = varied_model()
    options = dict(temperature=1.0, top_k=20, top_p=0.9, repetition_penalty=1.3)
    a = list(generate(model, [1, 2, 3], 40, seed=5, **options))
    assert a == list(generate(model, [1, 2, 3], 40, seed=5, **options))
    assert a == list(generate(model, [1, 2, 3], 40, seed=5, use_cache=False, **options))
    assert a != list(generate(model, [1, 2, 3], 40, seed=6, **options))


def test_reused_cache_prefills_only_the_new_suffix():
    spy = ForwardSpy(varied_model())
    cache = TokenCache(spy)
    first = list(generate(spy, [1, 2, 3, 4], 3, temperature=0, cache=cache))
    prompt = [1, 2, 3, 4] + first + [9, 10]
    spy.fed.clear()
    second = list(generate(spy, prompt, 3, temperature=0, cache=cache))
    # the last generated token never went through the model, so it is prefilled with the suffix
    assert spy.fed[0] == 3
    assert second == list(generate(spy.model, prompt, 3, temperature=0))


def test_reused_cache_restarts_where_a_new_prompt_differs():
    spy = ForwardSpy(varied_model())
    cache = TokenCache(spy)
    list(generate(spy, [1, 2, 3, 4, 5, 6], 2, temperature=0, cache=cache))
    spy.fed.clear()
    out = list(generate(spy, [1, 2, 8, 9], 4, temperature=0, cache=cache))
    assert spy.fed[0] == 2  # positions 0-1 kept, 2-3 recomputed over the stale entries
    assert out == list(generate(spy.model, [1, 2, 8, 9], 4, temperature=0))
    spy.fed.clear()
    list(generate(spy, [1, 2, 8, 9], 1, temperature=0, cache=cache))
    assert spy.fed == [1]  # an identical prompt still feeds its last token for the logits


def test_cache_out_of_step_is_refilled_from_scratch():
    model = varied_model()
    cache = TokenCache(model)
    list(generate(model, [1, 2, 3, 4], 2, temperature=0, cache=cache))
    cache.kv.pos += 1  # as if a forward was interrupted after advancing
    assert cache.reusable([1, 2, 3, 4, 5]) == 0
    assert list(generate(model, [1, 2, 3, 4], 5, temperature=0, cache=cache)) == \
        full_recompute_greedy(model, [1, 2, 3, 4], 5)


def test_stop_tokens_end_generation_and_are_not_yielded():
    model = varied_model()
    free = full_recompute_greedy(model, [1, 2, 3], 20)
    stop_at = next(i for i, t in enumerate(free) if t not in free[:i] and i >= 3)
    assert list(generate(model, [1, 2, 3], 20, temperature=0, stop_tokens=(free[stop_at],))) == free[:stop_at]
    assert list(generate(model, [1, 2, 3], 20, temperature=0, stop_tokens=(free[0],))) == []


def test_vocab_size_limits_what_is_sampled():
    model = varied_model()
    out = list(generate(model, [1, 2, 3], 60, temperature=2.0, seed=0, vocab_size=10))
    assert out and max(out) < 10


def test_prompt_must_not_be_empty():
    with pytest.raises(ValueError):
        list(generate(varied_model(), [], 3))


# --- the sampler ---------------------------------------------------------------------

def test_top_k_keeps_exactly_k_even_with_ties():
    logits = torch.tensor([[0.0, 3.0, 1.0, 3.0, 2.0, 3.0]])
    kept = torch.isfinite(top_k_filter(logits, 2))
    assert kept.sum() == 2 and kept[0, [1, 3, 5]].sum() == 2
    kept = torch.isfinite(top_k_filter(logits, 4))
    assert kept[0].tolist() == [False, True, False, True, True, True]
    assert torch.isfinite(top_k_filter(logits, 100)).all()
    assert torch.equal(top_k_filter(logits, 4)[kept], logits[kept])  # kept logits unchanged


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    for p, expected in [(0.4, [1]), (0.75, [1, 3]), (0.85, [1, 2, 3]), (0.97, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3])]:
        kept = torch.isfinite(top_p_filter(logits, p))[0].nonzero().flatten().tolist()
        assert kept == expected, p
    assert torch.isfinite(top_p_filter(logits, 1e-6)).sum() == 1  # never fewer than one
    exact = torch.tensor([[0.5, 0.25, 0.125, 0.125]]).log()  # powers of two: sums are exact
    for p, expected in [(0.5, 1), (0.75, 2), (0.875, 3)]:  # reaching p exactly is enough
        assert torch.isfinite(top_p_filter(exact, p)).sum() == expected, p
    rows = torch.stack([logits[0], logits[0].flip(0)])  # each row filtered on its own
    assert torch.isfinite(top_p_filter(rows, 0.75)).sum(dim=1).tolist() == [2, 2]


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0, 0.0]])
    out = apply_repetition_penalty(logits, [0, 1, 1, 4, 99], 2.0)  # duplicates once, 99 out of range
    assert out.tolist() == [[1.0, -4.0, 1.0, -1.0, 0.0]]
    assert logits.tolist() == [[2.0, -2.0, 1.0, -1.0, 0.0]]  # the input is not modified
    assert apply_repetition_penalty(logits, [0, 1], 1.0) is logits


def test_temperature_zero_is_greedy_whatever_the_filters():
    logits = torch.randn(3, 50)
    picks = sample_next(logits, temperature=0, top_k=5, top_p=0.5)
    assert torch.equal(picks, logits.argmax(dim=-1))


def test_seeded_draws_repeat_and_respect_top_k():
    logits = torch.zeros(1, 1000)
    logits[0, :3] = 5.0

    def draws(seed, **options):
        g = torch.Generator().manual_seed(seed)
        return [int(sample_next(logits, 1.0, generator=g, **options)) for _ in range(50)]

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)
    assert set(draws(3, top_k=3)) <= {0, 1, 2}
    assert len(set(draws(3))) > 3  # without the filter the flat tail gets drawn too


@pytest.mark.parametrize("bad", [dict(max_new_tokens=-1), dict(temperature=-0.1), dict(top_p=0.0),
                                 dict(top_p=1.5), dict(top_k=-2), dict(repetition_penalty=0.0)])
def test_bad_options_are_user_errors(bad):
    with pytest.raises(UserError):
        check_options(**bad)
    with pytest.raises(UserError):
        list(generate(varied_model(), [1], **{"max_new_tokens": 3, **bad}))


# --- text with stop strings ----------------------------------------------------------

def test_stop_string_spread_over_tokens_is_never_shown():
    stops = ("\n<|/assistant|>", "<|/assistant|>")
    ids = encode("Hi there <| not a tag\n<|/assistant|>\nmore")
    pieces = list(stream_text(iter(ids), stops))
    assert "".join(pieces) == "Hi there <| not a tag"
    assert not any("<|/" in p for p in pieces)
    assert "".join(stream_text(iter(encode("no stop <|/assist")), stops)) == "no stop <|/assist"


def test_stream_text_keeps_multibyte_characters_whole():
    text = "naïve 🙂 日本語 — done"
    ids = encode(text)
    pieces = list(stream_text(iter(ids)))
    assert "".join(pieces) == decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)


def test_stream_text_closes_the_token_generator_at_a_stop():
    state = {"closed": False}

    def tokens():
        try:
            yield from encode("abc<|/assistant|>def ghi")
        finally:
            state["closed"] = True

    assert "".join(stream_text(tokens(), ("<|/assistant|>",))) == "abc"
    assert state["closed"]


def test_a_tiny_temperature_sharpens_toward_greedy_instead_of_overflowing():
    from wigglegpt.engine import sample_next
    logits = torch.tensor([[1.0, 3.0, 2.0, -50.0]])
    for temperature in (1e-45, 1e-30, 1e-6):
        assert sample_next(logits, temperature=temperature, generator=torch.Generator().manual_seed(0)).item() == 1
