"""
Train WiggleGPT (or its GELU baseline) on one GPU, the CPU, or many GPUs and nodes.

    python train_bio.py config/shakespeare_bio.py                  # a few minutes on a laptop CPU
    python train_bio.py config/gpt2_bio_3070.py --max_iters=1000   # 124M on an 8 GB GPU
    torchrun --standalone --nproc_per_node=4 train_bio.py config/gpt2_bio_3070.py
    python train_bio.py config/gpt2_bio_3070.py --init_from=resume  # carry on after a stop

Settings come from SETTINGS below, then a config file, then --key=value overrides
(python train_bio.py --help lists them). The story: settings -> data -> model -> loop.
Nothing is lost to a crash or a Ctrl-C: out_dir/ckpt.pt is written atomically at every
eval and on the way out, and resuming from it continues the run exactly (same batches, same
dropout, same learning rate). Every figure also goes to out_dir/metrics.jsonl, one JSON
object per line; see write_metrics for the contract.
"""

import json
import math
import os
import random
import signal
import sys
import threading
import time
import types
from contextlib import nullcontext
from dataclasses import dataclass, fields

import numpy as np
import torch

import model_bio
from model_bio import GPT, GPTConfig
from wigglegpt import checkpoint, common, evaluate, gpu, loader, optim, oscillate_triton
from wigglegpt.common import UserError, run_main
from wigglegpt.settings import apply_settings, default_values, load_settings

# ---------------------------------------------------------------------------------------
# settings: defaults here, then a config file, then --key=value

SETTINGS = {
    # I/O
    "out_dir": ("out", "folder for ckpt.pt (latest), ckpt_best.pt (best val loss) and metrics.jsonl"),
    "eval_interval": (2000, "estimate train/val loss and save ckpt.pt every this many iterations"),
    "log_interval": (1, "print and record a training line every this many iterations"),
    "eval_iters": (200, "batches per split in each loss estimate"),
    "eval_only": (False, "estimate the losses once and exit, writing nothing"),
    "hellaswag_interval": (0, "score HellaSwag (acc, acc_norm) every this many iterations and at the end (0 = off)"),
    "hellaswag_limit": (0, "HellaSwag examples scored each time (0 = all 10,042)"),
    "hellaswag_file": ("", "HellaSwag rows from this local .jsonl (empty: Rowan/hellaswag from the Hub)"),
    "always_save_checkpoint": (True, "save ckpt.pt at every eval; False: only when val loss improves, and at the end"),
    "init_from": ("scratch", "'scratch', 'resume' (from out_dir/ckpt.pt), a checkpoint path to fine-tune from, or "
                             "GPT-2: gpt2, gpt2-medium, gpt2-large, gpt2-xl or a transformers save_pretrained folder"),
    "overwrite": (False, "let a new run replace the checkpoint already in out_dir (otherwise that is an error)"),
    # data
    "data_root": ("data", "folder that holds the dataset folders"),
    "dataset": ("openwebtext", "dataset folder under data_root with train.bin and val.bin (+ *_mask.bin for SFT)"),
    "gradient_accumulation_steps": (40, "micro-batches per optimizer step, summed over all processes"),
    "batch_size": (12, "sequences per micro-batch and process; 'auto': the largest that fits in memory, "
                       "with gradient_accumulation_steps chosen to keep tokens_per_iter", "auto"),
    "tokens_per_iter": (0, "tokens per optimizer step over all processes, which batch_size='auto' keeps "
                           "(0: batch_size x gradient_accumulation_steps x block_size; if set, they must agree)"),
    "block_size": (1024, "tokens per training sequence (context length)"),
    # model (the GPTConfig fields)
    "n_layer": (12, "transformer blocks"),
    "n_head": (12, "attention heads per block"),
    "n_embd": (768, "width of the residual stream"),
    "dropout": (0.0, "dropout rate (0.0 for pretraining, try 0.1+ for fine-tuning)"),
    "bias": (False, "biases in Linear and LayerNorm layers, as in GPT-2"),
    "use_bio_mlp": (True, "oscillating neurons sin(omega*x+phi)*tanh(x)+baseline instead of GELU"),
    "use_rmsnorm": (True, "RMSNorm instead of LayerNorm"),
    "use_rope": (True, "rotary position embeddings instead of a learned position table"),
    "legacy_rope": (False, "the published checkpoints' RoPE, which encodes no position (set from old checkpoints)"),
    "gelu_approximate": ("none", "GELU MLP only: 'none' (exact) or 'tanh' (GPT-2's approximation; set from GPT-2)"),
    "gradient_checkpointing": (False, "recompute blocks in backward: much less memory, ~30% slower"),
    "activation_kernel": ("auto", "how the oscillating activation runs: 'triton' (the fused kernel), 'torch' (plain "
                                  "PyTorch ops) or 'auto' (the kernel on CUDA where Triton works, else torch)"),
    "use_sparse_gate": (False, "soft spike gate in the MLP (logs the share of units that fire)"),
    "sparse_gate_kind": ("lightweight", "'lightweight' (weight + bias per hidden unit) or 'event_layer' (v2: two 4C x 4C matrices)"),
    "bio_threshold": (0.25, "firing threshold of the sparse gate"),
    "vocab_size": (50304, "vocabulary size (GPT-2's 50257 padded to a multiple of 64)"),
    # optimizer
    "learning_rate": (6e-4, "peak learning rate"),
    "max_iters": (600000, "optimizer steps to train for"),
    "weight_decay": (0.1, "AdamW weight decay on matrices and embeddings"),
    "betas": ((0.9, 0.95), "AdamW betas (beta1, beta2)"),
    "beta1": (None, "the original WiggleGPT's name for betas[0]; given, it replaces it"),
    "beta2": (None, "the original WiggleGPT's name for betas[1]; given, it replaces it"),
    "optimizer_type": ("adamw", "'adamw' (fused on CUDA), 'adamw8bit' (bitsandbytes, CUDA), 'lion' or 'adafactor' "
                                "(see wigglegpt/optim.py)"),
    "grad_clip": (1.0, "clip the gradient norm to this; 0.0 turns clipping off"),
    # learning-rate schedule
    "lr_schedule": ("cosine", "'cosine' (warmup + cosine decay), 'wsd' (warmup-stable-decay), 'wsd_cosine' (the "
                              "original's wsd: hold stable_iters, then cosine) or 'constant'"),
    "decay_lr": (True, "False: the learning rate is learning_rate throughout (no warmup, no decay), as the original"),
    "warmup_iters": (2000, "iterations of linear warmup from 0 to learning_rate"),
    "lr_decay_iters": (600000, "iteration where the decay reaches min_lr (usually = max_iters)"),
    "wsd_decay_frac": (0.1, "wsd only: share of the post-warmup iterations spent decaying"),
    "stable_iters": (0, "wsd_cosine: iterations held at learning_rate after warmup before the cosine decay; "
                        "with lr_schedule='wsd', stable_iters > 0 means wsd_cosine (the original's meaning)"),
    "min_lr": (6e-5, "learning rate at the end of the decay (usually learning_rate / 10)"),
    # system
    "device": ("auto", "'auto' (cuda > mps > cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    "dtype": ("auto", "'auto' (bf16 on GPUs that compute it in hardware, else fp16; fp32 on the CPU), 'float32', "
                       "'bfloat16', 'float16' (mixed precision through torch.autocast, on the CPU too)"),
    "compile": ("auto", "torch.compile the model: 'auto' on a CUDA GPU where Triton works (faster, slow first "
                        "iterations), eager elsewhere; True or False force it", True, False),
    "compile_mode": ("default", "torch.compile mode: default, reduce-overhead, max-autotune or "
                                "max-autotune-no-cudagraphs"),
    "backend": ("auto", "process-group backend under torchrun: auto (nccl on CUDA where built in, else gloo), "
                        "nccl or gloo"),
    "profile_memory": (False, "CUDA: record allocations and write out_dir/memory_snapshot.pickle at the end "
                              "(view it at pytorch.org/memory_viz)"),
    "seed": (1337, "random seed; each process adds its rank"),
    "peak_flops": (0.0, "the device's dense bf16/fp16 peak FLOP/s for MFU; 0: look the GPU up in wigglegpt.gpu's table"),
    "max_nan_skips": (5, "stop after this many non-finite losses in a row (each skips its update)"),
    # logging
    "wandb_log": (False, "log to Weights & Biases (WANDB_MODE=offline works without network)"),
    "wandb_project": ("wigglegpt", "wandb project name"),
    "wandb_run_name": ("", "wandb run name ('' lets wandb pick one)"),
}

MODEL_FIELDS = [f.name for f in fields(GPTConfig)]
# fields a checkpoint fixes: its weights were trained with them
ARCH_FIELDS = [f for f in MODEL_FIELDS
               if f not in ("block_size", "dropout", "gradient_checkpointing", "activation_kernel")]
SCHEDULES = ("cosine", "wsd", "wsd_cosine", "constant")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
BACKENDS = ("auto", "nccl", "gloo")
PREPARE_HINT = ("data is prepared apart: python prepare_smoltalk.py (--dataset, --dataset_config, --split, "
                "--max_examples, --val_fraction), then train with dataset='smoltalk'")
# settings of the original WiggleGPT scripts that mean nothing to train_bio.py: what to do instead
ORIGINAL_ONLY = {
    "pretrained_ckpt": "fine-tune from a checkpoint with init_from='path/to/ckpt.pt'",
    "freeze_layers": "freezing layers is not offered; fine-tune them all (gradient_checkpointing=True saves memory)",
    "bio_compartments": "the dendritic compartments of WiggleGPT v1 are gone (the original removed them too); drop it",
    **{key: PREPARE_HINT for key in ("dataset_name", "dataset_subset", "dataset_split", "max_samples",
                                     "chunk_size", "val_split")},
}
SPLITS = ("train", "val")
EXIT_NAN = 3


def as_settings(settings):
    """A dict or namespace of settings (missing ones take their defaults), type-checked like
    the command line; returns a fresh SimpleNamespace so the caller's object is never changed."""
    given = dict(settings) if isinstance(settings, dict) else dict(vars(settings))
    values = apply_settings(SETTINGS, default_values(SETTINGS), given, "in the settings",
                                         hints=ORIGINAL_ONLY)
    return types.SimpleNamespace(**values)


def check_settings(s):
    """Impossible settings become one clear UserError before anything is built."""
    positive = ["eval_interval", "log_interval", "eval_iters", "gradient_accumulation_steps", "block_size",
                "max_nan_skips"] + ([] if s.batch_size == "auto" else ["batch_size"])
    for key in positive:
        if getattr(s, key) <= 0:
            raise UserError(f"{key} must be positive, got {getattr(s, key)}")
    for key in ("max_iters", "warmup_iters", "lr_decay_iters", "learning_rate", "min_lr", "weight_decay", "grad_clip",
                "hellaswag_interval", "hellaswag_limit", "tokens_per_iter", "peak_flops"):
        if getattr(s, key) < 0:
            raise UserError(f"{key} must not be negative, got {getattr(s, key)}")
    for i, key in enumerate(("beta1", "beta2")):  # the original's names win over betas
        value = getattr(s, key)
        if value is not None:
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0):
                raise UserError(f"{key} must be a number in [0, 1), got {value!r}")
            s.betas = tuple(getattr(s, key) if j == i else b for j, b in enumerate(s.betas))
            setattr(s, key, None)
    if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in s.betas):
        raise UserError(f"betas must be two numbers in [0, 1), got {s.betas!r}")
    s.betas = tuple(float(b) for b in s.betas)
    if s.lr_schedule not in SCHEDULES:
        raise UserError(f"lr_schedule={s.lr_schedule!r}; use one of {', '.join(SCHEDULES)}")
    if not isinstance(s.stable_iters, int) or s.stable_iters < 0:
        raise UserError(f"stable_iters must be a whole number >= 0, got {s.stable_iters!r}")
    if s.lr_schedule == "wsd" and s.stable_iters:
        s.lr_schedule = "wsd_cosine"  # what lr_schedule='wsd' with stable_iters meant in the original
    held = s.warmup_iters + (s.stable_iters if s.lr_schedule == "wsd_cosine" else 0)
    if s.decay_lr and s.lr_schedule != "constant" and s.lr_decay_iters <= held:
        extra = f" + stable_iters={s.stable_iters}" if held != s.warmup_iters else ""
        raise UserError(f"lr_decay_iters={s.lr_decay_iters} must be larger than warmup_iters={s.warmup_iters}{extra}")
    if s.optimizer_type not in optim.OPTIMIZERS:
        raise UserError(f"optimizer_type={s.optimizer_type!r}; use one of {', '.join(optim.OPTIMIZERS)}")
    if s.compile not in ("auto", True, False):
        raise UserError(f"compile={s.compile!r}; use 'auto', True or False")
    if s.compile_mode not in COMPILE_MODES:
        raise UserError(f"compile_mode={s.compile_mode!r}; use one of {', '.join(COMPILE_MODES)}")
    if s.backend not in BACKENDS:
        raise UserError(f"backend={s.backend!r}; use one of {', '.join(BACKENDS)}")
    if s.min_lr > s.learning_rate:
        raise UserError(f"min_lr={s.min_lr} is above learning_rate={s.learning_rate}")
    if not 0.0 < s.wsd_decay_frac <= 1.0:
        raise UserError(f"wsd_decay_frac must be in (0, 1], got {s.wsd_decay_frac}")
    if not s.out_dir:
        raise UserError("out_dir must not be empty")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_token_budget(s, world)
    if s.batch_size != "auto" and s.gradient_accumulation_steps % world:
        raise UserError(f"gradient_accumulation_steps={s.gradient_accumulation_steps} is not divisible by the "
                        f"{world} processes; use a multiple of {world}")
    model_config_from(s)  # n_embd % n_head, head size for RoPE, dropout range, ...


def check_token_budget(s, world):
    """batch_size='auto' needs tokens_per_iter in whole sequences per process; a fixed batch_size
    with a tokens_per_iter must add up to it (a config's budget is never changed by accident)."""
    if s.batch_size == "auto":
        if s.tokens_per_iter <= 0:
            raise UserError("batch_size='auto' needs the tokens per iteration to keep: set tokens_per_iter "
                            f"(e.g. --tokens_per_iter={32 * s.block_size} for 32 sequences of {s.block_size})")
        if s.tokens_per_iter % (s.block_size * world):
            raise UserError(f"tokens_per_iter={s.tokens_per_iter} is not a whole number of block_size "
                            f"{s.block_size} sequences for each of the {world} process(es); use a multiple of "
                            f"{s.block_size * world}")
        return
    product = s.batch_size * s.gradient_accumulation_steps * s.block_size
    if s.tokens_per_iter and s.tokens_per_iter != product:
        raise UserError(f"batch_size {s.batch_size} x gradient_accumulation_steps {s.gradient_accumulation_steps} x "
                        f"block_size {s.block_size} = {product:,} tokens, but tokens_per_iter={s.tokens_per_iter:,}; "
                        "change gradient_accumulation_steps to match, or use --batch_size=auto")


def model_config_from(s):
    """The GPTConfig these settings describe (a fresh model's; checkpoints bring their own)."""
    try:
        return GPTConfig(**{name: getattr(s, name) for name in MODEL_FIELDS})
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None


# ---------------------------------------------------------------------------------------
# processes, devices and precision

@dataclass
class Dist:
    ddp: bool = False
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def master(self):
        return self.rank == 0


def setup_distributed(requested_device, backend="auto"):
    """torchrun sets RANK/WORLD_SIZE: join the process group (auto: nccl on CUDA, else gloo)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist(), common.pick_device(requested_device)
    import torch.distributed as dist
    d = Dist(True, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), int(os.environ["WORLD_SIZE"]))
    device = common.pick_device(requested_device)
    if device.startswith("cuda"):
        device = f"cuda:{d.local_rank}"  # one GPU per process
        torch.cuda.set_device(device)
    nccl = device.startswith("cuda") and dist.is_nccl_available()  # Windows builds have no nccl
    if backend == "nccl" and not nccl:
        raise UserError("backend='nccl' needs CUDA and a torch build with NCCL; use backend='gloo' or 'auto'")
    dist.init_process_group(backend=("nccl" if nccl else "gloo") if backend == "auto" else backend)
    return d, device


def print0(d, *args, **kwargs):
    """Only rank 0 talks; the other processes would repeat it."""
    if d.master:
        print(*args, **kwargs, flush=True)


def all_reduce_mean(tensor, d):
    if d.ddp:
        import torch.distributed as dist
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= d.world
    return tensor


# ---------------------------------------------------------------------------------------
# data: random windows of uint16 token files (and the aligned loss masks of SFT data)

class TokenSplit:
    """One split: `name`.bin of uint16 GPT-2 tokens, plus `name`_mask.bin (uint8) for SFT."""

    def __init__(self, folder, name, masked):
        self.path = os.path.join(folder, f"{name}.bin")
        self.mask_path = os.path.join(folder, f"{name}_mask.bin") if masked else None
        self.n_tokens = os.path.getsize(self.path) // 2
        if masked and os.path.getsize(self.mask_path) != self.n_tokens:
            raise UserError(f"{self.mask_path} has {os.path.getsize(self.mask_path):,} entries but "
                            f"{self.path} has {self.n_tokens:,} tokens; prepare the data again")

    def sample(self, batch_size, block_size, generator):
        """(x, y) int64 CPU tensors of shape (batch_size, block_size); y is x shifted by one.

        With a mask, targets outside assistant replies become -1 (ignored by the loss): the
        mask entry that counts is the target's own, mask[i + 1] for target data[i + 1].
        """
        # opened per batch: a long-lived np.memmap keeps every page it touched (RSS only grows)
        data = np.memmap(self.path, dtype=np.uint16, mode="r")
        starts = torch.randint(self.n_tokens - block_size, (batch_size,), generator=generator).tolist()
        if self.mask_path is None:
            x = np.stack([data[i:i + block_size] for i in starts]).astype(np.int64)
            y = np.stack([data[i + 1:i + 1 + block_size] for i in starts]).astype(np.int64)
            return torch.from_numpy(x), torch.from_numpy(y)
        mask = np.memmap(self.mask_path, dtype=np.uint8, mode="r")
        for row, i in enumerate(starts):
            tries = 0
            while not mask[i + 1:i + 1 + block_size].any():  # a window with nothing to learn gives a 0/0 loss
                tries += 1
                if tries > 1000:
                    raise UserError(f"{self.mask_path}: 1,000 random windows of {block_size} tokens held no "
                                    "assistant token; check the mask or use a larger block_size")
                i = int(torch.randint(self.n_tokens - block_size, (1,), generator=generator))
            starts[row] = i
        x = np.stack([data[i:i + block_size] for i in starts]).astype(np.int64)
        y = np.stack([data[i + 1:i + 1 + block_size] for i in starts]).astype(np.int64)
        m = np.stack([mask[i + 1:i + 1 + block_size] for i in starts])
        y[m == 0] = -1
        return torch.from_numpy(x), torch.from_numpy(y)


class Data:
    """Both splits of a dataset folder and the batch shapes drawn from them."""

    def __init__(self, folder, batch_size, block_size, vocab_size, device):
        self.folder = folder
        masks = [os.path.exists(os.path.join(folder, f"{split}_mask.bin")) for split in SPLITS]
        if any(masks) and not all(masks):
            raise UserError(f"{folder} has only one of train_mask.bin / val_mask.bin; prepare the data again")
        self.masked = all(masks)
        self.splits = {split: TokenSplit(folder, split, self.masked) for split in SPLITS}
        self.batch_size, self.block_size, self.vocab_size, self.device = batch_size, block_size, vocab_size, device
        for split, part in self.splits.items():
            need = batch_size * block_size + 1
            if part.n_tokens < need:
                raise UserError(f"{part.path} has {part.n_tokens:,} tokens, fewer than one batch needs "
                                f"(batch_size {batch_size} x block_size {block_size} + 1 = {need:,}); "
                                "lower batch_size/block_size or use more data")

    def batch(self, split, generator):
        x, y = self.splits[split].sample(self.batch_size, self.block_size, generator)
        top = max(int(x.max()), int(y.max()))
        if top >= self.vocab_size:
            raise UserError(f"{self.splits[split].path} holds token id {top:,} but the model's vocab_size is "
                            f"{self.vocab_size:,}; use a larger vocab_size")
        if self.device.startswith("cuda"):
            # pinned memory lets the copy run asynchronously while the GPU works
            return (x.pin_memory().to(self.device, non_blocking=True),
                    y.pin_memory().to(self.device, non_blocking=True))
        return x.to(self.device), y.to(self.device)


def open_data(s, d, device):
    folder = os.path.join(s.data_root, s.dataset)
    if d.master and s.dataset == "shakespeare":
        from wigglegpt import dataprep  # the offline demo corpus is built on first use (seconds)
        dataprep.ensure_demo_data(folder)
    if d.ddp:
        import torch.distributed as dist
        dist.barrier()  # the others wait until rank 0 has the files
    if not os.path.isdir(folder):
        raise UserError(f"data folder not found: {folder} (prepare it with prepare_openwebtext_streaming.py or prepare_smoltalk.py, or set "
                        "--data_root / --dataset)")
    for split in SPLITS:
        if not os.path.isfile(os.path.join(folder, f"{split}.bin")):
            raise UserError(f"{os.path.join(folder, split + '.bin')} is missing; prepare the data with prepare_openwebtext_streaming.py or prepare_smoltalk.py")
    return Data(folder, s.batch_size, s.block_size, s.vocab_size, device)


def sampler_seed(seed, rank):
    return seed + 100_003 * (rank + 1)  # its own stream per process, apart from the model's


def eval_seed(seed, rank, split):
    # every eval draws the same batches: curves (and bio vs GELU runs) compare on equal terms
    return seed + 200_003 * (rank + 1) + SPLITS.index(split)


# ---------------------------------------------------------------------------------------
# learning-rate schedules: functions of the iteration alone, so a resumed run matches

def learning_rate_at(it, s):
    """Linear warmup to learning_rate, then
    - cosine: cosine decay to min_lr at lr_decay_iters (Loshchilov & Hutter 2017, SGDR,
      without restarts): lr = min_lr + 0.5 * (1 + cos(pi * progress)) * (learning_rate - min_lr)
    - wsd: hold learning_rate, then decay linearly to min_lr over the last wsd_decay_frac of
      the post-warmup iterations (warmup-stable-decay, Hu et al. 2024, MiniCPM)
    - constant: hold learning_rate.
    - wsd_cosine: hold learning_rate for stable_iters after warmup, then cosine decay to min_lr
      at lr_decay_iters (the original WiggleGPT's 'wsd')
    After lr_decay_iters: min_lr. decay_lr=False: learning_rate throughout (the original's switch)."""
    if not s.decay_lr:
        return s.learning_rate
    if it < s.warmup_iters:
        return s.learning_rate * (it + 1) / (s.warmup_iters + 1)
    if s.lr_schedule == "constant":
        return s.learning_rate
    if it >= s.lr_decay_iters:
        return s.min_lr
    if s.lr_schedule in ("cosine", "wsd_cosine"):
        hold = s.warmup_iters + (s.stable_iters if s.lr_schedule == "wsd_cosine" else 0)
        if it < hold:
            return s.learning_rate
        progress = (it - hold) / (s.lr_decay_iters - hold)
        return s.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (s.learning_rate - s.min_lr)
    decay_iters = max(1, round(s.wsd_decay_frac * (s.lr_decay_iters - s.warmup_iters)))
    decay_start = s.lr_decay_iters - decay_iters
    if it < decay_start:
        return s.learning_rate
    return s.learning_rate + (s.min_lr - s.learning_rate) * (it - decay_start) / decay_iters


# ---------------------------------------------------------------------------------------
# random-number state: saved whole, so a resume draws the same batches and dropout masks

def rng_snapshot(sampler):
    """This process's generators as plain tensors/lists (weights_only=True cannot load numpy)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    snap = {"python": random.getstate(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state(),
            "sampler": sampler.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        snap["cuda"] = torch.cuda.get_rng_state_all()
    return snap


def restore_rng(snap, sampler):
    random.setstate(snap["python"])
    n = snap["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(snap["torch"])
    sampler.set_state(snap["sampler"])
    if "cuda" in snap and torch.cuda.is_available() and len(snap["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(snap["cuda"])


def gather_rng(sampler, d):
    """Every process's snapshot (a collective: all ranks call it together)."""
    snap = rng_snapshot(sampler)
    if not d.ddp:
        return [snap]
    import torch.distributed as dist
    everyone = [None] * d.world
    dist.all_gather_object(everyone, snap)
    return everyone


# ---------------------------------------------------------------------------------------
# the model: from scratch, resumed, or fine-tuned from a checkpoint

def checked_against(s, cfg, source, d):
    """Take the architecture from a checkpoint; warn where the user asked for something else."""
    for name in ARCH_FIELDS:
        mine, theirs = getattr(s, name), getattr(cfg, name)
        if mine != SETTINGS[name][0] and mine != theirs:
            print0(d, f"warning: {name}={mine!r} ignored: {source} was trained with {name}={theirs!r}")
        setattr(s, name, theirs)  # the record (metrics, checkpoint) tells what really trained
    if s.block_size > cfg.block_size:
        raise UserError(f"block_size={s.block_size} is larger than the block_size {cfg.block_size} of {source}; "
                        f"use --block_size={cfg.block_size} or less")


def build_model(s, device, d):
    """(raw GPT on device, checkpoint dict to resume from or None)."""
    overrides = dict(dropout=s.dropout, gradient_checkpointing=s.gradient_checkpointing,
                     activation_kernel=s.activation_kernel)
    if s.init_from == "scratch":
        return GPT(model_config_from(s)).to(device), None
    # resume, fine-tune from a checkpoint, or from GPT-2 (a name or a save_pretrained folder)
    model, ckpt, source = loader.load_model_from(s.init_from, s.out_dir, device, **overrides)
    checked_against(s, model.config, source, d)
    if s.init_from == "resume":
        for key in ("optimizer", "iter_num"):
            if key not in ckpt:
                raise UserError(f"{source} has no {key!r}: it cannot be resumed; fine-tune from it with --init_from={source}")
        return model, ckpt
    # fine-tune: the weights only; a fresh optimizer at iteration 0
    note = ""
    if ckpt is None:
        note = " (GPT-2 weights through transformers)"
    elif checkpoint.is_original_format(ckpt):
        note = " (original WiggleGPT format: legacy_rope on)"
    print0(d, f"fine-tuning from {source}{note}")
    del ckpt
    return model, None


# ---------------------------------------------------------------------------------------
# metrics.jsonl, wandb, checkpoints

def write_metrics(out_dir, record):
    """Append one JSON object per line to out_dir/metrics.jsonl (rank 0 only). Kinds:
    start {iter, params, tokens_per_iter, config, time}; train {iter, loss, lr, dt_ms, mfu (null
    when the device's peak FLOP/s is unknown), tokens, tokens_per_sec, firing_share}; eval {iter,
    train_loss, val_loss, train_bpb, val_bpb, tokens, lr, peak_mem_mb} (bpb: bits per byte of the
    same eval batches, see wigglegpt.evaluate); hellaswag {iter, acc, acc_norm, n, tokens}; end {iter,
    best_val_loss, tokens, elapsed_s, reason}."""
    path = os.path.join(out_dir, "metrics.jsonl")
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        raise common.write_error(path, e, resume_advice(os.path.join(out_dir, "ckpt.pt"))) from None


def peak_memory_mb(device):
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # Windows has no getrusage
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def start_wandb(s, run_id):
    try:
        import wandb
    except ImportError:
        raise UserError("wandb_log=True but wandb is not installed (pip install wandb)") from None
    kwargs = dict(project=s.wandb_project, name=s.wandb_run_name or None, config=dict(vars(s)))
    if run_id:
        kwargs.update(id=run_id, resume="allow")  # the same run continues on resume
    return wandb.init(**kwargs)


def save_run(path_dir, raw_model, optimizer, scaler, s, state, rngs, d, best):
    """ckpt.pt (rank 0 writes; every rank joins the RNG gather), and ckpt_best.pt when best."""
    ckpt = checkpoint.checkpoint_dict(
        raw_model, optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), train_config=dict(vars(s)),
        iter_num=state.iter_num, best_val_loss=float(state.best_val_loss), tokens=state.tokens,
        last_eval_iter=state.last_eval_iter, last_hellaswag_iter=state.last_hellaswag_iter, rng={k: v for k, v in rngs[0].items() if k != "sampler"},
        sampler={"generator": rngs[0]["sampler"], "world_size": d.world},
        rank_states=rngs if d.ddp else None, wandb_run_id=state.wandb_run_id)
    path = os.path.join(path_dir, "ckpt.pt")
    checkpoint.save_checkpoint(ckpt, path, resume_advice(path))
    if best:
        keep_as_best(ckpt, path, os.path.join(path_dir, "ckpt_best.pt"))
    return path


def resume_advice(latest):
    """What to do after a failed write (disk full, no permission): the run stops there."""
    if os.path.exists(latest):
        return f"continue from the last good {latest} with --init_from=resume"
    return "run again"


def keep_as_best(ckpt, latest, best):
    """ckpt_best.pt as a hard link to the file just written (no second copy on disk); the
    next atomic save of ckpt.pt makes a new file and leaves this one alone."""
    tmp = f"{best}.tmp{os.getpid()}"
    try:
        if os.path.exists(tmp):
            os.remove(tmp)
        os.link(latest, tmp)
        os.replace(tmp, best)
    except OSError:  # a filesystem without hard links
        if os.path.exists(tmp):
            os.remove(tmp)
        checkpoint.save_checkpoint(ckpt, best, resume_advice(latest))


def start_memory_profile(s, d, device):
    """profile_memory (the original's debugging switch): record CUDA allocations from here on,
    on rank 0. Returns whether recording started."""
    if not s.profile_memory:
        return False
    if not device.startswith("cuda"):
        print0(d, f"note: profile_memory records CUDA allocations only; nothing to record on {device} "
                  "(the metrics' peak_mem_mb gives the peak memory)")
        return False
    if d.master:
        torch.cuda.memory._record_memory_history(max_entries=100_000)
    return d.master


# ---------------------------------------------------------------------------------------
# stopping cleanly

class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM set a flag that the loop checks between iterations, so the
    current step finishes and a checkpoint is saved; a second Ctrl-C aborts at once."""

    def __init__(self):
        self.requested = False
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


# ---------------------------------------------------------------------------------------
# setting up one process's run

@dataclass
class RunState:
    """What a checkpoint carries besides the weights and the optimizer."""
    iter_num: int = 0
    best_val_loss: float = float("inf")
    tokens: int = 0
    last_eval_iter: int = -1
    wandb_run_id: str = None
    last_hellaswag_iter: int = -1


@dataclass
class Run:
    """Everything one training process works with."""
    s: types.SimpleNamespace
    d: Dist
    device: str
    dtype: str
    ctx: object  # autocast (nothing in float32)
    raw_model: GPT  # what checkpoints save
    model: torch.nn.Module  # raw_model, or compiled: evaluates
    train_model: torch.nn.Module  # model, or DDP around it: trains
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    data: Data
    sampler: torch.Generator  # draws the training batches' offsets
    state: RunState
    tokens_per_iter: int  # over all processes
    accum: int  # micro-batches per process
    peak_flops: float  # the device's, for MFU; None when unknown
    compiled: bool = False  # model is torch.compile's
    activation: str = ""  # how the oscillating activation runs, for the start-up log
    wandb: object = None
    hellaswag_rows: list = None  # loaded once when hellaswag_interval > 0
    steps_done: int = 0  # by this process: the first compiled one includes the compilation


def data_parallel(model, d, device_type):
    """DDP around the model, without syncing buffers at each forward: the buffers (RoPE tables,
    firing counters) are the same on every rank or rank-local, and DDP would otherwise re-send
    them from rank 0 before every forward, the no_sync micro-steps included. (Newer torch names
    the switch forward_sync_buffers and deprecates broadcast_buffers.)"""
    import inspect
    from torch.nn.parallel import DistributedDataParallel as DDP
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
               else {"broadcast_buffers": False})
    return DDP(model, device_ids=[d.local_rank] if device_type == "cuda" else None, **no_sync)


def compile_choice(setting, device):
    """(compile?, note to print or ''): compile='auto' compiles on a CUDA GPU where Triton works
    (Inductor writes its GPU kernels in Triton) and runs eager elsewhere, saying why once."""
    on_cuda = device.startswith("cuda")
    if setting is False:
        return False, ""
    triton_ok, why = oscillate_triton.available("cuda") if on_cuda else (False, "")
    if setting is True:
        if on_cuda and not triton_ok:
            raise UserError(f"compile=True needs a working Triton on CUDA: {why}; use --compile=False "
                            "(Linux: pip install triton; Windows: pip install triton-windows)")
        return True, ""
    if on_cuda and triton_ok:
        return True, "compile='auto': compiling with torch.compile (the first iterations are slow)"
    if on_cuda:
        return False, (f"compile='auto': running eager, {why} (Linux: pip install triton; Windows: "
                       "pip install triton-windows; --compile=False silences this)")
    return False, (f"compile='auto': running eager on {device} (torch.compile pays off on CUDA GPUs; "
                   "--compile=True compiles here too)")


def activation_choice(config, device_type):
    """How the oscillating activation will run here, in words; activation_kernel='triton' where
    the kernel cannot run is a UserError."""
    if not config.use_bio_mlp:  # the event-layer gate needs it; the lightweight gate has no oscillator
        return "GELU (no oscillating activation)"
    try:
        kernel = model_bio.uses_kernel(config.activation_kernel, device_type)
    except ValueError as e:
        raise UserError(str(e)) from None
    if kernel:
        return f"fused Triton kernel ({oscillate_triton.available(device_type)[1]})"
    if config.activation_kernel == "torch":
        return "PyTorch ops (activation_kernel='torch')"
    if device_type != "cuda":
        return "PyTorch ops (activation_kernel='auto': the fused kernel is for CUDA GPUs)"
    return f"PyTorch ops (activation_kernel='auto'; {oscillate_triton.available(device_type)[1]})"


def setup_run(s, d, device):
    """Precision, seeds, model (scratch, resumed or fine-tuned), data and optimizer."""
    device_type = device.split(":")[0]
    dtype = common.pick_dtype(s.dtype, device)  # bf16/fp16 on the CPU too, through CPU autocast
    autocast = common.autocast_for(device, dtype)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls on Ampere+: fp32 range, much faster
        torch.backends.cudnn.allow_tf32 = True

    # seeds: each process its own, so ranks draw different batches
    random.seed(s.seed + d.rank)
    np.random.seed(s.seed + d.rank)
    torch.manual_seed(s.seed + d.rank)
    sampler = torch.Generator().manual_seed(sampler_seed(s.seed, d.rank))

    raw_model, ckpt = build_model(s, device, d)  # before the data: a checkpoint brings its own vocab_size
    fit_to_memory(s, d, device, dtype, autocast, raw_model, ckpt)
    data = open_data(s, d, device)
    optimizer = optim.make_optimizer(raw_model, s.optimizer_type, s.weight_decay, s.learning_rate, s.betas,
                                         device_type)
    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))  # fp16 needs loss scaling, bf16 not
    compiled, note = compile_choice(s.compile, device)
    if note:
        print0(d, note)
    model = torch.compile(raw_model, mode=s.compile_mode) if compiled else raw_model  # checkpoints save raw_model
    train_model = data_parallel(model, d, device_type) if d.ddp else model
    run = Run(s, d, device, dtype, autocast, raw_model, model, train_model, optimizer, scaler, data, sampler,
              RunState(), s.gradient_accumulation_steps * s.batch_size * s.block_size,
              s.gradient_accumulation_steps // d.world, gpu.resolve_peak_flops(s.peak_flops, device)[0],
              compiled=compiled, activation=activation_choice(raw_model.config, device_type))
    if ckpt is not None:
        saved = ckpt.get("train_config", {}).get("optimizer_type", "adamw")
        if saved != s.optimizer_type:  # another optimizer's state cannot be loaded into this one
            raise UserError(f"{s.out_dir}/ckpt.pt was trained with optimizer_type={saved!r}; resume with "
                            f"--optimizer_type={saved}, or fine-tune from it with --init_from=<that path>")
        restore(run, ckpt)
    if s.hellaswag_interval and not s.eval_only:  # read now: a bad file fails before any training
        run.hellaswag_rows = evaluate.load_hellaswag(s.hellaswag_file, s.hellaswag_limit)
    return run


def fit_to_memory(s, d, device, dtype, autocast, model, ckpt=None):
    """batch_size='auto': find the micro-batch (see gpu.find_batch_size) and the accumulation
    that keep tokens_per_iter; a resumed run keeps what it chose (the same micro-batches and
    dropout draws: the resume stays exact). On CUDA, print the memory estimate."""
    saved = (ckpt or {}).get("train_config") or {}
    if (s.batch_size == "auto" and isinstance(saved.get("batch_size"), int)
            and (saved.get("tokens_per_iter"), saved.get("block_size")) == (s.tokens_per_iter, s.block_size)
            and ckpt.get("sampler", {}).get("world_size") == d.world):
        s.batch_size, s.gradient_accumulation_steps = saved["batch_size"], saved["gradient_accumulation_steps"]
        s.gradient_checkpointing = model.config.gradient_checkpointing = saved["gradient_checkpointing"]
        print0(d, f"batch_size='auto': resuming with the run's batch_size {s.batch_size} x gradient_accumulation_steps "
                  f"{s.gradient_accumulation_steps}" + (", with gradient checkpointing" if s.gradient_checkpointing else ""))
    if s.batch_size == "auto":
        sequences = s.tokens_per_iter // s.block_size // d.world  # per process and iteration
        batch, checkpointing = gpu.auto_batch(model, s.block_size, sequences, dtype, device, autocast,
                                                  s.gradient_checkpointing, log=lambda line: print0(d, line))
        s.batch_size, s.gradient_accumulation_steps = batch, sequences // batch * d.world
        s.gradient_checkpointing = checkpointing  # the record tells what really trained
        print0(d, f"batch_size='auto': batch_size {batch} x gradient_accumulation_steps "
                  f"{s.gradient_accumulation_steps} x block_size {s.block_size} = {s.tokens_per_iter:,} tokens per "
                  "iteration" + (", with gradient checkpointing" if checkpointing else ""))
    if device.startswith("cuda"):
        for line in gpu.startup_memory_report(model, s.block_size, s.batch_size, dtype, device):
            print0(d, line)


def restore(run, ckpt):
    """Resume: optimizer, loss scale, counters and every random stream as they were saved."""
    s, d = run.s, run.d
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if run.scaler.is_enabled() and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    run.state = RunState(ckpt["iter_num"], float(ckpt.get("best_val_loss", float("inf"))),
                         int(ckpt.get("tokens", ckpt["iter_num"] * run.tokens_per_iter)),
                         int(ckpt.get("last_eval_iter", -1)), ckpt.get("wandb_run_id"),
                         int(ckpt.get("last_hellaswag_iter", -1)))
    # one snapshot per process: rank_states under torchrun; a plain run saves its own as rng + sampler
    snaps = ckpt.get("rank_states") or ([{**ckpt["rng"], "sampler": ckpt["sampler"]["generator"]}]
                                        if "rng" in ckpt else [])
    if len(snaps) == d.world:  # plain <-> torchrun with one process is the same single stream
        restore_rng(snaps[d.rank], run.sampler)
    else:
        why = (f"was written by {len(snaps)} process(es), this run has {d.world}" if snaps
               else "holds no random-number state")
        print0(d, f"warning: {s.out_dir}/ckpt.pt {why}: batches and dropout will not continue exactly")
        run.sampler.manual_seed(sampler_seed(s.seed, d.rank) + run.state.iter_num)
    print0(d, f"resuming from {os.path.join(s.out_dir, 'ckpt.pt')} at iter {run.state.iter_num:,}")


def print_figures(run):
    s, d, cfg = run.s, run.d, run.raw_model.config
    kind = ["oscillating MLP" if cfg.use_bio_mlp else "GELU MLP", "RMSNorm" if cfg.use_rmsnorm else "LayerNorm",
            ("legacy RoPE (no positions)" if cfg.legacy_rope else "RoPE") if cfg.use_rope else "learned positions"]
    kind += [f"{cfg.sparse_gate_kind} sparse gate"] if cfg.use_sparse_gate else []
    print0(d, f"device {run.device}, dtype {run.dtype}, {d.world:,} process(es)")
    if run.peak_flops:
        print0(d, f"MFU against {run.peak_flops / 1e12:,.1f} TFLOP/s "
                  f"({gpu.resolve_peak_flops(s.peak_flops, run.device)[1]})")
    else:
        print0(d, f"note: {gpu.unknown_peak_hint(run.device)}")
    print0(d, f"model: {run.raw_model.get_num_params():,} parameters ({cfg.n_layer} layers, {cfg.n_head} heads, "
              f"{cfg.n_embd} wide; {', '.join(kind)})")
    print0(d, f"activation: {run.activation}; {'compiled' if run.compiled else 'eager'}")
    print0(d, f"tokens per iteration: {run.tokens_per_iter:,} = batch_size {s.batch_size:,} x gradient accumulation "
              f"{s.gradient_accumulation_steps:,} x block_size {s.block_size:,}")
    print0(d, f"gradient accumulation steps: {run.accum:,} per process x {d.world:,} process(es)")
    train, val = run.data.splits["train"].n_tokens, run.data.splits["val"].n_tokens
    print0(d, f"data: {run.data.folder}: train {train:,} tokens, val {val:,} tokens"
              + ("; loss on assistant tokens only (masks found)" if run.data.masked else ""))


# ---------------------------------------------------------------------------------------
# one training step, one evaluation, one log line

def train_step(run, lr, stop):
    """Forward/backward over the micro-batches, then one optimizer step unless the loss is
    not finite. Returns (mean loss over all processes, stop requested by any process)."""
    model, optimizer, scaler, data, d = run.train_model, run.optimizer, run.scaler, run.data, run.d
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=data.device)
    x, y = data.batch("train", run.sampler)
    for micro in range(run.accum):
        last = micro == run.accum - 1
        # DDP all-reduces gradients only after the last micro-batch
        with model.no_sync() if d.ddp and not last else nullcontext():
            with run.ctx:
                _, loss = model(x, y, return_logits=False)  # the loss a chunk at a time: no full logits
                loss = loss / run.accum  # the mean over micro-batches
            if not last:
                x, y = data.batch("train", run.sampler)  # drawn while the GPU still works on this one
            scaler.scale(loss).backward()
        loss_sum += loss.detach()
    # one small collective and one GPU sync per iteration: every process must agree whether
    # to step (NaN guard) and whether to stop (a signal may reach only some of them)
    packed = torch.zeros(2, device=data.device)
    packed[0] = loss_sum  # device to device
    packed[1].fill_(float(stop.requested))  # a kernel argument: torch.tensor(.., device=) would be a blocking copy
    all_reduce_mean(packed, d)
    loss_value, stop_votes = packed.tolist()  # syncs the GPU
    if not math.isfinite(loss_value):
        optimizer.zero_grad(set_to_none=True)  # no step on a poisoned gradient
        if scaler.is_enabled():  # back the fp16 loss scale off as an inf gradient would
            scaler.update(new_scale=scaler.get_scale() * scaler.get_backoff_factor())  # get_scale syncs the GPU
        return loss_value, stop_votes > 0
    if run.s.grad_clip > 0.0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), run.s.grad_clip)
    scaler.step(optimizer)  # fp16: reads the overflow flag (syncs the GPU) and skips the step on inf
    scaler.update()
    optimizer.zero_grad(set_to_none=True)  # frees the gradient memory right away
    return loss_value, stop_votes > 0


@torch.no_grad()
def estimate_loss(run):
    """Mean loss over eval_iters batches of each split, from generators of their own so the
    training streams are untouched (an eval never changes what training does next), and the
    bits per byte of the same batches as '{split}_bpb': their nats / ln 2 / target bytes."""
    from tqdm import tqdm
    s, d = run.s, run.d
    # a compiled run's first eval, before any training step, runs eager: compiling the no-grad
    # graph first would double the start-up before the first iteration
    model = run.model if run.steps_done or not run.compiled else run.raw_model
    model.eval()
    byte_table = evaluate.token_byte_table(run.raw_model.config.vocab_size, run.data.device)
    out = {}
    for split in SPLITS:
        generator = torch.Generator().manual_seed(eval_seed(s.seed, d.rank, split))
        losses = torch.zeros(s.eval_iters, device=run.data.device)
        sums = torch.zeros(2, device=run.data.device)  # nats, bytes
        for k in tqdm(range(s.eval_iters), desc=f"eval {split}", leave=False, disable=None if d.master else True):
            x, y = run.data.batch(split, generator)
            with run.ctx:
                _, loss = model(x, y, return_logits=False)
            losses[k] = loss
            sums[0] += loss.float() * (y >= 0).sum()  # the mean over the batch's targets, back to a sum
            sums[1] += evaluate.target_bytes(y, byte_table)
        out[split] = all_reduce_mean(losses.mean(), run.d).item()  # syncs the GPU
        nats, n_bytes = all_reduce_mean(sums, run.d).tolist()  # means of both: the same ratio as sums
        out[f"{split}_bpb"] = evaluate.bits_per_byte(nats, n_bytes)
    model.train()
    return out


def score_hellaswag(run):
    """HellaSwag acc and acc_norm, each process scoring its share of the rows; rank 0 logs them."""
    s, d, state = run.s, run.d, run.state
    mine = run.hellaswag_rows[d.rank::d.world]
    r = evaluate.score_hellaswag(run.raw_model, mine, run.data.device, run.ctx,  # raw: no recompiles per length
                                     show_progress=d.master)
    counts = all_reduce_mean(torch.tensor([r["correct"], r["correct_norm"], r["n"]], dtype=torch.float32,
                                          device=run.data.device), d)  # float32: MPS has no float64
    correct, correct_norm, n = (round(c * d.world) for c in counts.tolist())
    acc, acc_norm = correct / n, correct_norm / n
    state.last_hellaswag_iter = state.iter_num
    print0(d, f"step {state.iter_num}: hellaswag acc {acc:.4f}, acc_norm {acc_norm:.4f} ({n:,} examples)")
    if d.master:
        write_metrics(s.out_dir, {"kind": "hellaswag", "iter": state.iter_num, "acc": acc, "acc_norm": acc_norm,
                                  "n": n, "tokens": state.tokens})
        if run.wandb is not None:
            run.wandb.log({"hellaswag/acc": acc, "hellaswag/acc_norm": acc_norm}, step=state.iter_num)


def save_latest(run, best):
    """ckpt.pt from rank 0 (every rank joins the RNG gather); returns its path on rank 0."""
    rngs = gather_rng(run.sampler, run.d)
    if run.d.master:
        return save_run(run.s.out_dir, run.raw_model, run.optimizer, run.scaler, run.s, run.state, rngs, run.d, best)
    return None


def eval_and_save(run, lr, at_end):
    """Estimate the losses, log them, and save ckpt.pt (+ ckpt_best.pt when val improved).
    Returns (val loss, checkpoint path or None)."""
    s, d, state = run.s, run.d, run.state
    losses = estimate_loss(run)
    state.last_eval_iter = state.iter_num
    firing = run.raw_model.firing_share()  # since the last log line, mostly the eval batches; syncs the GPU
    print0(d, f"step {state.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
              + (f", firing {firing * 100:.1f}%" if firing is not None else ""))
    if d.master:
        write_metrics(s.out_dir, {"kind": "eval", "iter": state.iter_num, "train_loss": losses["train"],
                                  "val_loss": losses["val"], "train_bpb": losses["train_bpb"],
                                  "val_bpb": losses["val_bpb"], "tokens": state.tokens, "lr": lr,
                                  "peak_mem_mb": peak_memory_mb(run.device)})
        if run.wandb is not None:
            run.wandb.log({"iter": state.iter_num, "train/loss": losses["train"], "val/loss": losses["val"],
                           "train/bpb": losses["train_bpb"], "val/bpb": losses["val_bpb"],
                           "lr": lr, "tokens": state.tokens}, step=state.iter_num)
    if not (math.isfinite(losses["train"]) and math.isfinite(losses["val"])):
        print0(d, f"warning: non-finite eval loss at iter {state.iter_num}: checkpoint not saved")
        return losses["val"], None
    improved = losses["val"] < state.best_val_loss
    if improved:
        state.best_val_loss = losses["val"]
    if not (s.always_save_checkpoint or improved or at_end):
        return losses["val"], None
    path = save_latest(run, improved)
    print0(d, f"saved {path}" + (" (and ckpt_best.pt)" if improved else ""))
    return losses["val"], path


def log_iteration(run, it, loss, lr, dt):
    """The iteration's log line, metrics record and wandb point."""
    s, d = run.s, run.d
    mfu = (run.raw_model.estimate_mfu(run.tokens_per_iter // d.world, dt, run.peak_flops, s.block_size)  # per device
           if run.peak_flops else None)  # unknown peak: no number rather than a wrong one
    firing = run.raw_model.firing_share()  # since the last log line; syncs the GPU
    print0(d, f"iter {it}: loss {loss:.4f}, time {dt * 1000:.2f} ms, mfu "
              + (f"{mfu * 100:.2f}%" if mfu is not None else "unknown")
              + (f", firing {firing * 100:.1f}%" if firing is not None else ""))
    if d.master:
        write_metrics(s.out_dir, {"kind": "train", "iter": it, "loss": loss, "lr": lr, "dt_ms": dt * 1000,
                                  "mfu": mfu, "tokens": run.state.tokens,
                                  "tokens_per_sec": run.tokens_per_iter / dt, "firing_share": firing})
        if run.wandb is not None:
            run.wandb.log({"train/iter_loss": loss, "lr": lr, "mfu": mfu,
                           "tokens_per_sec": run.tokens_per_iter / dt}, step=it)


# ---------------------------------------------------------------------------------------
# the whole run

def train(settings):
    """Train as the settings say (a dict or namespace; missing keys take SETTINGS defaults).

    Returns {'iter', 'best_val_loss', 'tokens', 'elapsed_s', 'out_dir', 'reason', 'last_val_loss',
    'checkpoint'} with reason 'max_iters', 'interrupted', 'nan' or 'eval_only'. Bad settings
    raise UserError.
    """
    s = as_settings(settings)
    check_settings(s)
    d, device = setup_distributed(s.device, s.backend)
    try:
        return _train(s, d, device)
    finally:
        if d.ddp:
            import torch.distributed as dist
            dist.destroy_process_group()


def _train(s, d, device):
    t_start = time.time()
    if (s.init_from != "resume" and not s.eval_only and not s.overwrite
            and os.path.exists(os.path.join(s.out_dir, "ckpt.pt"))):
        # days of training may sit in that file: never replace it by accident
        raise UserError(f"{s.out_dir} already holds a ckpt.pt; continue it with --init_from=resume, "
                        "choose another --out_dir, or start over with --overwrite=True")
    run = setup_run(s, d, device)
    state = run.state
    print_figures(run)

    if s.eval_only:  # a look at the losses; the run's files stay as they are
        losses = estimate_loss(run)
        print0(d, f"step {state.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        return dict(iter=state.iter_num, best_val_loss=state.best_val_loss, tokens=state.tokens,
                    elapsed_s=time.time() - t_start, out_dir=s.out_dir, reason="eval_only",
                    last_val_loss=losses["val"], checkpoint=None)

    if d.master:
        os.makedirs(s.out_dir, exist_ok=True)
        write_metrics(s.out_dir, {"kind": "start", "iter": state.iter_num, "params": run.raw_model.get_num_params(),
                                  "tokens_per_iter": run.tokens_per_iter, "config": dict(vars(s)),
                                  "time": time.time(), "device": device, "dtype": run.dtype, "world_size": d.world})
        if s.wandb_log:
            run.wandb = start_wandb(s, state.wandb_run_id)
            state.wandb_run_id = run.wandb.id

    profiling = start_memory_profile(s, d, device)
    reason, nan_streak, last_val, last_good = "max_iters", 0, float("nan"), None
    with StopSignals() as stop:
        while True:
            lr = learning_rate_at(state.iter_num, s)
            at_end = state.iter_num >= s.max_iters
            # score HellaSwag, then evaluate (and save, so the checkpoint knows HellaSwag was
            # scored here), every interval and at the end; never twice for one state
            if (s.hellaswag_interval and (state.iter_num % s.hellaswag_interval == 0 or at_end)
                    and state.last_hellaswag_iter != state.iter_num):
                score_hellaswag(run)
            if (state.iter_num % s.eval_interval == 0 or at_end) and state.last_eval_iter != state.iter_num:
                last_val, path = eval_and_save(run, lr, at_end)
                last_good = path or last_good
            if at_end:
                break

            t0 = time.perf_counter()
            loss, stop_now = train_step(run, lr, stop)
            dt = max(time.perf_counter() - t0, 1e-9)  # honest: train_step ended with a GPU sync
            run.steps_done += 1
            if run.compiled and run.steps_done == 1:
                print0(d, f"torch.compile: the first iteration took {dt:,.1f} s (compiling the training step)")
            it = state.iter_num  # the iteration just done
            state.iter_num += 1
            state.tokens += run.tokens_per_iter
            if math.isfinite(loss):
                nan_streak = 0
                if it % s.log_interval == 0:
                    log_iteration(run, it, loss, lr, dt)
            else:
                nan_streak += 1
                print0(d, f"iter {it}: loss is {loss}: update skipped ({nan_streak}/{s.max_nan_skips} in a row)")
                if nan_streak >= s.max_nan_skips:
                    reason = "nan"  # and no checkpoint: the last one saved is the last good one
                    break
            if stop_now:
                reason = "interrupted"
                if nan_streak == 0:  # between iterations: this state resumes exactly
                    last_good = save_latest(run, False)
                else:
                    print0(d, "not saving: the last losses were not finite; the last checkpoint stays")
                break

    if profiling:
        path = os.path.join(s.out_dir, "memory_snapshot.pickle")
        torch.cuda.memory._dump_snapshot(path)
        torch.cuda.memory._record_memory_history(enabled=None)
        print0(d, f"memory snapshot: {path} (drag it onto https://pytorch.org/memory_viz)")
    elapsed = time.time() - t_start
    if d.master:
        write_metrics(s.out_dir, {"kind": "end", "iter": state.iter_num, "best_val_loss": state.best_val_loss,
                                  "tokens": state.tokens, "elapsed_s": elapsed, "reason": reason})
        if run.wandb is not None:
            run.wandb.finish()
    return dict(iter=state.iter_num, best_val_loss=state.best_val_loss, tokens=state.tokens, elapsed_s=elapsed,
                out_dir=s.out_dir, reason=reason, last_val_loss=last_val, checkpoint=last_good)


def main(argv=None):
    settings = load_settings(SETTINGS, argv, description=__doc__.strip().splitlines()[0], hints=ORIGINAL_ONLY)
    summary = train(settings)
    master = int(os.environ.get("RANK", "0")) == 0
    ckpt = os.path.join(summary["out_dir"], "ckpt.pt")
    if summary["reason"] == "nan":
        if master:
            print(f"error: stopped at iter {summary['iter']:,} after {settings.max_nan_skips} non-finite losses in a "
                  f"row; {ckpt} was left as it was (lower learning_rate, or check the data)", file=sys.stderr)
        sys.exit(EXIT_NAN)
    if master and summary["reason"] == "interrupted":
        print(f"stopped at iter {summary['iter']:,}; latest checkpoint {summary['checkpoint'] or ckpt}; "
              "continue with --init_from=resume", flush=True)
    elif master and summary["reason"] == "max_iters":
        print(f"done: {summary['iter']:,} iterations, {summary['tokens']:,} tokens in {summary['elapsed_s']:,.1f} s; "
              f"best val loss {summary['best_val_loss']:.4f}", flush=True)


if __name__ == "__main__":
    run_main(main)
