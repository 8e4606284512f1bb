"""
Protects wigglegpt.tokenizer: the GPT-2 ids every checkpoint depends on, the exact chat template
text of the published fine-tuned model, a loss mask that covers exactly the assistant replies
and their closing tags, the reasons bad conversations are rejected with, and streaming
detokenization that never prints half a character.
"""

import gzip
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from wigglegpt import tokenizer as tk  # noqa: E402

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a prime."},
    {"role": "assistant", "content": "Seven."},
    {"role": "user", "content": "Another, with <|endoftext|> in it?"},
    {"role": "assistant", "content": "Eleven — <|endoftext|> stays text. 😀"},
]
MIXED_TEXT = ("naïve café — 😀👍🏽 日本語のテキスト, 한국어, Ελληνικά, "
              "emoji family 👩‍👩‍👧 end")


def masked_runs(ids, mask):
    """The token runs where mask is 1, as (start, end) pairs."""
    runs, start = [], None
    for i, m in enumerate(list(mask) + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_gpt2_ids_and_special_token():
    enc = tk.get_tokenizer()
    assert enc is tk.get_tokenizer()  # built once
    assert tk.encode("Hello world") == [15496, 995]
    assert tk.encode("\n") == [198] and tk.encode(" the") == [262]
    assert tk.EOT == 50256 and enc.n_vocab == tk.VOCAB_SIZE == 50257
    assert enc.encode(tk.EOT_TEXT, allowed_special="all") == [tk.EOT]
    literal = tk.encode("a <|endoftext|> b")
    assert tk.EOT not in literal and tk.decode(literal) == "a <|endoftext|> b"


def test_round_trip_shakespeare_and_non_ascii():
    path = os.path.join(REPO, "data", "shakespeare", "shakespeare_complete.txt.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        text = f.read(300_000)
    ids = tk.encode(text)
    assert len(text) / 5 < len(ids) < len(text) / 2  # English BPE: about 3-4 characters a token
    assert tk.decode(ids) == text
    ids = tk.encode(MIXED_TEXT)
    assert tk.decode(ids) == MIXED_TEXT
    assert len(ids) > len(MIXED_TEXT.split())  # multi-byte characters really were split up


def test_template_text_is_exact():
    ids, mask = tk.render_conversation(CONVERSATION)
    assert tk.decode(ids) == (
        "<|system|>\nYou are terse.\n<|/system|>\n"
        "<|user|>\nName a prime.\n<|/user|>\n"
        "<|assistant|>\nSeven.\n<|/assistant|>\n"
        "<|user|>\nAnother, with <|endoftext|> in it?\n<|/user|>\n"
        "<|assistant|>\nEleven — <|endoftext|> stays text. 😀\n<|/assistant|>"
        "<|endoftext|>")
    assert ids[-1] == tk.EOT and ids.count(tk.EOT) == 1  # the literal text never became the special id
    assert len(mask) == len(ids) and set(mask) == {0, 1}


def test_mask_covers_exactly_replies_and_closing_tags():
    ids, mask = tk.render_conversation(CONVERSATION)
    runs = masked_runs(ids, mask)
    replies = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    assert [tk.decode(ids[a:b]) for a, b in runs] == [r + "\n" + tk.ASSISTANT_END for r in replies]
    for a, b in runs:
        assert tk.decode(ids[:a]).endswith(tk.ASSISTANT_START + "\n")  # the header is not learned
        assert tk.decode(ids[b:b + 1]) in ("\n", tk.EOT_TEXT)  # nor what follows the closing tag
    assert mask[-1] == 0


def test_prompt_is_the_prefix_training_saw():
    prompt = tk.render_prompt(CONVERSATION[:4])
    assert tk.decode(prompt).endswith("in it?\n<|/user|>\n<|assistant|>\n")
    ids, mask = tk.render_conversation(CONVERSATION)
    assert ids[:len(prompt)] == prompt
    assert mask[len(prompt)] == 1 and mask[len(prompt) - 1] == 0


def test_empty_system_prompt_is_kept_for_training_and_dropped_in_prompts():
    with_empty = [{"role": "system", "content": ""}] + CONVERSATION[1:3]
    ids, _ = tk.render_conversation(with_empty)
    assert tk.decode(ids).startswith("<|system|>\n\n<|/system|>\n<|user|>\n")  # as the published fine-tune saw it
    assert tk.render_prompt(with_empty[:2]) == tk.render_prompt(CONVERSATION[1:2])


@pytest.mark.parametrize("messages, reason", [
    ([], "no messages"),
    (None, "no messages"),
    ([{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}], "unknown role"),
    (["just a string"], "unknown role"),
    ([{"role": "user", "content": None}, {"role": "assistant", "content": "y"}], "non-string content"),
    ([{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "y"}], "non-string content"),
    ([{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}], "no assistant turn"),
])
def test_invalid_conversations_name_their_reason(messages, reason):
    with pytest.raises(ValueError) as raised:
        tk.render_conversation(messages)
    assert raised.value.reason == reason
    assert str(raised.value).startswith(reason)


def test_empty_and_blank_messages_stay_turns_as_in_the_published_data():
    messages = [{"role": "user", "content": "  \n"}, {"role": "assistant", "content": ""},
                {"role": "user", "content": "hi"}, {"role": "assistant", "content": "\n\n"}]
    text = "<|user|>\n  \n\n<|/user|>\n<|assistant|>\n\n<|/assistant|>\n<|user|>\nhi\n<|/user|>\n" \
           "<|assistant|>\n\n\n\n<|/assistant|>\n"
    ids, mask = tk.render_conversation(messages)
    assert ids == tk.get_tokenizer().encode_ordinary(text.strip()) + [tk.EOT]
    assert sum(mask) > 0
    # loss on every token: a conversation without a reply is trained on too, as the original did
    only_user = [{"role": "user", "content": "anyone?"}]
    ids, mask = tk.render_conversation(only_user, loss_on="all")
    assert ids == tk.encode("<|user|>\nanyone?\n<|/user|>") + [tk.EOT] and all(mask)


def test_prompt_needs_no_assistant_turn_but_checks_the_rest():
    assert tk.decode(tk.render_prompt([{"role": "user", "content": "hi"}])) == \
        "<|user|>\nhi\n<|/user|>\n<|assistant|>\n"
    with pytest.raises(ValueError):
        tk.render_prompt([{"role": "bot", "content": "hi"}])


def test_stream_decoder_never_yields_broken_characters():
    enc = tk.get_tokenizer()
    ids = tk.encode(MIXED_TEXT)
    single = [enc.decode_single_token_bytes(i) for i in ids]
    assert any(_invalid_utf8(b) for b in single)  # the text really splits characters across tokens
    decoder = tk.StreamDecoder()
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == MIXED_TEXT
    assert "" in pieces  # some tokens had to wait for the rest of their character


def test_stream_decoder_flush_replaces_an_unfinished_character():
    enc = tk.get_tokenizer()
    decoder = tk.StreamDecoder()
    assert decoder.push(enc.encode_single_token(b"\xe4")) == ""  # first byte of a 3-byte character
    assert decoder.flush() == "\ufffd"
    assert decoder.push(tk.encode("ok")[0]) == "ok"  # flushed state starts clean


def _invalid_utf8(data):
    try:
        data.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True
