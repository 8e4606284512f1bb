"""
The tokenizer and chat template every script uses.

GPT-2 BPE with tiktoken's "gpt2" ids, built from the vendored data/gpt2.tiktoken (nothing is
downloaded), and the published fine-tune's chat template in plain-text tags: render_conversation
gives a conversation's ids and loss mask, render_prompt the ids of a prompt to reply to.
The template, token for token: README.md, "Fine-tune for chat".
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
BPE_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "gpt2.tiktoken")
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


def encode_with_special(text):
    """Text to ids, '<|endoftext|>' in it the special id, as the original WiggleGPT's scripts encoded
    their prompts (--preset=original)."""
    return get_tokenizer().encode(text, allowed_special={EOT_TEXT})


def decode(ids):
    return get_tokenizer().decode(list(ids))


# ---------------------------------------------------------------------------------------
# chat template

class InvalidConversation(ValueError):
    """A conversation the template cannot render; .reason is one short fixed phrase to count by."""

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _checked_messages(messages, need_assistant, keep_empty=False):
    """Validate messages and return them as (role, content) pairs. Empty (or whitespace-only)
    contents: with keep_empty they stay turns as they are (the published fine-tune's data kept
    them); otherwise an empty system prompt is dropped and any other empty message refused."""
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
        if not content.strip() and not keep_empty:
            if role == "system":  # many datasets carry an empty system prompt: it says nothing
                continue
            raise InvalidConversation("empty content", f"message {i} ({role}) is empty")
        turns.append((role, content))
    if need_assistant and not any(role == "assistant" for role, _ in turns):
        raise InvalidConversation("no assistant turn")
    return turns


def _turn_text(role, content):
    return f"<|{role}|>\n{content}\n<|/{role}|>\n"


def _token_byte_ends(ids):
    """Cumulative UTF-8 byte length after each token (a token may hold part of a character)."""
    enc, ends, total = get_tokenizer(), [], 0
    for token in ids:
        total += len(enc.decode_single_token_bytes(token))
        ends.append(total)
    return ends


def render_conversation(messages, max_tokens=1024, loss_on="assistant"):
    """Messages [{"role", "content"}] to (ids, mask) for training, exactly as the published
    fine-tune was trained (the original finetune_native.py):

        the turns as one string, each "<|role|>\n{content}\n<|/role|>\n" (an empty system
        prompt kept as an empty turn), .strip()-ed, encoded AS A WHOLE with encode_ordinary,
        cut to max_tokens (None or 0: no cut), then EOT.

    Encoding the whole string matters: BPE merges across the tag edges where content starts
    with whitespace ("<|assistant|>\n" + "\n\nHi" gives the token "\n\n", not "\n", "\n").

    mask (loss_on="assistant") is 1 on the tokens that hold any byte of an assistant's reply
    or of its closing "\n<|/assistant|>", 0 elsewhere and on EOT. It is computed from byte
    offsets of the whole-string tokens. A token straddling the start of a reply (the header's
    newline merged with the reply's leading whitespace) is learned: otherwise that leading
    whitespace would be the target of no learned token. The end never straddles: the closing
    tag ends in ">" and what follows is "\n" or EOT. loss_on="all": every token is learned,
    EOT included, as in the published run.

    Empty and whitespace-only messages stay turns, as in the original. Raises
    InvalidConversation (a ValueError) with .reason in: 'no messages', 'unknown role',
    'non-string content', and 'no assistant turn' (loss_on="assistant" only).
    """
    if loss_on not in ("assistant", "all"):
        raise ValueError(f"loss_on={loss_on!r}; use 'assistant' or 'all'")
    # loss on every token trains on any conversation, as the published run did; loss on the
    # assistant only needs an assistant turn to learn from
    turns = _checked_messages(messages, need_assistant=(loss_on == "assistant"), keep_empty=True)
    text = "".join(_turn_text(role, content) for role, content in turns).strip()
    ids = encode(text)
    if max_tokens:
        ids = ids[:max_tokens]
    if loss_on == "all":
        return ids + [EOT], [1] * (len(ids) + 1)
    # the learned byte spans: each reply and its closing tag (the leading strip removed nothing:
    # the text starts with "<|", so offsets into the joined turns are offsets into text)
    spans, at = [], 0
    for role, content in turns:
        start = at + len(f"<|{role}|>\n".encode())
        at += len(_turn_text(role, content).encode())
        if role == "assistant":
            spans.append((start, at - 1))  # up to the closing tag, without the newline after it
    mask, begin, span = [], 0, 0
    for end in _token_byte_ends(ids):
        while span < len(spans) and spans[span][1] <= begin:
            span += 1
        mask.append(int(span < len(spans) and spans[span][0] < end))
        begin = end
    return ids + [EOT], mask + [0]


def prompt_text(messages, keep_empty=False):
    """The text of render_prompt: the turns, then the assistant header. keep_empty: empty turns
    stay (the original chat.py kept an empty reply in its history)."""
    turns = _checked_messages(messages, need_assistant=False, keep_empty=keep_empty)
    return "".join(_turn_text(role, content) for role, content in turns) + f"{ASSISTANT_START}\n"


def render_prompt(messages):
    """The conversation so far plus the assistant header, for generation (no EOT).

    The same text the original chat.py builds (its history, then "<|user|>\n...\n<|/user|>\n
    <|assistant|>\n"), encoded as a whole; "<|endoftext|>" typed by a user stays text.
    Generation should stop at the text ASSISTANT_END, at "<|user|>", or at EOT.
    """
    return encode(prompt_text(messages))


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
