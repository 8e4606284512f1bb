"""
Chat with a fine-tuned WiggleGPT checkpoint in the terminal.

    python chat_bio.py --ckpt=ckpt_finetune.pt                  # interactive
    python chat_bio.py --ckpt=ckpt_finetune.pt --prompt="Hi!"    # one answer, then exit
    python chat_bio.py --init_from=path/to/gpt2-folder          # GPT-2 (save_pretrained) as the reference
    cat questions.txt | python chat_bio.py --ckpt=...           # one reply line per input line
    python chat_bio.py --ckpt=ckpt_finetune.pt --web            # in the browser (wigglegpt/web.py)

The conversation (template, trimming, stop strings, the KV cache across turns) is a
wigglegpt.chat.Chat; this script adds the terminal: streaming, commands, Ctrl-C, piped input.
The commands and rules: README.md, "Sample and chat".
"""

import re
import sys

from wigglegpt import web
from wigglegpt.chat import Chat, MessageTooLong, reply_budget
from wigglegpt.common import UserError, autocast_for, pick_device, pick_dtype, prepare_stdout, run_main, write_stdout
from wigglegpt.engine import apply_preset, check_options, preset_setting, sampling_options, sampling_settings
from wigglegpt.loader import load_for_inference, model_settings, model_source
from wigglegpt.settings import load_settings

SETTINGS = {
    **model_settings("chat with"),
    "system": ("", "system prompt (empty: none)"),
    "prompt": ("", "answer this one user message and exit"),
    "max_new_tokens": (None, "most tokens in one reply, this much context kept free for it "
                             "(None: 256, or half the model's context when that is smaller)"),
    **sampling_settings(temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.1, seed=-1,
                        seed_meaning="random seed for reproducible replies; turn i uses seed + i (negative: no seed)"),
    **preset_setting("chat"),
    "web": (False, "chat in the browser: serve a page and an HTTP API (needs fastapi and uvicorn)"),
    "host": ("127.0.0.1", "address the web chat listens on (other than this machine's only when you mean it)"),
    "port": (8000, "port of the web chat (0: any free port)"),
    "api_key": ("", f"with --web: require 'Authorization: Bearer KEY' on the APIs (empty: the {web.API_KEY_ENV} "
                    "environment variable, or no key)"),
}
QUIT = ("quit", "exit", "/quit", "/exit")
HELP = """commands:
  /system <text>       set the system prompt (/system alone removes it)
  /clear, clear        forget the conversation
  /help                this list
  /quit, quit, /exit, exit
                       leave (Ctrl-D too); Ctrl-C stops a reply"""
LINE_BREAKS = re.compile(r"\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def command(chat, line):
    """Carry out a REPL command; return the message to show, or None if line is no command."""
    if not line.startswith("/"):
        return None
    name, _, arg = line.partition(" ")
    if name == "/system":
        chat.system = arg.strip()
        return f"system prompt set: {chat.system}" if chat.system else "system prompt removed"
    if name == "/clear":
        chat.clear()
        return "conversation cleared"
    if name == "/help":
        return HELP
    return f"unknown command {name}; /help lists them"


def repl(chat, read=input, write=write_stdout, banner=""):
    """The interactive loop: read a line, answer it or run it as a command, until quit or Ctrl-D."""
    write(f"{banner}\n{HELP}\n" if banner else f"{HELP}\n")
    while True:
        try:
            line = read("\n> ").strip()
        except EOFError:
            write("\n")
            return
        except KeyboardInterrupt:
            write("\n(quit, exit or Ctrl-D leaves)\n")
            continue
        if line.lower() in QUIT:
            return
        if not line:
            continue
        if line.lower() == "clear":  # the original chat.py's bare command
            line = "/clear"
        message = command(chat, line)
        if message is not None:
            write(message + "\n")
            continue
        try:
            chat.respond(line, write)
        except MessageTooLong as e:
            print(f"error: {e}", file=sys.stderr)
        except KeyboardInterrupt:  # outside the reply itself (respond handles that): same effect
            pass
        write("\n")


def one_line(text):
    return LINE_BREAKS.sub(" ", text)


def answer_lines(chat, lines, write=write_stdout, warn=None):
    """Piped mode: one reply line per input line (an empty line gets an empty reply)."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    for line in lines:
        text = line.rstrip("\r\n")
        if text.strip():
            try:
                chat.respond(text, lambda piece: write(one_line(piece)))
            except MessageTooLong as e:
                warn(f"warning: no reply: {e}")
        write("\n")


def main(argv=None):
    cfg = load_settings(SETTINGS, argv, description=__doc__.strip().splitlines()[0], allow_config_file=False)
    device = pick_device(cfg.device)
    apply_preset(cfg, "chat", device)
    sampling = sampling_options(cfg)
    check_options(cfg.max_new_tokens or 0, **sampling)
    if cfg.prompt and not cfg.prompt.strip():
        raise UserError("--prompt is only whitespace; give a message, or leave --prompt out to chat interactively")
    if cfg.web:
        web.check_web_settings(cfg)  # before the model loads
    elif cfg.api_key:
        raise UserError("--api_key protects the web chat's APIs; use it with --web")
    dtype = pick_dtype(cfg.dtype, device)
    model, path = load_for_inference(model_source(cfg.ckpt, cfg.init_from), cfg.out_dir, device,
                                     needs_tokenizer="chat", revision=cfg.revision)  # --web too: refused here
    original = cfg.preset == "original"
    chat = Chat(model, system=cfg.system,
                max_new_tokens=reply_budget(cfg.max_new_tokens, model.config.block_size, original),
                seed=cfg.seed if cfg.seed >= 0 else None, autocast=autocast_for(device, dtype),
                original=original, **sampling)
    if cfg.web:
        return web.serve(chat, name=path, host=cfg.host, port=cfg.port, key=web.api_key(cfg))
    prepare_stdout()  # a reader that leaves (| head) is run_main's BrokenPipeError: a quiet exit
    if cfg.prompt:
        chat.respond(cfg.prompt.strip(), write_stdout)  # stripped, as the original chat.py did
        write_stdout("\n")
    elif not sys.stdin.isatty():
        if hasattr(sys.stdin, "reconfigure"):
            sys.stdin.reconfigure(errors="replace")  # stray bytes should not end the batch
        answer_lines(chat, sys.stdin)
    else:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        repl(chat, banner=f"chatting with {path} (context {model.config.block_size} tokens)")


if __name__ == "__main__":
    run_main(main)
