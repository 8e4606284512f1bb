"""Protects the project's rule for bad input, script by script, through the real command lines:
a wrong type, an out-of-range value, an unknown setting (with the closest name), a missing,
unreadable, truncated or foreign file, a folder where a file belongs (and the other way round),
empty or cut-off token files, a mask that does not fit its tokens, conflicting settings, a
resume that cannot continue, and an out_dir that already holds a run each give exactly one
'error: ...' line on stderr, exit code 2 and no traceback, and never change, add or remove a
file of the user's (every file under the case's folder is hashed before and after). Also the
web chat's HTTP API: every bad request is a 4xx with a one-line JSON {"error": ...}.

The catalogue runs once per module, its subprocesses side by side; each case is its own test
(the id names the script and what is wrong) that asserts on its own result."""

import functools
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from conftest import ROOT, require_module, tiny_config
from model_bio import GPT
from wigglegpt.checkpoint import checkpoint_dict, save_checkpoint

INSTALL = "pip install -r requirements-optional.txt"
PATTERN = np.random.RandomState(0).randint(0, 64, 37).astype(np.uint16)
BLOCK = 16  # the trained checkpoint's context
WORKERS = 4  # subprocesses at once: mostly importing torch, so a little more than the 2 cores


@dataclass
class Case:
    script: str
    args: list
    phrase: str  # a piece of the expected error line: it is the error the case is about
    needs: str = ""  # an optional module the case needs (lm_eval)
    quiet: bool = True  # False: other lines may come before the error line (a library's own logging)
    known: str = ""  # a known gap, not yet fixed: the case is an expected failure (strict) and says where
    locked: str = ""  # a file made unreadable (chmod 000) for the run; such cases need a user other than root


def on(script, *common):
    """A maker of cases of script, each run with common first, then its own arguments."""
    def case(*args, phrase, **kw):
        return Case(script, [*common, *args], phrase, **kw)
    return case


# a tiny run on data/pat into new_out, a fresh folder that a failing run must not create
TRAIN = ["--data_root=data", "--dataset=pat", "--out_dir=new_out", "--device=cpu", "--n_layer=1", "--n_head=2",
         "--n_embd=8", f"--block_size={BLOCK}", "--batch_size=2", "--gradient_accumulation_steps=1",
         "--max_iters=1", "--eval_interval=1", "--eval_iters=1", "--warmup_iters=0", "--lr_decay_iters=1",
         "--compile=False", "--vocab_size=50304"]
train = on("train_bio.py", *TRAIN)
sample = on("sample_bio.py", "--device=cpu", "--num_samples=1", "--max_new_tokens=2")
chat = on("chat_bio.py", "--device=cpu")
evaluate = on("eval_bio.py", "--device=cpu", "--data_root=data", "--dataset=pat", "--eval_windows=2",
              "--eval_batch_size=2")
analyze, compare, xor, bench = on("analyze_bio.py"), on("compare_bio.py"), on("xor_bio.py"), on("bench_bio.py")
prepare_char = on("prepare_shakespeare_char.py")
prepare = on("prepare_openwebtext_streaming.py", "--num_threads=1", "--min_val_tokens=0")
smoltalk = on("prepare_smoltalk.py", "--num_threads=1", "--min_val_tokens=0")
lm_eval = on("lm_eval_bio.py", "--model", "wigglegpt", "--device", "cpu")
export = on("export_bio.py")
LM_TASK = ["--tasks", "wiggle_choice", "--include_path", "tasks"]
RUN = "--ckpt=run/ckpt.pt"

CASES = {
    # --- train_bio.py: types, ranges, names --------------------------------------------
    "train-max_iters-not-a-number": train("--max_iters=abc", phrase="max_iters='abc' on the command line should be"),
    "train-zero-batch_size": train("--batch_size=0", phrase="batch_size must be positive"),
    "train-dropout-1.5": train("--dropout=1.5", phrase="dropout must be in [0, 1)"),
    "train-unknown-setting-suggests": train("--learning_rat=0.1", phrase="did you mean 'learning_rate'"),
    # --- train_bio.py: config files ----------------------------------------------------
    "train-config-missing": train("no_such_config.py", phrase="config file not found: no_such_config.py"),
    "train-config-syntax-error": train("config_syntax.py", phrase="config_syntax.py, line 1: syntax error"),
    "train-config-not-utf8": train("config_latin1.py", phrase="config file config_latin1.py is not UTF-8 text"),
    "train-config-unreadable": train("config_syntax.py", phrase="cannot read config file config_syntax.py",
                                     locked="config_syntax.py"),
    # --- train_bio.py: data ------------------------------------------------------------
    "train-data-folder-missing": train("--dataset=nope", phrase="data folder not found"),
    "train-empty-bins": train("--dataset=empty", phrase="fewer than one batch needs"),
    "train-odd-length-train.bin": train("--dataset=odd_train", phrase="odd number of bytes"),
    "train-mask-does-not-match-train.bin": train("--dataset=bad_mask", phrase="train_mask.bin has"),
    "train-token-id-above-vocab": train("--vocab_size=32", phrase="holds token id"),
    # --- train_bio.py: where it writes -------------------------------------------------
    "train-out_dir-is-a-file": train("--out_dir=afile", phrase="out_dir=afile is a file"),
    "train-out_dir-holds-a-run": train("--out_dir=run", phrase="run already holds a ckpt.pt"),
    # --- train_bio.py: settings that disagree ------------------------------------------
    "train-tokens_per_iter-disagrees": train("--tokens_per_iter=1000", phrase="but tokens_per_iter=1,000"),
    "train-lr_decay_iters-not-after-warmup": train("--warmup_iters=5", "--lr_decay_iters=5",
                                                   phrase="lr_decay_iters=5 must be larger than warmup_iters=5"),
    "train-block_size-above-checkpoint": train("--init_from=run/ckpt.pt", f"--block_size={2 * BLOCK}",
                                               phrase=f"larger than the block_size {BLOCK}"),
    # --- train_bio.py: checkpoints to fine-tune from -----------------------------------
    "train-init_from-missing": train("--init_from=missing.pt", phrase="no such checkpoint"),
    "train-init_from-text-file": train("--init_from=bad/text.pt", phrase="not a readable PyTorch checkpoint"),
    "train-init_from-cut-in-half": train("--init_from=bad/half.pt", phrase="not a readable PyTorch checkpoint"),
    "train-init_from-no-model": train("--init_from=bad/no_model.pt", phrase="no 'model' weights"),
    # --- train_bio.py: resuming --------------------------------------------------------
    "train-resume-without-ckpt": train("--init_from=resume", "--out_dir=empty_run", phrase="does not exist"),
    "train-resume-text-ckpt": train("--init_from=resume", "--out_dir=text_run", phrase="not a readable PyTorch"),
    "train-resume-no-optimizer": train("--init_from=resume", "--out_dir=weights_run",
                                       phrase="has no 'optimizer': it cannot be resumed"),
    "train-meta_pkl-that-runs-code": train("--dataset=evil_meta", phrase="asks to load posix.system, which is refused"),
    "train-freeze_layers-past-the-blocks": train("--freeze_layers=9", phrase="the model has 1 block;"),
    "train-freeze_layers-negative": train("--freeze_layers=-1", phrase="freeze_layers must not be negative"),
    "train-resume-other-freeze_layers": train("--init_from=resume", "--out_dir=run", "--freeze_layers=1",
                                              phrase="trained with freeze_layers=0"),
    "train-resume-other-optimizer": train("--init_from=resume", "--out_dir=run", "--optimizer_type=lion",
                                          phrase="was trained with optimizer_type='adamw'"),
    # --- sample_bio.py -----------------------------------------------------------------
    "sample-temperature-hot": sample(RUN, "--temperature=hot", phrase="temperature='hot'"),
    "sample-unknown-setting-suggests": sample(RUN, "--temprature=1", phrase="did you mean 'temperature'"),
    "sample-prompt-file-missing": sample(RUN, "--start=FILE:nope.txt", phrase="prompt file not found: nope.txt"),
    "sample-prompt-file-is-a-folder": sample(RUN, "--start=FILE:adir", phrase="prompt file not found: adir"),
    "sample-prompt-file-not-utf8": sample(RUN, "--start=FILE:latin1.txt", phrase="is not UTF-8 text"),
    "sample-prompt-file-unreadable": sample(RUN, "--start=FILE:latin1.txt", phrase="cannot read prompt file latin1.txt",
                                            locked="latin1.txt"),
    "sample-ckpt-and-init_from": sample(RUN, "--init_from=gpt2", phrase="both name the model; give one"),
    "sample-ckpt-is-a-folder": sample("--ckpt=adir", phrase="adir is a folder"),
    "sample-ckpt-truncated": sample("--ckpt=bad/truncated.pt", phrase="not a readable PyTorch"),
    "sample-ckpt-unreadable": sample("--ckpt=small/ckpt.pt", phrase="not a readable PyTorch", locked="small/ckpt.pt"),
    "sample-vocab-smaller-than-gpt2": sample("--ckpt=small/ckpt.pt", phrase="sampling needs the GPT-2 tokenizer"),
    # --- chat_bio.py -------------------------------------------------------------------
    "chat-top_p-2": chat(RUN, "--prompt=hi", "--top_p=2", phrase="top_p must be in (0, 1]"),
    "chat-negative-max_new_tokens": chat(RUN, "--prompt=hi", "--max_new_tokens=-5", phrase="max_new_tokens"),
    "chat-whitespace-prompt": chat(RUN, "--prompt=   ", phrase="--prompt is only whitespace"),
    "chat-web-port-out-of-range": chat(RUN, "--web", "--port=70000", phrase="port must be between 0 and 65535"),
    "chat-api_key-without-web": chat(RUN, "--prompt=hi", "--api_key=k3y", phrase="use it with --web"),
    "chat-penalty_style-unknown": chat(RUN, "--prompt=hi", "--penalty_style=mul", phrase="penalty_style must be"),
    "sample-unknown-preset": sample(RUN, "--preset=gpt4", phrase="unknown preset 'gpt4'"),
    "chat-api_key-with-a-space": chat(RUN, "--web", "--api_key=my key", phrase="printable ASCII without spaces"),
    "chat-ckpt-cut-in-half": chat("--ckpt=bad/half.pt", "--prompt=hi", phrase="not a readable PyTorch"),
    "chat-resume-text-ckpt": chat("--out_dir=text_run", "--prompt=hi", phrase="not a readable PyTorch"),
    # --- eval_bio.py -------------------------------------------------------------------
    "eval-no-model": evaluate(phrase="give exactly one model"),
    "eval-ckpt-truncated": evaluate("--ckpt=bad/truncated.pt", phrase="not a readable PyTorch"),
    "eval-data-folder-missing": evaluate(RUN, "--dataset=nope", phrase="data folder not found"),
    "eval-odd-length-val.bin": evaluate(RUN, "--dataset=odd_val", phrase="odd number of bytes"),
    "eval-empty-val.bin": evaluate(RUN, "--dataset=empty", phrase="val.bin has 0 tokens"),
    "eval-block_size-above-model": evaluate(RUN, f"--block_size={2 * BLOCK}", phrase="block_size"),
    "eval-hellaswag-file-missing": evaluate(RUN, "--tasks=hellaswag", "--hellaswag_file=missing.jsonl",
                                            phrase="hellaswag_file not found: missing.jsonl"),
    "eval-hellaswag-file-unreadable": evaluate(RUN, "--tasks=hellaswag", "--hellaswag_file=hellaswag_bad.jsonl",
                                               phrase="cannot read hellaswag_file", locked="hellaswag_bad.jsonl"),
    "eval-hellaswag-file-malformed": evaluate(RUN, "--tasks=hellaswag", "--hellaswag_file=hellaswag_bad.jsonl",
                                              phrase="line 1: not valid JSON"),
    "eval-hellaswag-file-not-utf8": evaluate(RUN, "--tasks=hellaswag", "--hellaswag_file=latin1.txt",
                                             phrase="latin1.txt, line 1: not UTF-8 text"),
    "eval-out-is-a-folder": evaluate(RUN, "--out=adir", phrase="--out=adir is a folder"),
    # --- analyze_bio.py ----------------------------------------------------------------
    "analyze-ckpt-no-model": analyze("--ckpt=bad/no_model.pt", phrase="no 'model' weights"),
    "analyze-compare-missing": analyze(RUN, "--compare=missing.pt", phrase="checkpoint not found: missing.pt"),
    "analyze-compare-other-shape": analyze(RUN, "--compare=small/ckpt.pt", phrase="checkpoints of different shapes"),
    "analyze-plots-is-a-file": analyze(RUN, "--plots=afile", phrase="--plots=afile is a file"),
    # --- compare_bio.py ----------------------------------------------------------------
    "compare-run-folders-missing": compare("nope_a", "nope_b", phrase="run not found: nope_a"),
    "compare-folder-without-metrics": compare("run", "empty_run", phrase="empty_run has no metrics.jsonl"),
    "compare-one-run": compare("run", "--plot=none", phrase="needs two or more runs"),
    "compare-malformed-metrics": compare("run", "bad_metrics", phrase="line 1: not a JSON object"),
    "compare-metrics-not-utf8": compare("run", "latin1_metrics", phrase="is not UTF-8 text"),
    "compare-run-option-without-run": compare("run", "run2", "--seeds=3", phrase="only apply with --run"),
    "compare-plot-under-a-file": compare("run", "run2", "--plot=afile/compare.png", phrase="afile is a file"),
    # --- xor_bio.py and bench_bio.py ---------------------------------------------------
    "xor-zero-seeds": xor("--seeds=0", phrase="seeds must be >= 1"),
    "xor-suite-zero-epochs": xor("--suite", "--suite_epochs=0", phrase="suite_epochs must be >= 1, got 0"),
    "xor-suite-unknown-task": xor("--suite", "--tasks=xor,nope", phrase="--tasks: unknown name 'nope'"),
    "xor-plot-folder-missing": xor("--seeds=1", "--steps=1", "--plot=nodir/xor.png", phrase="does not exist"),
    "xor-plot-is-a-folder": xor("--seeds=1", "--steps=1", "--plot=adir", phrase="--plot=adir is a folder"),
    "bench-unknown-section": bench("--only=warp_drive", phrase="unknown section(s) warp_drive"),
    # --- the prepare scripts -----------------------------------------------------------
    "prepare-val_fraction-2": prepare("--data_files=corpus.jsonl", "--out_dir=new_out", "--val_fraction=2",
                                      phrase="val_fraction=2"),
    "prepare-data_files-missing": prepare("--data_files=missing.jsonl", "--out_dir=new_out",
                                          phrase="no file matches data_files entry 'missing.jsonl'"),
    "prepare-data_files-malformed": prepare("--data_files=malformed.jsonl", "--out_dir=new_out",
                                            phrase="malformed.jsonl"),
    "prepare-data_files-unknown-kind": prepare("--data_files=corpus.csv", "--out_dir=new_out",
                                               phrase="don't know how to read corpus.csv"),
    "prepare-text_field-missing": prepare("--data_files=corpus.jsonl", "--out_dir=new_out", "--text_field=body",
                                          phrase="no field 'body'"),
    "prepare_char-out_dir-is-a-file": prepare_char("--out_dir=afile", phrase="could not write afile: File exists"),
    "prepare_char-out_dir-holds-data": prepare_char("--out_dir=data/pat",
                                                    phrase="data/pat already holds train.bin, val.bin; use --overwrite"),
    "prepare_char-overwrite-not-a-bool": prepare_char("--overwrite=maybe", phrase="overwrite='maybe'"),
    "prepare-out_dir-holds-output": prepare("--data_files=corpus.jsonl", "--out_dir=data/pat", phrase="already holds"),
    "prepare-resume-nothing": prepare("--data_files=corpus.jsonl", "--out_dir=empty_run", "--resume",
                                      phrase="nothing to resume"),
    "smoltalk-val_fraction-2": smoltalk("--data_files=chats.jsonl", "--out_dir=new_out", "--val_fraction=2",
                                        phrase="val_fraction=2"),
    "smoltalk-unknown-loss_on": smoltalk("--data_files=chats.jsonl", "--out_dir=new_out", "--loss_on=everything",
                                         phrase="loss_on='everything'"),
    "smoltalk-data_files-missing": smoltalk("--data_files=missing.jsonl", "--out_dir=new_out", phrase="no file matches"),
    "smoltalk-no-usable-conversation": smoltalk("--data_files=chats_bad.jsonl", "--out_dir=new_out",
                                                phrase="gave no usable"),
    # --- export_bio.py ------------------------------------------------------------------
    "export-ckpt-missing": export("--ckpt=missing.pt", "--out=new_out", phrase="checkpoint not found"),
    "export-ckpt-cut-in-half": export("--ckpt=bad/half.pt", "--out=new_out", phrase="not a readable PyTorch"),
    "export-unknown-dtype": export(RUN, "--out=new_out", "--dtype=float8", phrase="unknown dtype 'float8'"),
    "export-unknown-format": export(RUN, "--out=new_out", "--format=gguf", phrase="unknown format 'gguf'"),
    "export-original-format-of-real-rope": export(RUN, "--out=new_out", "--format=original",
                                                  phrase="RoPE encodes positions"),
    "export-out-holds-files": export(RUN, "--out=run", phrase="run"),
    "export-public-without-push": export(RUN, "--out=new_out", "--public=True", phrase="--public is for --push"),
    "export-push-offline": export(RUN, "--out=new_out", "--push=someone/model", phrase="HF_HUB_OFFLINE"),
    # --- Hub names, offline with an empty cache ---------------------------------------------
    "sample-hub-name-malformed": sample("--init_from=hf://nobody", phrase="is not a Hub model name"),
    "sample-hub-file-not-cached": sample("--init_from=hf://owner/repo/ckpt.pt", phrase="HF_HUB_OFFLINE"),
    "train-hub-not-cached": train("--init_from=hf://owner/repo/ckpt.pt", phrase="HF_HUB_OFFLINE"),
    # --- lm_eval_bio.py (the harness logs to stderr itself: there the error is the last line) ---
    "lm_eval-model_args-unknown-key": lm_eval("--model_args", "ckpt=run/ckpt.pt,pretrained=gpt2", *LM_TASK,
                                              phrase="--model_args pretrained=...: the wigglegpt model takes ckpt, init_from",
                                              needs="lm_eval", quiet=False),
    "lm_eval-ckpt-missing": lm_eval("--model_args", "ckpt=missing.pt", *LM_TASK, phrase="no such checkpoint",
                                    needs="lm_eval", quiet=False),
    "lm_eval-unknown-task": lm_eval("--model_args", "ckpt=run/ckpt.pt", "--tasks", "no_such_task",
                                    phrase="Tasks not found: no_such_task", needs="lm_eval", quiet=False),
}


# ---------------------------------------------------------------------------------------
# the user's files every case starts from

def write_bins(folder, n_train=4000, n_val=1500):
    os.makedirs(folder, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        np.resize(PATTERN, n).tofile(os.path.join(folder, f"{split}.bin"))


def write(path, data):
    """Write text (UTF-8) or bytes to path, making its folder."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))


class RunsCode:
    """Unpickled, it would run a shell command: what a hostile meta.pkl holds."""

    def __reduce__(self):
        return os.system, ("echo this must never run",)


def build_inputs(base):
    """Every file the cases read: token folders good and bad, a trained run, broken
    checkpoints, configs, prompts, corpora. Paths are relative to base (the cases' cwd)."""
    b = str(base)
    write_bins(os.path.join(b, "data", "pat"))
    for name in ("odd_train", "odd_val", "empty", "bad_mask"):
        write_bins(os.path.join(b, "data", name))
    with open(os.path.join(b, "data", "odd_train", "train.bin"), "ab") as f:
        f.write(b"\x01")  # a cut-off copy: an odd number of bytes
    with open(os.path.join(b, "data", "odd_val", "val.bin"), "ab") as f:
        f.write(b"\x01")
    for split in ("train", "val"):
        write(os.path.join(b, "data", "empty", f"{split}.bin"), b"")
        n_mask = 4000 - 7 if split == "train" else 1500  # train_mask.bin 7 entries short of train.bin
        write(os.path.join(b, "data", "bad_mask", f"{split}_mask.bin"), b"\x01" * n_mask)
    write(os.path.join(b, "data", "pat", "meta.json"), json.dumps({"vocab_size": 50257}))
    write_bins(os.path.join(b, "data", "evil_meta"))  # a meta.pkl that would run a command as it is unpickled
    write(os.path.join(b, "data", "evil_meta", "meta.pkl"),
          pickle.dumps({"vocab_size": 64, "itos": RunsCode()}, protocol=2))

    # a real run: ckpt.pt with optimizer and train_config, metrics.jsonl
    args = [a.replace("new_out", "run") for a in TRAIN]
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train_bio.py"), *args], cwd=b, capture_output=True,
                            text=True, timeout=300, env=case_env(base))
    assert result.returncode == 0, result.stderr[-3000:]
    os.remove(os.path.join(b, "run", "ckpt_best.pt"))  # not read by any case; keeps every copy small
    with open(os.path.join(b, "run", "metrics.jsonl"), "rb") as f:
        write(os.path.join(b, "run2", "metrics.jsonl"), f.read())  # a second run for compare_bio.py
    ckpt = os.path.join(b, "run", "ckpt.pt")
    with open(ckpt, "rb") as f:
        whole = f.read()
    write(os.path.join(b, "bad", "text.pt"), "this is not a checkpoint\n")
    write(os.path.join(b, "bad", "truncated.pt"), whole[:4096])
    write(os.path.join(b, "bad", "half.pt"), whole[:len(whole) // 2])
    torch.save({"config": {"n_layer": 1}, "iter_num": 3}, os.path.join(b, "bad", "no_model.pt"))
    write(os.path.join(b, "text_run", "ckpt.pt"), "this is not a checkpoint either\n")
    os.makedirs(os.path.join(b, "empty_run"))
    torch.manual_seed(0)
    model = GPT(tiny_config(block_size=BLOCK, vocab_size=50304, n_layer=1, n_head=2, n_embd=8))
    save_checkpoint(checkpoint_dict(model), os.path.join(b, "weights_run", "ckpt.pt"))  # weights only: no optimizer
    small = GPT(tiny_config(block_size=BLOCK, vocab_size=64, n_layer=1, n_head=2, n_embd=16))  # another shape
    save_checkpoint(checkpoint_dict(small), os.path.join(b, "small", "ckpt.pt"))
    write(os.path.join(b, "bad_metrics", "metrics.jsonl"), "this line is no JSON\n" + '{"kind": "end", "iter": 1}\n')
    write(os.path.join(b, "latin1_metrics", "metrics.jsonl"), '{"kind": "start", "iter": 0, "note": "caf\xe9"}\n'
          .encode("latin-1"))

    # files where folders belong and a folder where a file belongs
    write(os.path.join(b, "afile"), "a file, not a folder\n")
    os.makedirs(os.path.join(b, "adir"))
    write(os.path.join(b, "adir", "keep.txt"), "kept\n")

    write(os.path.join(b, "config_typo.py"), "learning_rat = 0.1\n")
    write(os.path.join(b, "config_syntax.py"), "max_iters = = 3\n")
    write(os.path.join(b, "config_latin1.py"), "max_iters = 3  # caf\xe9\n".encode("latin-1"))
    write(os.path.join(b, "latin1.txt"), "caf\xe9 au lait".encode("latin-1"))
    write(os.path.join(b, "hellaswag_bad.jsonl"), "{this is not json\n")
    write(os.path.join(b, "corpus.jsonl"), "".join(json.dumps({"text": f"doc {i} " * 5}) + "\n" for i in range(20)))
    write(os.path.join(b, "malformed.jsonl"), '{"text": "fine"}\n{"text": "cut off\n')
    write(os.path.join(b, "corpus.csv"), "text\nhello\n")
    write(os.path.join(b, "chats.jsonl"), json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                                  {"role": "assistant", "content": "hello"}]}) + "\n")
    write(os.path.join(b, "chats_bad.jsonl"), "".join(json.dumps({"messages": m}) + "\n"
                                                      for m in ("hi", [], [{"role": "wizard", "content": "x"}])))
    write(os.path.join(b, "tasks", "choice.jsonl"), json.dumps({"ctx": "The cat sat on the", "endings": ["mat", "moon"],
                                                                 "label": 0}) + "\n")
    write(os.path.join(b, "tasks", "wiggle_choice.yaml"),
          "task: wiggle_choice\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: tasks/choice.jsonl\n"
          'test_split: test\noutput_type: multiple_choice\ndoc_to_text: "{{ctx}}"\ndoc_to_choice: "{{endings}}"\n'
          "doc_to_target: label\nmetric_list:\n  - metric: acc\n")


def snapshot(folder):
    """{relative path: sha256 of the file, or 'folder'} of everything under folder (no __pycache__)."""
    out = {}
    for here, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = os.path.relpath(here, folder)
        if rel != ".":
            out[rel] = "folder"
        for name in files:
            path = os.path.join(here, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def case_env(base):
    env = {**os.environ, "CI": "true", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "HF_HOME": os.path.join(os.path.dirname(str(base)), "hf_home"),  # outside the compared folder
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def available(module):
    import importlib.util
    return importlib.util.find_spec(module) is not None


@functools.lru_cache(maxsize=None)
def can_lock_files():
    """Whether chmod 000 keeps this user from reading a file (not for root, nor on Windows)."""
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "locked")
        write(path, "x")
        os.chmod(path, 0)
        try:
            with open(path, "rb"):
                return False
        except OSError:
            return True
        finally:
            os.chmod(path, 0o600)


def runs_here(case):
    return (not case.needs or available(case.needs)) and (not case.locked or can_lock_files())


@pytest.fixture(scope="module")
def results(request, tmp_path_factory):
    """{case id: (CompletedProcess, files before, files after)} for the cases this session runs."""
    wanted = {item.callspec.params["case_id"] for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec") and "case_id" in item.callspec.params}
    wanted = [c for c in CASES if c in wanted and runs_here(CASES[c])]
    top = tmp_path_factory.mktemp("bad_inputs")
    base = top / "base"
    build_inputs(base)
    before = snapshot(base)

    def one(case_id):
        case = CASES[case_id]
        folder = top / "cases" / case_id
        shutil.copytree(base, folder)
        try:
            if case.locked:
                os.chmod(folder / case.locked, 0)
            command = [sys.executable, os.path.join(ROOT, case.script), *case.args]
            try:
                result = subprocess.run(command, cwd=folder, stdin=subprocess.DEVNULL, capture_output=True,
                                        text=True, timeout=240, env=case_env(base))
            except subprocess.TimeoutExpired as e:  # one hung case fails alone
                text = [t.decode(errors="replace") if isinstance(t, bytes) else t or "" for t in (e.stdout, e.stderr)]
                result = subprocess.CompletedProcess(command, "timed out after 240 s", text[0], text[1])
            if case.locked:
                os.chmod(folder / case.locked, 0o644)  # readable again, to be compared
            after = snapshot(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return result, after

    with ThreadPoolExecutor(WORKERS) as pool:
        # the slow ones (lm_eval imports the harness) first, so they overlap the rest
        order = sorted(wanted, key=lambda c: not c.startswith("lm_eval"))
        done = dict(zip(order, pool.map(one, order)))
    return {case_id: (result, before, after) for case_id, (result, after) in done.items()}


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_no_file(results, case_id):
    case = CASES[case_id]
    if case.needs:
        require_module(case.needs, INSTALL)
    if case.locked and not can_lock_files():
        pytest.skip("chmod 000 does not keep this user from reading a file (root reads any file)")
    result, before, after = results[case_id]
    shown = f"{case_id}: python {case.script} {' '.join(case.args)}\nexit {result.returncode}\n" \
            f"stderr:\n{result.stderr[-3000:]}\nstdout:\n{result.stdout[-1500:]}"
    assert "Traceback" not in result.stderr + result.stdout, shown
    assert "this must never run" not in result.stdout, shown  # the hostile meta.pkl was not unpickled
    assert result.returncode == 2, shown
    lines = result.stderr.strip().splitlines()
    assert lines, shown
    if case.quiet:
        assert len(lines) == 1, shown
    assert lines[-1].startswith("error: "), shown
    assert case.phrase in lines[-1], f"{case_id}: expected {case.phrase!r} in the error line\n{shown}"
    added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    problem = f"{case_id}: files added {added}, removed {removed}, changed {changed}"
    if case.known:  # the one line is right, the files are not yet: expected until the gap is fixed
        assert added or removed or changed, f"{case_id} leaves the files alone now: drop its known= note"
        pytest.xfail(f"{case.known}: {problem}")
    assert not (added or removed or changed), f"{problem}\n{shown}"


def test_the_catalogue_is_large_enough():
    scripts = {name for name in os.listdir(ROOT) if name.endswith(".py") and name != "model_bio.py"}
    assert len(CASES) >= 45 and {c.script for c in CASES.values()} == scripts  # every script but model_bio.py


# ---------------------------------------------------------------------------------------
# the web chat's HTTP API

def user(text):
    return {"role": "user", "content": text}


def asking(**extra):
    return {"messages": [user("hi")], **extra}


HTTP_BLOCK = 32
JSON = "application/json"
BAD_REQUESTS = {
    # name: (method and route, body (bytes, JSON-able or None), content type, expected status)
    "malformed-json": ("POST /api/chat", b'{"messages": [', JSON, 400),
    "messages-not-a-list": ("POST /api/chat", {"messages": "hi"}, JSON, 400),
    "content-not-a-string": ("POST /api/chat", {"messages": [{"role": "user", "content": 3}]}, JSON, 400),
    "temperature-a-string": ("POST /api/chat", asking(temperature="hot"), JSON, 400),
    "top_k-fractional": ("POST /api/chat", asking(top_k=2.5), JSON, 400),
    "unknown-field": ("POST /api/chat", asking(temprature=0.5), JSON, 400),
    "empty-messages": ("POST /api/chat", {"messages": []}, JSON, 400),
    "empty-user-message": ("POST /api/chat", {"messages": [user("  ")]}, JSON, 400),
    "last-message-not-the-users": ("POST /api/chat", {"messages": [user("hi"), {"role": "assistant", "content": "yo"}]},
                                   JSON, 400),
    "max_new_tokens-zero": ("POST /api/chat", asking(max_new_tokens=0), JSON, 400),
    "max_new_tokens-above-context": ("POST /api/chat", asking(max_new_tokens=10**9), JSON, 400),
    "body-over-the-limit": ("POST /api/chat", None, JSON, 413),  # made in the test: one byte over the limit
    "wrong-content-type": ("POST /api/chat", asking(), "text/plain", 415),
    "stop-without-id": ("POST /api/stop", {"reply": 3}, JSON, 400),
    "stop-unknown-id": ("POST /api/stop", {"id": "nope"}, JSON, 404),
    "unknown-route": ("GET /api/nope", None, None, 404),
    "wrong-method": ("GET /api/chat", None, None, 405),
    # the OpenAI-compatible API: the same, in OpenAI's error shape
    "v1-malformed-json": ("POST /v1/chat/completions", b'{"messages": [', JSON, 400),
    "v1-missing-messages": ("POST /v1/chat/completions", {"model": "m"}, JSON, 400),
    "v1-n-2": ("POST /v1/chat/completions", asking(n=2), JSON, 400),
    "v1-unknown-field": ("POST /v1/chat/completions", asking(temprature=0.5), JSON, 400),
    "v1-temperature-3": ("POST /v1/chat/completions", asking(temperature=3), JSON, 400),
    "v1-tool-role": ("POST /v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}, user("hi")]},
                     JSON, 400),
    "v1-image-part": ("POST /v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:,"}}]}]}, JSON, 400),
    "v1-system-after-user": ("POST /v1/chat/completions", {"messages": [user("hi"), {"role": "system", "content": "x"},
                                                                        user("hi")]}, JSON, 400),
    "v1-max_tokens-zero": ("POST /v1/chat/completions", asking(max_tokens=0), JSON, 400),
    "v1-max_tokens-past-context": ("POST /v1/chat/completions", asking(max_completion_tokens=HTTP_BLOCK), JSON, 400),
    "v1-context-exceeded": ("POST /v1/chat/completions", {"messages": [user("word " * 40)], "max_tokens": 4},
                            JSON, 400),
    "v1-stream_options-without-stream": ("POST /v1/chat/completions", asking(stream_options={"include_usage": True}),
                                         JSON, 400),
    "v1-five-stop-strings": ("POST /v1/chat/completions", asking(stop=list("abcde")), JSON, 400),
    "v1-stop-a-number": ("POST /v1/chat/completions", asking(stop=3), JSON, 400),
    "v1-seed-a-string": ("POST /v1/chat/completions", asking(seed="7"), JSON, 400),
    "v1-logprobs": ("POST /v1/chat/completions", asking(logprobs=True), JSON, 400),
    "v1-tools": ("POST /v1/chat/completions", asking(tools=[{"type": "function", "function": {"name": "f"}}]),
                 JSON, 400),
    "v1-two-prompts": ("POST /v1/completions", {"prompt": ["a", "b"]}, JSON, 400),
    "v1-token-id-past-vocab": ("POST /v1/completions", {"prompt": [50257]}, JSON, 400),
    "v1-prompt-too-long": ("POST /v1/completions", {"prompt": "word " * 40, "max_tokens": 4}, JSON, 400),
    "v1-suffix": ("POST /v1/completions", {"prompt": "a", "suffix": "b"}, JSON, 400),
    "v1-wrong-content-type": ("POST /v1/completions", {"prompt": "a"}, "text/plain", 415),
    "v1-unknown-model": ("GET /v1/models/nope", None, None, 404),
    "v1-unknown-route": ("GET /v1/nope", None, None, 404),
    "v1-wrong-method": ("GET /v1/chat/completions", None, None, 405),
}


@pytest.fixture(scope="module")
def client():
    require_module("fastapi", INSTALL)
    require_module("httpx", INSTALL)
    from fastapi.testclient import TestClient
    from wigglegpt import web
    from wigglegpt.chat import Chat
    torch.manual_seed(0)
    model = GPT(tiny_config(block_size=HTTP_BLOCK, vocab_size=50304, n_layer=1, n_head=2, n_embd=16)).eval()
    chat = Chat(model, max_new_tokens=4, temperature=0.0, top_k=50, top_p=0.9, repetition_penalty=1.0)
    with TestClient(web.create_app(chat, "tiny-test")) as c:
        yield c


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_is_a_4xx_with_a_one_line_json_error(client, name):
    from wigglegpt import web
    route, body, kind, status = BAD_REQUESTS[name]
    method, route = route.split()
    if name == "body-over-the-limit":
        head, tail = b'{"messages": [{"role": "user", "content": "', b'"}]}'
        body = head + b"x" * (web.MAX_BODY_BYTES + 1 - len(head) - len(tail)) + tail
        assert len(body) == web.MAX_BODY_BYTES + 1
    content = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    response = client.request(method, route, content=content, headers={"Content-Type": kind} if kind else {})
    assert response.status_code == status, f"{name}: {response.status_code} {response.text[:500]}"
    assert response.headers["content-type"].startswith(JSON), f"{name}: {response.headers}"
    data = response.json()
    assert set(data) == {"error"}, f"{name}: {data}"
    reason = data["error"]
    if route.startswith("/v1/"):  # OpenAI's shape, which its clients read
        assert set(reason) == {"message", "type", "param", "code"} and reason["type"] == "invalid_request_error", name
        reason = reason["message"]
    assert isinstance(reason, str) and reason.strip() and "\n" not in reason and len(reason) < 300, f"{name}: {data}"
    # the server goes on answering
    assert client.post("/api/chat", json=asking(max_new_tokens=1)).status_code == 200, name
