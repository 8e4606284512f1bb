"""
The tokenizer and chat template every script uses.

The tokenizer is GPT-2 BPE (same ids as tiktoken.get_encoding("gpt2")), built from the
vendored data/gpt2.tiktoken so that nothing is downloaded. The chat template is the one of
the published fine-tuned checkpoint, written as plain text tokens (not special tokens):

    <|system|>\n{text}\n<|/system|>\n<|user|>\n{text}\n<|/user|>\n<|assistant|>\n{text}\n<|/assistant|>\n<|endoftext|>

Only <|endoftext|> (id 50256) is a special token. The training mask is 1 exactly on what the
model must learn to write: the assistant's text plus its closing tag "\n<|/assistant|>", so
the model learns when to stop.
"""

import base64
import functools
import os

EOT = 50256
EOT_TEXT = "<|endoftext|>"
VOCAB_SIZE = 50257
ROLES = ("system", "user", "assistant")
SYSTEM_START, SYSTEM_END = "<|system|>", "<|/system|>"
USER_START, USER_END = "<|user|>", "<|/user|>"
ASSISTANT_START, ASSISTANT_END = "<|assistant|>", "<|/assistant|>"
BPE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "gpt2.tiktoken")
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def read_bpe_ranks(path=BPE_FILE):
    """Parse 'base64(token bytes) rank' lines ourselves: tiktoken's loader copies files into a cache."""
    ranks = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.lru_cache(maxsize=1)
def get_tokenizer():
    """The GPT-2 tiktoken Encoding, built once per process from the vendored ranks."""
    import tiktoken  # imported here so that importing this module stays cheap
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_SPLIT_PATTERN,
        mergeable_ranks=read_bpe_ranks(),
        special_tokens={EOT_TEXT: EOT},
    )


def encode(text):
    """Text to ids; '<|endoftext|>' written in the text stays ordinary text, never the special id."""
    return get_tokenizer().encode_ordinary(text)


def decode(ids):
    return get_tokenizer().decode(list(ids))


# ---------------------------------------------------------------------------------------
# chat template

class InvalidConversation(ValueError):
    """A conversation the template cannot render; .reason is one short fixed phrase to count by."""

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _checked_messages(messages, need_assistant):
    """Validate messages and return them as (role, content) pairs, empty system prompts dropped."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InvalidConversation("no messages")
    turns = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise InvalidConversation("unknown role", f"message {i} has role {role!r}")
        content = message.get("content")
        if not isinstance(content, str):
            raise InvalidConversation("non-string content", f"message {i} content is {type(content).__name__}")
        if not content.strip():
            if role == "system":  # many datasets carry an empty system prompt: it says nothing
                continue
            raise InvalidConversation("empty content", f"message {i} ({role}) is empty")
        turns.append((role, content))
    if need_assistant and not any(role == "assistant" for role, _ in turns):
        raise InvalidConversation("no assistant turn")
    return turns


def _encode_turn(role, content):
    """One turn as (ids, mask), encoded segment by segment so the mask edges fall on tokens."""
    header, content_ids, closing, newline = (
        encode(f"<|{role}|>\n"), encode(content), encode(f"\n<|/{role}|>"), encode("\n"))
    learn = 1 if role == "assistant" else 0
    ids = header + content_ids + closing + newline
    mask = [0] * len(header) + [learn] * (len(content_ids) + len(closing)) + [0] * len(newline)
    return ids, mask


def render_conversation(messages):
    """Messages [{"role", "content"}] to (ids, mask) for training, ending with EOT.

    mask is 1 on the assistant replies and their closing tags, 0 elsewhere. Raises
    InvalidConversation (a ValueError) with .reason in: 'no messages', 'unknown role',
    'non-string content', 'empty content', 'no assistant turn'.
    """
    ids, mask = [], []
    for role, content in _checked_messages(messages, need_assistant=True):
        turn_ids, turn_mask = _encode_turn(role, content)
        ids += turn_ids
        mask += turn_mask
    return ids + [EOT], mask + [0]


def render_prompt(messages):
    """The conversation so far plus the assistant header, for generation (no EOT).

    Generation should stop at the text ASSISTANT_END or at EOT.
    """
    ids = []
    for role, content in _checked_messages(messages, need_assistant=False):
        ids += _encode_turn(role, content)[0]
    return ids + encode(f"{ASSISTANT_START}\n")


# ---------------------------------------------------------------------------------------
# streaming detokenization

def _unfinished_tail_length(data):
    """How many bytes at the end of data start a UTF-8 character whose other bytes are still to come."""
    for back in range(1, min(3, len(data)) + 1):  # a character is at most 4 bytes
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: look further back for the lead byte
            continue
        needed = 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4 if byte >> 3 == 0b11110 else 1
        return back if needed > back else 0
    return 0


class StreamDecoder:
    """Turn ids into text one at a time, holding back bytes of a character not yet complete.

    A single character (an emoji, a CJK glyph) can be split over several BPE tokens, so
    decoding token by token would print broken characters.
    """

    def __init__(self):
        self.pending = b""

    def push(self, token_id):
        """Add one token; return the text that is now complete (maybe '')."""
        self.pending += get_tokenizer().decode_single_token_bytes(token_id)
        cut = len(self.pending) - _unfinished_tail_length(self.pending)
        text, self.pending = self.pending[:cut].decode("utf-8", errors="replace"), self.pending[cut:]
        return text

    def flush(self):
        """Return whatever is held back (replacement characters if it is not valid UTF-8)."""
        text, self.pending = self.pending.decode("utf-8", errors="replace"), b""
        return text
