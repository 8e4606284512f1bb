"""Protects --preset=original of chat_bio.py and sample_bio.py: they answer token for token as
the original WiggleGPT's chat.py and sample_bio.py did under the same seed on the CPU. The
original's loops are restated here from what they do (full recompute each step, logits / T, every
seen token's logit divided by the penalty, top-k by threshold, one global random stream, its
prompt rules), and compared with the real commands' output on a tiny random model."""

import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, tiny_config
from model_bio import GPT
from wigglegpt.chat import Chat, original_prompt
from wigglegpt.checkpoint import checkpoint_dict, save_checkpoint
from wigglegpt.tokenizer import EOT_TEXT, VOCAB_SIZE, decode, encode_with_special

USER_START, USER_END, ASSISTANT_START, ASSISTANT_END = "<|user|>\n", "\n<|/user|>\n", "<|assistant|>\n", "\n<|/assistant|>"


def varied_model():
    """Weights scaled up so that replies are varied words; the padded ids' rows zeroed, as a
    trained model never ranks them among the top-k (the project never samples them)."""
    torch.manual_seed(0)
    model = GPT(tiny_config(block_size=1024, vocab_size=50304, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(25)
        model.transformer.wte.weight[VOCAB_SIZE:] = 0
    return model


@pytest.fixture(scope="module")
def model():
    return varied_model()


@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("presets") / "ckpt.pt"
    save_checkpoint(checkpoint_dict(model), str(path))
    return path


def original_step(model, idx, temperature, top_k, penalty, seen):
    logits = model(torch.tensor([idx[-model.config.block_size:]]))[0][:, -1, :] / temperature
    for token in set(seen):
        logits[0, token] /= penalty
    kth = torch.topk(logits, min(top_k, logits.size(-1)))[0][:, [-1]]
    logits[logits < kth] = -float("inf")
    return int(torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1)[0, 0])


@torch.no_grad()
def original_chat(model, messages, max_new_tokens=512):
    """The original chat.py's replies to the user messages, one conversation, seeded outside."""
    history, replies = "", []
    for text in messages:
        ids = encode_with_special(history + USER_START + text + USER_END + ASSISTANT_START)
        if len(ids) < model.config.n_head:
            ids = [220] * (model.config.n_head - len(ids)) + ids
        ids = ids[-(model.config.block_size - max_new_tokens):]
        idx, new = list(ids), []
        for _ in range(max_new_tokens):
            token = original_step(model, idx, 0.7, 50, 1.15, idx[-100:])
            idx.append(token)
            new.append(token)
            so_far = decode(new)
            if "<|/assistant|>" in so_far or EOT_TEXT in so_far or "<|user|>" in so_far:
                break
        reply = decode(new).split("<|/assistant|>")[0].split("<|user|>")[0].split(EOT_TEXT)[0].strip()
        history += USER_START + text + USER_END + ASSISTANT_START + reply + ASSISTANT_END + "\n"
        replies.append(reply)
    return replies


@torch.no_grad()
def original_samples(model, start, num_samples, max_new_tokens):
    x = encode_with_special(start)
    out = []
    for _ in range(num_samples):
        idx = list(x)
        for _ in range(max_new_tokens):
            idx.append(original_step(model, idx, 0.5, 200, 1.2, idx))
        out.append(decode(idx))
    return out


def run(script, *args, stdin=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], input=stdin, capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_chat_preset_original_answers_as_the_original_chat_py(model, ckpt):
    messages = ["Hello there, who are you?", "Tell me more <|endoftext|> please."]
    torch.manual_seed(7)
    expected = original_chat(model, messages, max_new_tokens=48)  # 512 there; fewer keep the test quick
    result = run("chat_bio.py", f"--ckpt={ckpt}", "--device=cpu", "--preset=original", "--seed=7",
                 "--max_new_tokens=48", stdin="".join(m + "\n" for m in messages))
    assert result.returncode == 0, result.stderr
    got = [line.strip() for line in result.stdout.splitlines()]
    assert got == [" ".join(r.split("\n")) for r in expected] and any(expected), (got, expected)


def test_original_prompt_cuts_tokens_pads_and_reads_the_typed_special_token(model):
    history = [{"role": "user", "content": "a " * 300}, {"role": "assistant", "content": "b " * 300},
               {"role": "user", "content": "c <|endoftext|>"}]
    ids = original_prompt("", history, 512, 2)
    text = "".join(f"<|{m['role']}|>\n{m['content']}\n<|/{m['role']}|>\n" for m in history) + ASSISTANT_START
    assert ids == encode_with_special(text)[-512:] and 50256 in ids  # mid-turn, and the special id
    assert original_prompt("", [{"role": "user", "content": "x"}], 512, 40)[:3] == [220] * 3  # padded to n_head
    # the project's own chat keeps whole turns and '<|endoftext|>' as text
    chat = Chat(model, max_new_tokens=4, temperature=0.0)
    chat.respond("c <|endoftext|>", lambda piece: None)
    assert 50256 not in chat.cache.ids


def test_sample_preset_original_samples_as_the_original_sample_bio_py(model, ckpt):
    torch.manual_seed(1337)
    expected = original_samples(model, "Once upon a time", 2, 40)
    result = run("sample_bio.py", f"--ckpt={ckpt}", "--device=cpu", "--preset=original", "--start=Once upon a time",
                 "--num_samples=2", "--max_new_tokens=40")
    assert result.returncode == 0, result.stderr
    got = [s.strip("\n") for s in result.stdout.split("\n" + "-" * 40 + "\n")]
    assert got == expected
    # without the preset the project's own sampling: another draw (seed + i per sample, its penalty)
    plain = run("sample_bio.py", f"--ckpt={ckpt}", "--device=cpu", "--start=Once upon a time", "--num_samples=2",
                "--max_new_tokens=40", "--temperature=0.5", "--top_k=200", "--repetition_penalty=1.2")
    assert plain.returncode == 0 and plain.stdout.split("\n" + "-" * 40 + "\n")[1].strip("\n") != expected[1]
