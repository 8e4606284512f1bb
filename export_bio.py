"""
Export a model to a Hugging Face model folder (and, with --push, to the Hub).

    python export_bio.py --ckpt=out-shakespeare-bio/ckpt.pt --out=wigglegpt-shakespeare
    python export_bio.py --ckpt=ckpt_pretrain.pt --out=wigglegpt-124m --dtype=bfloat16 --push=me/wigglegpt-124m
    python export_bio.py --init_from=gpt2 --out=gpt2-as-wigglegpt      # GPT-2 through this project's model
    python export_bio.py --ckpt=out-sft/ckpt.pt --out=out-original --format=original   # for the original's scripts

The model loads as in every script (this project's checkpoints, the original WiggleGPT files,
GPT-2). The folder (its files: wigglegpt/export.py) loads back with --init_from=FOLDER, and in
transformers with AutoModelForCausalLM.from_pretrained(FOLDER, trust_remote_code=True).
--format=original writes FOLDER/ckpt.pt in the original WiggleGPT's format instead, which its
chat.py and sample_bio.py load with --out_dir=FOLDER (wigglegpt.compat.original_checkpoint).
"""

import os
import sys
import time

from wigglegpt import chardata, compat, export
from wigglegpt.checkpoint import save_checkpoint
from wigglegpt.common import UserError, run_main
from wigglegpt.loader import REVISION_MEANING, load_model_from, model_source, require_gpt2
from wigglegpt.settings import load_settings
from wigglegpt.tokenizer import VOCAB_SIZE

SETTINGS = {
    "ckpt": ("", "the model: a checkpoint file (this project's, the original WiggleGPT's, nanoGPT-style), "
                 "hf://OWNER/REPO[/FILE] or GPT-2 (gpt2, gpt2-medium, gpt2-large, gpt2-xl or a transformers "
                 "save_pretrained folder)"),
    "init_from": ("", "the same as --ckpt"),
    "revision": ("", REVISION_MEANING),
    "out": ("", "the folder to write; it must not exist or be empty, unless --overwrite"),
    "format": ("hf", "'hf': a Hugging Face model folder; 'original': FOLDER/ckpt.pt in the original WiggleGPT's "
                     "format, for its chat.py and sample_bio.py (fp32 weights)"),
    "dtype": ("float32", "the weights' dtype in model.safetensors: float32, bfloat16 or float16"),
    "overwrite": (False, "replace what is in --out"),
    "push": ("", "then upload the folder to the Hugging Face Hub as OWNER/NAME (needs a token: hf auth login)"),
    "public": (False, "with --push: a public repository (otherwise private)"),
}


def main(argv=None):
    cfg = load_settings(SETTINGS, argv, description=__doc__.strip().splitlines()[0], allow_config_file=False)
    if cfg.dtype not in export.DTYPES:
        raise UserError(f"unknown dtype {cfg.dtype!r}; use {', '.join(export.DTYPES)}")
    if cfg.public and not cfg.push:
        raise UserError("--public is for --push=OWNER/NAME; give that too")
    if cfg.format not in ("hf", "original"):
        raise UserError(f"unknown format {cfg.format!r}; use hf or original")
    if cfg.format == "original" and (cfg.push or cfg.dtype != "float32"):
        raise UserError("--format=original writes fp32 weights for the original's scripts; leave out --dtype and --push")
    source = model_source(cfg.ckpt, cfg.init_from, default="")
    export.check_out_dir(cfg.out, cfg.overwrite)  # before the minutes a large model takes to load
    hub = export.hub_for_push(cfg.push) if cfg.push else None
    started = time.time()
    model, ckpt, source = load_model_from(source, device="cpu", revision=cfg.revision, dropout=0.0)
    vocab = chardata.checkpoint_vocab(ckpt, source)
    if vocab is not None:  # both formats carry GPT-2 BPE: the folder its tokenizer, the original's scripts read it
        require_gpt2(model, source, vocab, "export")
    if model.config.vocab_size < VOCAB_SIZE:
        print(f"warning: {source} has vocab_size {model.config.vocab_size}, fewer than the GPT-2 tokenizer's "
              f"{VOCAB_SIZE} ids written beside it", file=sys.stderr)
    if cfg.format == "original":
        path = os.path.join(cfg.out, "ckpt.pt")
        save_checkpoint(compat.original_checkpoint(model, ckpt), path)
        print(f"wrote {path} in the original WiggleGPT's format, in {time.time() - started:.1f} s; "
              f"there: python chat.py --out_dir={cfg.out} (or sample_bio.py)")
        return
    files = export.export(model.eval(), cfg.out, cfg.dtype, export.training_facts(ckpt, source), cfg.overwrite)
    size = os.path.getsize(os.path.join(cfg.out, export.WEIGHTS)) / 2**20
    print(f"wrote {cfg.out}: {len(files)} files, {size:,.1f} MiB of {cfg.dtype} weights, "
          f"in {time.time() - started:.1f} s")
    if hub is not None:
        export.push(hub, cfg.out, cfg.push, cfg.public)


if __name__ == "__main__":
    run_main(main)
