"""
Sample text from a trained WiggleGPT checkpoint, streamed to the terminal as it is generated.

    python sample_bio.py --out_dir=out-shakespeare --start="ROMEO:" --num_samples=3
    python sample_bio.py --ckpt=ckpt_pretrain.pt --start=FILE:prompt.txt --temperature=0.7
    python sample_bio.py --init_from=gpt2 --start="Hello"      # OpenAI's GPT-2 (needs transformers)

Loads the model through wigglegpt.loader (this project's checkpoints, the original WiggleGPT
files, GPT-2) and generates with wigglegpt.engine. A character-level checkpoint (trained on
nanoGPT-style data with meta.pkl) reads and writes through its own characters. What is printed,
and what becomes of empty and too long prompts: README.md, "Sample and chat".
"""

import os
import sys

import torch

from wigglegpt.common import UserError, autocast_for, pick_device, pick_dtype, prepare_stdout, run_main, write_stdout
from wigglegpt.engine import (apply_preset, check_options, generate, preset_setting, sampling_options,
                              sampling_settings, stream_text)
from wigglegpt.loader import load_with_vocab, model_settings, model_source, require_gpt2
from wigglegpt.settings import load_settings
from wigglegpt.tokenizer import EOT, VOCAB_SIZE, StreamDecoder, encode, encode_with_special
SETTINGS = {
    **model_settings("sample"),
    "start": ("", "prompt text, or FILE:path to read it from a UTF-8 file; empty starts a new document (a "
                  "character-level model: a newline)"),
    "num_samples": (3, "how many samples to draw"),
    "max_new_tokens": (256, "tokens generated per sample"),
    **sampling_settings(temperature=0.8, top_k=200, top_p=1.0, repetition_penalty=1.0, seed=1337,
                        seed_meaning="random seed; sample i uses seed + i (negative: a different draw each run)"),
    **preset_setting("sample"),
    "compile": (False, "torch.compile the model (slow to start, faster per token on GPUs)"),
}
SEPARATOR = "-" * 40


def read_prompt(start):
    """The prompt text: start itself, or the contents of the UTF-8 file named by FILE:path."""
    if not start.startswith("FILE:"):
        return start
    path = start[len("FILE:"):]
    if not os.path.isfile(path):
        raise UserError(f"prompt file not found: {path}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:  # no permission, a vanished disk
        raise UserError(f"cannot read prompt file {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"prompt file {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def prompt_ids(text, block_size, warn, special=False, vocab=None):
    """Token ids of the prompt: <|endoftext|> alone when empty, the last block_size when too long.
    special: '<|endoftext|>' in the text is the special id (as the original sample_bio.py read it).
    vocab: a character-level model's chardata.CharVocab: its characters' ids, an empty prompt a
    newline as in nanoGPT (special does not apply)."""
    if vocab is not None:
        if not text and "\n" not in vocab.stoi:
            raise UserError(f"an empty prompt starts at a newline, which is not among the model's {len(vocab):,} "
                            "characters; give the start with --start=TEXT")
        ids = vocab.encode(text or "\n", what="the prompt", source="the model's vocabulary")
    else:
        ids = (encode_with_special(text) if special else encode(text)) if text else [EOT]
    if len(ids) > block_size:
        warn(f"warning: the prompt has {len(ids)} tokens, more than the model's context of "
             f"{block_size}; keeping the last {block_size}")
        ids = ids[-block_size:]
    return ids


def stream_sample(model, ids, write, echo_prompt=True, vocab=None, **sampling):
    """Generate one sample after ids, writing text as it becomes complete; return the new ids.

    The prompt's ids go through the same decoder first, so a character split between the
    prompt and the first new token still comes out whole. vocab: a character-level model's
    chardata.CharVocab (None: GPT-2 BPE), which decodes and bounds the ids drawn.
    """
    decoder = vocab.stream_decoder() if vocab is not None else StreamDecoder()
    if echo_prompt:
        write("".join(decoder.push(i) for i in ids))
    new_ids = []

    def recorded(tokens):
        for token in tokens:
            new_ids.append(token)
            yield token

    known = len(vocab) if vocab is not None else VOCAB_SIZE  # ids past it (padding) are never drawn
    for piece in stream_text(recorded(generate(model, ids, vocab_size=known, **sampling)), decoder=decoder):
        write(piece)
    return new_ids


def main(argv=None):
    cfg = load_settings(SETTINGS, argv, description=__doc__.strip().splitlines()[0], allow_config_file=False)
    device = pick_device(cfg.device)
    apply_preset(cfg, "sample", device)
    original = cfg.preset == "original"
    sampling = sampling_options(cfg)
    check_options(cfg.max_new_tokens, **sampling)
    if cfg.num_samples < 1:
        raise UserError(f"num_samples must be at least 1, got {cfg.num_samples}")
    text = read_prompt(cfg.start)
    dtype = pick_dtype(cfg.dtype, device)
    model, source, vocab = load_with_vocab(model_source(cfg.ckpt, cfg.init_from), cfg.out_dir, device, cfg.revision)
    if vocab is None:
        require_gpt2(model, source, None, "sampling")
    ids = prompt_ids(text, model.config.block_size, lambda msg: print(msg, file=sys.stderr), special=original,
                     vocab=vocab)
    # the original drew every sample from one stream seeded once; here sample i uses seed + i
    stream = torch.Generator(device=device).manual_seed(cfg.seed) if original and cfg.seed >= 0 else None
    if cfg.compile:
        model = torch.compile(model)
    prepare_stdout()
    for i in range(cfg.num_samples):
        if i:
            write_stdout(f"\n{SEPARATOR}\n")
        seed = cfg.seed + i if cfg.seed >= 0 and stream is None else None
        stream_sample(model, ids, write_stdout, echo_prompt=bool(text), vocab=vocab,
                      max_new_tokens=cfg.max_new_tokens, seed=seed, generator=stream,
                      autocast=autocast_for(device, dtype), **sampling)
    write_stdout("\n")  # a reader that left (| head) is run_main's BrokenPipeError: a quiet exit


if __name__ == "__main__":
    run_main(main)
