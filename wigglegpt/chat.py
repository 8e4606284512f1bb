"""
A conversation with the model: the chat template's prompt trimmed to fit the context (oldest
turns first, the system prompt kept), the stop strings, and the KV cache carried across turns.
chat_bio.py (terminal) and wigglegpt/web.py (browser) both talk through a Chat.
"""

import torch

from wigglegpt.common import UserError
from wigglegpt.engine import TokenCache, generate, stream_text
from wigglegpt.tokenizer import (ASSISTANT_END, ASSISTANT_START, EOT, EOT_TEXT, USER_START, VOCAB_SIZE, encode,
                                 encode_with_special, prompt_text, render_prompt)

# the template puts a newline before the closing tag; stopping at it keeps it out of the reply.
# A reply that runs on into a user turn of its own ends there too.
STOP_STRINGS = ("\n" + ASSISTANT_END, ASSISTANT_END, "\n" + USER_START, USER_START)
DEFAULT_MAX_NEW_TOKENS = 256
SPACE = 220  # ' ', what the original chat.py padded short prompts with


class MessageTooLong(UserError):
    """The newest message does not fit the context even without any history (its prompt_tokens)."""

    def __init__(self, message, prompt_tokens):
        super().__init__(message)
        self.prompt_tokens = prompt_tokens


def fit_history(system, messages, budget):
    """Drop the oldest user/assistant turns until the prompt fits in budget tokens.

    messages: the conversation without the system prompt, ending with the new user message
    (always kept, as is the system prompt). Returns (kept messages, prompt ids).
    """
    kept = list(messages)
    head = [{"role": "system", "content": system}] if system.strip() else []
    while True:
        ids = render_prompt(head + kept)
        if len(ids) <= budget:
            return kept, ids
        if len(kept) <= 1:
            raise MessageTooLong(f"the message makes a prompt of {len(ids)} tokens; {budget} fit "
                                 "(the context minus max_new_tokens)", len(ids))
        kept.pop(0)
        while len(kept) > 1 and kept[0]["role"] == "assistant":  # a turn goes as a whole
            kept.pop(0)


def original_prompt(system, messages, budget, n_head):
    """The prompt as the original WiggleGPT chat.py built it: the whole history as text, a typed
    '<|endoftext|>' the special token, padded at the front with ' ' to n_head tokens (its guard for
    RoPE), and its oldest tokens cut to fit budget, mid-turn too."""
    head = [{"role": "system", "content": system}] if system.strip() else []
    ids = encode_with_special(prompt_text(head + messages, keep_empty=True))
    ids = [SPACE] * (n_head - len(ids)) + ids
    return ids[-budget:]


class Chat:
    """One conversation: the system prompt, the turns so far, and the KV cache across turns.

    original=True answers as the original WiggleGPT chat.py did (--preset=original): its prompt
    (original_prompt: the history kept whole and cut by tokens, not by turns), '<|endoftext|>' in
    a reply's text ends it too, an empty reply stays a turn, and one random stream, seeded once,
    runs through all turns (here turn i draws with seed + i)."""

    def __init__(self, model, system="", max_new_tokens=256, seed=None, autocast=None, original=False, **sampling):
        block_size = model.config.block_size
        if max_new_tokens >= block_size:
            raise UserError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt in the "
                            f"model's context of {block_size} tokens")
        self.model, self.system, self.history = model, system, []
        self.budget = block_size - max_new_tokens
        self.max_new_tokens, self.seed, self.autocast, self.sampling = max_new_tokens, seed, autocast, sampling
        self.cache = TokenCache(model)
        self.turns = 0
        self.original = original
        self.generator = None
        if original and seed is not None:
            self.generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)

    def clear(self):
        self.history = []  # the cache stays: the system prompt at its start is still good

    def respond(self, text, write):
        """Answer the user message text, writing the reply as it is made; return the reply.

        Raises MessageTooLong (history untouched) when text cannot fit. Ctrl-C ends the
        reply early; what was written so far stays in the history.
        """
        messages = self.history + [{"role": "user", "content": text}]
        if self.original:
            ids = original_prompt(self.system, messages, self.budget, self.model.config.n_head)
            self.history = messages
        else:
            self.history, ids = fit_history(self.system, messages, self.budget)
        stops = STOP_STRINGS + (EOT_TEXT,) if self.original else STOP_STRINGS
        seed = None if self.seed is None else self.seed + self.turns
        self.turns += 1
        tokens = generate(self.model, ids, self.max_new_tokens, stop_tokens=(EOT,), seed=seed, generator=self.generator,
                          vocab_size=VOCAB_SIZE, cache=self.cache, autocast=self.autocast, **self.sampling)
        pieces = []
        try:
            for piece in stream_text(tokens, stops):
                write(piece)
                pieces.append(piece)
        except KeyboardInterrupt:
            pass  # the cache notices an interrupted forward by itself (TokenCache.reusable)
        reply = "".join(pieces)
        # the template has no empty turns (the original's history kept an empty reply too); kept
        # stripped, as the original chat.py kept it: later prompts are that one's, id for id
        if reply.strip() or self.original:
            self.history.append({"role": "assistant", "content": reply.strip()})
        return reply


def droppable_prefix(messages, budget):
    """How many of the oldest messages can be left out before fit_history sees the conversation
    without changing what it keeps.

    fit_history re-renders the whole prompt for every turn it drops, which is slow for a long
    conversation; this encodes only the newest messages, once each. It returns the last place
    where fit_history's trimming would start a kept conversation (the first message, a user
    message, or the newest) whose messages already need more than budget tokens: fit_history
    drops everything before it too, so starting there gives the same result.
    """
    header = len(encode(f"{ASSISTANT_START}\n"))
    total = header
    for i in range(len(messages) - 1, -1, -1):
        total += len(render_prompt([messages[i]])) - header  # the template encodes turn by turn
        if total > budget:
            while i and i < len(messages) - 1 and messages[i]["role"] == "assistant":
                i -= 1
            return i
    return 0


def fit_conversation(system, messages, budget):
    """fit_history's (kept messages, prompt ids), cheap also for very long conversations."""
    start = droppable_prefix(messages, budget)
    return fit_history(system, messages[start:], budget)


ORIGINAL_MAX_NEW_TOKENS = 512  # the original chat.py's reply length


def reply_budget(max_new_tokens, block_size, original=False):
    """max_new_tokens as given, or (None) the default (256; the original chat.py's 512 with
    original) that still leaves the prompt half the context."""
    default = ORIGINAL_MAX_NEW_TOKENS if original else DEFAULT_MAX_NEW_TOKENS
    return max_new_tokens if max_new_tokens is not None else min(default, block_size // 2)
