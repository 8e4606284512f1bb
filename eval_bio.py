"""
Evaluate a model: validation loss and bits per byte, and HellaSwag accuracy.

    python eval_bio.py --ckpt=out-shakespeare-bio/ckpt.pt --dataset=shakespeare
    python eval_bio.py --ckpt=ckpt_pretrain.pt --tasks=val,hellaswag --out=results.jsonl
    python eval_bio.py --init_from=gpt2 --tasks=hellaswag --hellaswag_file=hellaswag_val.jsonl

--tasks (comma separated): val, hellaswag. Results print as a table; --out=FILE appends one
JSON line per task and metric. The scoring is wigglegpt.evaluate's; its definitions are in
README.md, "Evaluation". A character-level model (data with meta.pkl) has val only, its bits
per byte counted over the UTF-8 bytes of its characters.
"""

import json
import os
import time

from wigglegpt import chardata
from wigglegpt.data import ensure_demo
from wigglegpt.evaluate import load_hellaswag, score_hellaswag, val_loss_bpb
from wigglegpt.loader import REVISION_MEANING, load_with_vocab, model_source, require_gpt2
from wigglegpt.common import UserError, autocast_for, pick_device, pick_dtype, run_main, write_error
from wigglegpt.settings import load_settings

SETTINGS = {
    "ckpt": ("", "checkpoint to evaluate (this project's format or the original WiggleGPT files)"),
    "init_from": ("", "instead of --ckpt: hf://OWNER/REPO[/FILE], an export folder, or GPT-2 weights, 'gpt2', "
                      "'gpt2-medium', ... (needs transformers)"),
    "revision": ("", REVISION_MEANING),
    "tasks": ("val", "comma-separated tasks: val (loss and bits per byte), hellaswag"),
    "data_root": ("data", "folder that holds the dataset folders"),
    "dataset": ("openwebtext", "dataset folder under data_root whose val.bin the val task reads"),
    "eval_windows": (200, "val: how many windows of val.bin (drawn at seeded offsets: the same every run)"),
    "eval_batch_size": (8, "val: windows per forward pass"),
    "block_size": (0, "val: tokens per window (0: the model's block_size)"),
    "seed": (1337, "val: seed of the window offsets"),
    "hellaswag_file": ("", "hellaswag: a local .jsonl in HellaSwag's format (empty: Rowan/hellaswag from the Hub)"),
    "limit": (0, "hellaswag: score only the first this many examples (0: all)"),
    "out": ("", "append the results to this file as JSON lines"),
    "device": ("auto", "auto, cpu, cuda, cuda:N or mps"),
    "dtype": ("auto", "auto, float32, bfloat16 or float16 (autocast on GPUs)"),
}
TASKS = ("val", "hellaswag")


def parse_tasks(text):
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        raise UserError(f"no tasks given; use --tasks= with some of {', '.join(TASKS)}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UserError(f"unknown task {unknown[0]!r}; use some of {', '.join(TASKS)}")
    return list(dict.fromkeys(tasks))  # in the order given, each once


def check(cfg):
    for key in ("eval_windows", "eval_batch_size"):
        if getattr(cfg, key) <= 0:
            raise UserError(f"{key} must be positive, got {getattr(cfg, key)}")
    for key in ("block_size", "limit"):
        if getattr(cfg, key) < 0:
            raise UserError(f"{key} must not be negative, got {getattr(cfg, key)}")
    folder = os.path.dirname(os.path.abspath(cfg.out)) if cfg.out else ""
    if folder and not os.path.isdir(folder):
        raise UserError(f"--out={cfg.out}: folder {folder} does not exist")
    if cfg.out and os.path.isdir(cfg.out):
        raise UserError(f"--out={cfg.out} is a folder; give a file to append the results to")


def run_tasks(cfg, tasks, model, device, autocast, vocab=None, name="the model"):
    """[(task, metric, value, n)] for the tasks, in order. vocab: a character-level model's
    (chardata.CharVocab; None: GPT-2 BPE), name: where the model came from."""
    results = []
    for task in tasks:
        if task == "val":
            folder = os.path.join(cfg.data_root, cfg.dataset)
            ensure_demo(folder, cfg.dataset)  # an offline demo corpus is built on first use
            if not os.path.isdir(folder):
                raise UserError(f"data folder not found: {folder} (set --data_root / --dataset)")
            chars = chardata.vocab_for(vocab, chardata.folder_vocab(folder), model.config.vocab_size, name, folder)
            r = val_loss_bpb(model, folder, cfg.eval_windows, cfg.eval_batch_size, cfg.block_size, cfg.seed,
                             device, autocast, vocab=chars)
            results += [("val", "loss", r["loss"], r["n"]), ("val", "bpb", r["bpb"], r["n"])]
        else:
            rows = load_hellaswag(cfg.hellaswag_file, cfg.limit)
            r = score_hellaswag(model, rows, device, autocast)
            if r["truncated"]:
                print(f"note: {r['truncated']} HellaSwag example(s) were longer than the model's context; "
                      "their contexts were cut from the left")
            results += [("hellaswag", "acc", r["acc"], r["n"]), ("hellaswag", "acc_norm", r["acc_norm"], r["n"])]
    return results


def print_table(name, results):
    print(f"model: {name}")
    print(f"{'task':<12}{'metric':<10}{'value':>10}{'n':>8}")
    for task, metric, value, n in results:
        print(f"{task:<12}{metric:<10}{value:>10.4f}{n:>8}")


def main(argv=None):
    cfg = load_settings(SETTINGS, argv, description=__doc__.strip().splitlines()[0], allow_config_file=False)
    check(cfg)
    tasks = parse_tasks(cfg.tasks)
    device = pick_device(cfg.device)
    autocast = autocast_for(device, pick_dtype(cfg.dtype, device))
    model, name, vocab = load_with_vocab(model_source(cfg.ckpt, cfg.init_from, default=""), device=device,
                                         revision=cfg.revision)
    if vocab is not None and "hellaswag" in tasks:  # before any val work
        require_gpt2(model, name, vocab, "HellaSwag")
    results = run_tasks(cfg, tasks, model, device, autocast, vocab, name)
    print_table(name, results)
    if cfg.out:
        now = time.time()
        lines = "".join(json.dumps(dict(model=name, task=task, metric=metric, value=value, n=n, time=now)) + "\n"
                        for task, metric, value, n in results)
        try:
            with open(cfg.out, "a", encoding="utf-8") as f:
                f.write(lines)
        except OSError as e:  # a full disk, no permission: the table above still has the results
            raise write_error(cfg.out, e, "run again") from None
        print(f"appended {len(results)} result(s) to {cfg.out}")
    return results


if __name__ == "__main__":
    run_main(main)
