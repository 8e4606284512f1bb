"""
Protects wigglegpt/chat.py and chat_bio.py, the chat habits of the original WiggleGPT chat.py: bare quit/exit/clear
(and their /slash forms), a reply that ends where the model starts a user turn of its own with
nothing of the tag shown, a default reply length that fits small contexts (a 128-token model
chats with no settings), the --preset=original sampling (explicit settings win), the
repetition window, --top_k=None as off, and a whitespace-only --prompt as one clear line.
"""

import os
import subprocess
import sys
import types

import pytest
import torch

import chat_bio
from wigglegpt.chat import Chat, STOP_STRINGS, reply_budget
from wigglegpt import engine
from wigglegpt.checkpoint import checkpoint_dict, save_checkpoint
from conftest import ROOT, ScriptedModel, tiny_config
from model_bio import GPT
from wigglegpt.common import UserError
from wigglegpt.settings import load_settings
from wigglegpt.tokenizer import EOT, encode, render_prompt


def test_reply_ends_where_the_model_starts_a_user_turn():
    script = encode("Sure, here it is.") + encode("\n<|user|>\nand now I ask myself") + [EOT]
    prompt_len = len(render_prompt([{"role": "user", "content": "Help?"}]))
    chat = Chat(ScriptedModel(prompt_len, script), max_new_tokens=40, temperature=0)
    written = []
    assert chat.respond("Help?", written.append) == "Sure, here it is."
    assert "".join(written) == "Sure, here it is." and not any("<" in piece for piece in written)
    assert chat.history[-1]["content"] == "Sure, here it is."


def test_history_keeps_replies_stripped_as_the_original():
    script = encode("  Hi there \n") + encode("\n<|/assistant|>") + [EOT]
    prompt_len = len(render_prompt([{"role": "user", "content": "Hi"}]))
    chat = Chat(ScriptedModel(prompt_len, script), max_new_tokens=20, temperature=0)
    assert chat.respond("Hi", lambda piece: None) == "  Hi there \n"
    assert chat.history == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi there"}]
    original = ("<|user|>\nHi\n<|/user|>\n<|assistant|>\nHi there\n<|/assistant|>\n"
                "<|user|>\nNext\n<|/user|>\n<|assistant|>\n")
    assert render_prompt(chat.history + [{"role": "user", "content": "Next"}]) == encode(original)


def test_a_partial_user_tag_is_held_back_until_it_is_known():
    pieces = list(engine.stream_text(iter(encode("a <|us")), STOP_STRINGS))
    assert "".join(pieces[:-1]) == "a "  # "<|us" could still have become "<|user|>": not shown...
    assert pieces[-1] == "<|us"  # ...until the generation ended and it was text after all
    pieces = list(engine.stream_text(iter(encode("x <|user says <|user|> y")), STOP_STRINGS))
    assert "".join(pieces) == "x <|user says "


def test_bare_and_slash_commands_as_in_the_original():
    for quit_word in ("quit", "exit", "/quit", "/exit", "QUIT", "Exit"):
        chat = Chat(ScriptedModel(1, [EOT]), max_new_tokens=4, temperature=0)
        chat.history = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
        lines = iter(["clear", quit_word, "never read"])
        out = []
        chat_bio.repl(chat, read=lambda prompt: next(lines), write=out.append)
        assert chat.history == [] and "conversation cleared" in "".join(out)
        assert next(lines) == "never read"
    for word in ("clear", "/clear", "quit", "/quit", "exit", "/exit"):
        assert word in chat_bio.HELP


def test_default_reply_length_fits_the_context():
    assert reply_budget(None, 1024) == 256
    assert reply_budget(None, 128) == 64
    assert reply_budget(100, 128) == 100


def test_preset_original_and_explicit_settings_win():
    cfg = load_settings(chat_bio.SETTINGS, ["--preset=original", "--top_k=5"], allow_config_file=False)
    engine.apply_preset(cfg, "chat", "cpu")
    assert (cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty, cfg.repetition_window,
            cfg.penalty_style, cfg.dtype) == (0.7, 5, 1.0, 1.15, 100, "divide", "auto")
    assert reply_budget(None, 1024, original=True) == 512 and reply_budget(None, 128, original=True) == 64
    assert engine.apply_preset(load_settings(chat_bio.SETTINGS, ["--preset=original"], allow_config_file=False),
                               "chat", "cuda").dtype == "float16"  # fp16 autocast on CUDA only, as the original
    with pytest.raises(UserError, match="unknown preset"):
        engine.apply_preset(types.SimpleNamespace(preset="gpt4"), "chat")


def test_repetition_window_limits_what_is_penalised(monkeypatch):
    seen = []
    real = engine.apply_repetition_penalty
    monkeypatch.setattr(engine, "apply_repetition_penalty",
                        lambda logits, ids, penalty, style: seen.append(list(ids)) or real(logits, ids, penalty, style))
    prompt = list(range(1, 21))
    list(engine.generate(ScriptedModel(20, [7, 8, 9]), prompt, 3, temperature=0, repetition_penalty=1.5,
                             repetition_window=4))
    assert seen == [[17, 18, 19, 20], [18, 19, 20, 7], [19, 20, 7, 8]]
    seen.clear()
    list(engine.generate(ScriptedModel(20, [7]), prompt, 1, temperature=0, repetition_penalty=1.5))
    assert seen == [prompt]  # 0: the whole context, as before
    with pytest.raises(UserError, match="repetition_window"):
        list(engine.generate(ScriptedModel(20, [7]), prompt, 1, repetition_window=-1))


@pytest.fixture(scope="module")
def small_context_run(tmp_path_factory):
    """A 128-token model in out-shakespeare-bio, as the Shakespeare demo leaves it."""
    root = tmp_path_factory.mktemp("chat")
    torch.manual_seed(0)
    model = GPT(tiny_config(block_size=128, vocab_size=50304, n_layer=1, n_head=2))
    os.makedirs(root / "out-shakespeare-bio")
    save_checkpoint(checkpoint_dict(model), str(root / "out-shakespeare-bio" / "ckpt.pt"))
    return root


def run_chat(args, cwd):
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, os.path.join(ROOT, "chat_bio.py"), "--out_dir=out-shakespeare-bio",
                           "--device=cpu", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=env, input="Hello there\nHow are you?\n")


def test_small_context_chats_with_the_original_preset_and_top_k_none(small_context_run):
    result = run_chat(["--preset=original", "--top_k=None", "--seed=1"], small_context_run)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and result.stdout.count("\n") == 2  # one line per message


def test_whitespace_only_prompt_is_one_line(small_context_run):
    result = run_chat(["--prompt=   "], small_context_run)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "only whitespace" in lines[0], result.stderr


def test_none_is_accepted_only_where_the_setting_says_what_it_means():
    from wigglegpt.settings import load_settings
    import train_bio
    cfg = load_settings(chat_bio.SETTINGS, ["--top_k=None", "--top_p=None"], allow_config_file=False)
    assert cfg.top_k is None and cfg.top_p is None
    engine.check_options(0, cfg.temperature, cfg.top_k, cfg.top_p)
    with pytest.raises(UserError, match="batch_size"):
        load_settings(train_bio.SETTINGS, ["--batch_size=None"])
