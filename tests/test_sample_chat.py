"""Protects sample_bio.py and chat_bio.py: both run as scripts on a tiny checkpoint (this
project's format and the original WiggleGPT format, '_orig_mod.' keys and all); streamed text
equals the decode of all tokens, multi-byte characters included; FILE: prompts, empty and
over-long prompts work (the latter cropped with a warning); every bad input is one line on
stderr with a non-zero exit and no traceback; chat answers one --prompt, answers each piped
line with exactly one line, stops at <|/assistant|> without showing it, trims its history
keeping the system prompt, reuses the KV cache across turns, and runs its commands."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import chat_bio
from wigglegpt.chat import Chat, MessageTooLong, fit_history
import sample_bio
from wigglegpt.checkpoint import checkpoint_dict, save_checkpoint
from conftest import ROOT, ScriptedModel, tiny_config
from model_bio import GPT
from wigglegpt.tokenizer import ASSISTANT_END, EOT, decode, encode, get_tokenizer, render_prompt

BLOCK = 64


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GPT(tiny_config(block_size=BLOCK, vocab_size=50304, n_layer=1, n_head=2)).eval()


def original_format(model):
    """A dict shaped like the published ckpt_pretrain.pt / ckpt_finetune.pt."""
    cfg = model.config
    model_args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                      bias=False, vocab_size=cfg.vocab_size, dropout=0.0, use_bio_mlp=True,
                      use_rmsnorm=True, use_rope=True, gradient_checkpointing=False)
    return {"model": {"_orig_mod." + k: v for k, v in model.state_dict().items()}, "optimizer": {},
            "model_args": model_args, "iter_num": 1000, "best_val_loss": torch.tensor(3.5),
            "config": {**model_args, "dataset": "openwebtext", "learning_rate": 6e-4, "compile": True}}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    save_checkpoint(checkpoint_dict(tiny_model()), str(d / "ckpt.pt"))
    save_checkpoint(original_format(tiny_model(1)), str(d / "original.pt"))
    (d / "corrupt.pt").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    (d / "long.txt").write_text("To be, or not to be: that is the question. " * 20, encoding="utf-8")
    return d


CASES = {
    # name: (script, arguments, stdin text)
    "sample_file_long": ("sample_bio.py", ["--start=FILE:{d}/long.txt", "--num_samples=2", "--max_new_tokens=5"], None),
    "sample_empty": ("sample_bio.py", ["--start=", "--num_samples=1", "--max_new_tokens=6"], None),
    "sample_original_1token": ("sample_bio.py", ["--ckpt={d}/original.pt", "--start=Hello", "--num_samples=1",
                                                 "--max_new_tokens=6", "--temperature=0"], None),
    "sample_missing_ckpt": ("sample_bio.py", ["--ckpt={d}/nothing.pt"], None),
    "sample_corrupt_ckpt": ("sample_bio.py", ["--ckpt={d}/corrupt.pt"], None),
    "sample_negative_tokens": ("sample_bio.py", ["--max_new_tokens=-3"], None),
    "sample_top_p": ("sample_bio.py", ["--top_p=1.5"], None),
    "sample_temperature": ("sample_bio.py", ["--temperature=-1"], None),
    "sample_unknown_option": ("sample_bio.py", ["--top_q=3"], None),
    "chat_prompt": ("chat_bio.py", ["--prompt=Hello, who are you?", "--max_new_tokens=8", "--seed=1"], None),
    "chat_piped": ("chat_bio.py", ["--max_new_tokens=8", "--system=Be brief.", "--seed=1"],
                   "Hello\nWhat is 2+2?\n\nTell me a story about a cat.\n"),
    "chat_missing_ckpt": ("chat_bio.py", ["--ckpt={d}/nothing.pt", "--prompt=hi"], None),
    "chat_no_room": ("chat_bio.py", [f"--max_new_tokens={BLOCK}", "--prompt=hi"], None),
}


@pytest.fixture(scope="module")
def runs(files):
    """Every script case run once, a few at a time (most of each run is importing torch)."""
    def run(case):
        script, args, stdin = case
        argv = [sys.executable, os.path.join(ROOT, script), f"--out_dir={files}", "--device=cpu"]
        argv += [a.format(d=files) for a in args]
        env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
        return subprocess.run(argv, input=stdin if stdin is not None else "", capture_output=True,
                               text=True, encoding="utf-8", errors="replace", timeout=120, cwd=files, env=env)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(CASES, pool.map(run, CASES.values())))


def assert_ok(result):
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", [n for n in CASES if n.split("_", 1)[1] in (
    "missing_ckpt", "corrupt_ckpt", "negative_tokens", "top_p", "temperature", "unknown_option", "no_room")])
def test_bad_input_is_one_line_on_stderr(runs, name):
    result = runs[name]
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""


def test_error_lines_name_the_problem(runs):
    assert "not found" in runs["sample_missing_ckpt"].stderr
    assert "not a readable PyTorch checkpoint" in runs["sample_corrupt_ckpt"].stderr
    assert "top_p" in runs["sample_top_p"].stderr and "temperature" in runs["sample_temperature"].stderr
    assert "top_k" in runs["sample_unknown_option"].stderr  # the closest valid name is suggested


def test_file_prompt_too_long_is_cropped_with_a_warning(runs):
    result = runs["sample_file_long"]
    assert_ok(result)
    assert "warning" in result.stderr and f"keeping the last {BLOCK}" in result.stderr
    samples = result.stdout.split(f"\n{sample_bio.SEPARATOR}\n")
    assert len(samples) == 2
    kept = decode(encode("To be, or not to be: that is the question. " * 20)[-BLOCK:])
    assert all(s.startswith(kept) for s in samples)  # the echoed prompt is what the model saw


def test_empty_prompt_starts_a_new_document(runs):
    assert_ok(runs["sample_empty"])
    assert runs["sample_empty"].stdout.strip()


def test_original_format_checkpoint_samples_from_one_token(runs):
    result = runs["sample_original_1token"]
    assert_ok(result)
    assert len(encode("Hello")) == 1
    assert result.stdout.startswith("Hello") and len(result.stdout) > len("Hello\n")


def test_chat_answers_one_prompt(runs):
    result = runs["chat_prompt"]
    assert_ok(result)
    assert result.stdout.endswith("\n") and result.stdout.count("\n") >= 1
    assert ASSISTANT_END not in result.stdout


def test_chat_piped_gives_one_line_per_message(runs):
    result = runs["chat_piped"]
    assert_ok(result)
    assert result.stdout.count("\n") == 4 and result.stdout.endswith("\n")
    assert result.stdout.split("\n")[2] == ""  # an empty message gets an empty line
    assert "/help" not in result.stdout  # no banner or help when not interactive


# --- in-process: the streaming path and chat's parts ---------------------------------

def test_streamed_sample_equals_decode_of_all_tokens_with_split_characters():
    prompt = encode("Emoji split over tokens: 🙂")
    script = encode(" 日本語 and 🙂 — é")
    assert any(not_whole(t) for t in script), "the script must split characters across tokens"
    pieces = []
    new = sample_bio.stream_sample(ScriptedModel(len(prompt), script, block_size=BLOCK), prompt, pieces.append,
                                   max_new_tokens=len(script), temperature=0)
    assert new == script
    assert "".join(pieces) == decode(prompt + script)
    assert not any("\ufffd" in p for p in pieces)


def not_whole(token):
    try:
        get_tokenizer().decode_single_token_bytes(token).decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_prompt_ids_for_empty_and_long_prompts():
    warnings = []
    assert sample_bio.prompt_ids("", BLOCK, warnings.append) == [EOT]
    ids = sample_bio.prompt_ids("word " * 100, BLOCK, warnings.append)
    assert ids == encode("word " * 100)[-BLOCK:] and len(warnings) == 1


def turns(n):
    out = []
    for i in range(n):
        out += [{"role": "user", "content": f"question number {i} " * 3},
                {"role": "assistant", "content": f"answer number {i} " * 3}]
    return out


def test_history_trimming_drops_oldest_turns_and_keeps_the_system_prompt():
    system = "You are a terse assistant."
    messages = turns(6) + [{"role": "user", "content": "the newest question"}]
    full = len(render_prompt([{"role": "system", "content": system}] + messages))
    kept, ids = fit_history(system, messages, full - 10)
    assert len(ids) <= full - 10
    assert kept[-1]["content"] == "the newest question" and kept[0]["role"] == "user"
    assert kept == messages[-len(kept):] and len(kept) < len(messages)
    assert ids[:len(encode("<|system|>\n" + system))] == encode("<|system|>\n" + system)
    kept, ids = fit_history(system, messages, 10**6)
    assert kept == messages
    with pytest.raises(MessageTooLong):
        fit_history(system, messages, 12)


def test_chat_reply_stops_at_the_closing_tag_and_reuses_the_cache():
    reply = encode("Fine, thanks.") + encode("\n<|/assistant|>") + encode(" never shown")
    prompt_len = len(render_prompt([{"role": "user", "content": "How are you?"}]))
    model = ScriptedModel(prompt_len, reply, block_size=256)
    chat = Chat(model, max_new_tokens=32, temperature=0)
    written = []
    assert chat.respond("How are you?", written.append) == "Fine, thanks."
    assert "".join(written) == "Fine, thanks."
    assert chat.history[-1] == {"role": "assistant", "content": "Fine, thanks."}
    cached = list(chat.cache.ids)
    next_prompt = render_prompt(chat.history + [{"role": "user", "content": "And now?"}])
    assert next_prompt[:prompt_len] == cached[:prompt_len]
    assert chat.cache.reusable(next_prompt) >= prompt_len  # the second turn starts from the cache


def test_chat_drops_old_turns_when_the_context_fills():
    model = tiny_model()
    chat = Chat(model, system="Be brief.", max_new_tokens=8, temperature=0)
    for i in range(6):
        chat.respond(f"message {i} with some words in it", lambda piece: None)
        assert len(render_prompt([{"role": "system", "content": "Be brief."}] + chat.history)) <= BLOCK
    assert chat.history[0]["content"] != "message 0 with some words in it"


def test_repl_commands_and_quit():
    chat = Chat(tiny_model(), max_new_tokens=4, temperature=0)
    lines = iter(["/help", "/system Talk like a pirate.", "hello", "/clear", "/nope", "quit", "never read"])
    out = []
    chat_bio.repl(chat, read=lambda prompt: next(lines), write=out.append)
    text = "".join(out)
    assert "/clear" in text and "unknown command /nope" in text
    assert chat.system == "Talk like a pirate." and chat.history == []
    assert next(lines) == "never read"


def test_repl_leaves_on_ctrl_d_and_survives_ctrl_c_at_the_prompt():
    chat = Chat(tiny_model(), max_new_tokens=4, temperature=0)
    events = iter([KeyboardInterrupt, "/system", EOFError])

    def read(prompt):
        event = next(events)
        if isinstance(event, type):
            raise event
        return event

    out = []
    chat_bio.repl(chat, read=read, write=out.append)
    assert "Ctrl-D" in "".join(out) and "system prompt removed" in "".join(out)


def test_piped_replies_with_line_breaks_stay_on_one_line():
    reply = encode("line one\nline two\r\nthree") + [EOT]
    prompt_len = len(render_prompt([{"role": "user", "content": "hi"}]))
    chat = Chat(ScriptedModel(prompt_len, reply, block_size=256), max_new_tokens=32, temperature=0)
    out = []
    chat_bio.answer_lines(chat, ["hi\n"], write=out.append)
    assert "".join(out) == "line one line two  three\n"
