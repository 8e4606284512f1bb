"""
Protects fidelity to the published fine-tune's chat format: training conversations give
token for token the ids of the original finetune_native.py (turns joined into one string,
.strip()-ed, encoded as a whole with encode_ordinary, cut to 1024 tokens, then EOT), the
assistant mask is computed on those whole-string tokens (a token straddling the start of a
reply is learned), and chat prompts are the ids the original chat.py built.

The reference renderings below are written here with plain string building, independent of
wigglegpt.tokenizer's code.
"""

import random

import pytest

from wigglegpt import tokenizer as tk

PIECES = ["Hello", " world", "\n", "\n\n", "\n\n\n", "\n ", "  ", "\t", " ", "naïve café", "日本語",
          "😀👍🏽", "<|endoftext|>", "<|user|>", "<|/assistant|>", "a\r\nb", "x" * 40, "1234", "—", ".", "?"]


def original_text(messages):
    """finetune_native.py's format_conversation, restated."""
    text = ""
    for m in messages:
        text += "<|" + m["role"] + "|>\n" + m["content"] + "\n<|/" + m["role"] + "|>\n"
    return text.strip()


def original_ids(messages, max_tokens=1024):
    enc = tk.get_tokenizer()
    ids = enc.encode_ordinary(original_text(messages))
    return ids[:max_tokens] + [enc.eot_token]


def reference_mask(messages, ids):
    """1 where a token shares a character with a reply or its closing tag (char offsets from
    tiktoken's decode_with_offsets, a different route than the byte counts of wigglegpt.tokenizer)."""
    text, spans, at = original_text(messages), [], 0
    for m in messages:
        header = "<|" + m["role"] + "|>\n"
        turn = header + m["content"] + "\n<|/" + m["role"] + "|>\n"
        if m["role"] == "assistant":
            spans.append((at + len(header), at + len(turn) - 1))
        at += len(turn)
    whole = tk.get_tokenizer().encode_ordinary(text)  # uncut: a cut may split a character
    assert ids[:-1] == whole[:len(ids) - 1]
    decoded, offsets = tk.get_tokenizer().decode_with_offsets(whole)
    assert decoded == text
    ends = offsets[1:] + [len(decoded)]
    mask = [int(any(a < max(end, start + 1) and start < b for a, b in spans)) for start, end in zip(offsets, ends)]
    return mask[:len(ids) - 1] + [0]


def fuzz_content(rng):
    text = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 6)))
    return text if text.strip() else text + "ok"


def fuzz_conversations(n, seed=0):
    rng = random.Random(seed)
    for _ in range(n):
        messages = []
        if rng.random() < 0.5:
            messages.append({"role": "system", "content": rng.choice(["", fuzz_content(rng)])})
        for _ in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": fuzz_content(rng)})
            messages.append({"role": "assistant", "content": fuzz_content(rng)})
        if rng.random() < 0.2:
            messages.append({"role": "user", "content": fuzz_content(rng)})  # ends on a user turn
        yield messages


def test_ids_match_the_original_rendering_on_a_fuzz_set():
    hard = 0
    for messages in fuzz_conversations(300):
        ids, mask = tk.render_conversation(messages)
        assert ids == original_ids(messages)
        assert mask == reference_mask(messages, ids)
        assert len(mask) == len(ids) and ids.count(tk.EOT) == 1  # literal "<|endoftext|>" stays text
        hard += sum(m["content"][:1].isspace() for m in messages)
    assert hard > 50  # the fuzz really hit contents that start with whitespace


def test_known_differences_from_segment_encoding():
    messages = [{"role": "system", "content": ""}, {"role": "user", "content": "\n\nHi"},
                {"role": "assistant", "content": "\n Yes"}]
    ids, _ = tk.render_conversation(messages)
    text = "<|system|>\n\n<|/system|>\n<|user|>\n\n\nHi\n<|/user|>\n<|assistant|>\n\n Yes\n<|/assistant|>"
    assert ids == tk.get_tokenizer().encode_ordinary(text) + [tk.EOT]
    assert tk.decode(ids) == text + "<|endoftext|>"  # no "\n" before EOT, the empty system turn kept
    assert tk.encode("\n\n") != tk.encode("\n") * 2  # the merge that segment-wise encoding would miss


def test_a_token_straddling_the_start_of_a_reply_is_learned():
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "\n Yes"}]
    ids, mask = tk.render_conversation(messages)
    first = mask.index(1)
    assert tk.decode(ids[first:first + 1]) == "\n\n"  # the header's newline merged with the reply's
    assert tk.decode(ids[:first]).endswith("<|assistant|>")
    learned = tk.decode([i for i, m in zip(ids, mask) if m])
    assert learned == "\n\n Yes\n<|/assistant|>"  # every character of the reply is in a learned token


def test_cut_to_max_tokens_then_eot_and_loss_on_all():
    long = [{"role": "user", "content": "go"}, {"role": "assistant", "content": "word " * 2000}]
    ids, mask = tk.render_conversation(long)
    assert len(ids) == 1025 and ids == original_ids(long) and ids[-1] == tk.EOT and mask[-1] == 0
    ids, mask = tk.render_conversation(long, max_tokens=50)
    assert len(ids) == 51 and ids == original_ids(long, 50)
    assert len(tk.render_conversation(long, max_tokens=0)[0]) > 2000
    ids, mask = tk.render_conversation(long[:2], max_tokens=1024, loss_on="all")
    assert mask == [1] * len(ids)  # the published run: every token, EOT included
    with pytest.raises(ValueError):
        tk.render_conversation(long, loss_on="users")


def original_chat_prompt(turns, new_user):
    """chat.py's generate_response prompt: history + user turn + assistant header."""
    history = ""
    for user, reply in turns:
        history += "<|user|>\n" + user + "\n<|/user|>\n"
        history += "<|assistant|>\n" + reply + "\n<|/assistant|>" + "\n"
    return history + "<|user|>\n" + new_user + "\n<|/user|>\n" + "<|assistant|>\n"


@pytest.mark.parametrize("turns, new_user", [
    ([], "Hello!"),
    ([("What is 2+2?", "4.")], "And 3+3?"),
    ([("Hi", "Hello! How can I help?"), ("naïve 😀 question", "Answer — with 日本語.")], "thanks"),
    ([("  spaced  ", " lead")], "\n\nnewlines"),
])
def test_chat_prompt_is_the_original_chat_py_prompt(turns, new_user):
    messages = []
    for user, reply in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    messages.append({"role": "user", "content": new_user})
    expected = tk.get_tokenizer().encode_ordinary(original_chat_prompt(turns, new_user))
    assert tk.render_prompt(messages) == expected


def test_prepare_smoltalk_writes_the_original_ids_with_either_loss(tmp_path):
    import json
    import os
    import subprocess
    import sys

    import numpy as np
    conversations = list(fuzz_conversations(60, seed=1))
    with open(tmp_path / "chats.jsonl", "w", encoding="utf-8") as f:
        for messages in conversations:
            f.write(json.dumps({"messages": messages}) + "\n")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = {}
    for loss_on in ("assistant", "all"):
        result = subprocess.run(
            [sys.executable, os.path.join(repo, "prepare_smoltalk.py"), "--data_files=chats.jsonl",
             f"--out_dir={loss_on}", f"--loss_on={loss_on}", "--max_tokens=40", "--num_threads=1"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
            env={**os.environ, "PYTHONPATH": repo, "HF_HOME": str(tmp_path / "hf")})
        assert result.returncode == 0, result.stderr
        meta = json.loads((tmp_path / loss_on / "meta.json").read_text())
        assert meta["val_fraction"] == 0.05 and meta["val_docs"] >= 1
        docs = []
        for split in ("train", "val"):
            ids = np.fromfile(tmp_path / loss_on / f"{split}.bin", dtype=np.uint16).tolist()
            mask = np.fromfile(tmp_path / loss_on / f"{split}_mask.bin", dtype=np.uint8).tolist()
            ends = [i for i, t in enumerate(ids) if t == tk.EOT]
            docs += [(ids[a:b + 1], mask[a:b + 1]) for a, b in zip([0] + [e + 1 for e in ends[:-1]], ends)]
        found[loss_on] = sorted(docs)
    expected = [original_ids(m, 40) for m in conversations]
    assert sorted(ids for ids, _ in found["assistant"]) == sorted(expected)
    assert sorted(found["assistant"]) == sorted((ids, reference_mask(m, ids))
                                                for m, ids in zip(conversations, expected))
    assert all(set(mask) == {1} for _, mask in found["all"])
    with pytest.raises(SystemExit):
        import prepare_smoltalk
        from wigglegpt.common import run_main
        run_main(lambda: prepare_smoltalk.main(["--loss_on=users", f"--out_dir={tmp_path / 'x'}"]))
