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

import checkpoint_bio
import settings_bio
from model_bio import GPT, GPTConfig
from settings_bio import UserError, load_settings, run_main

# ---------------------------------------------------------------------------------------
# settings: defaults here, then a config file, then --key=value

SETTINGS = {
    # I/O
    "out_dir": ("out", "folder for ckpt.pt (latest), ckpt_best.pt (best val loss) and metrics.jsonl"),
    "eval_interval": (2000, "estimate train/val loss and save ckpt.pt every this many iterations"),
    "log_interval": (1, "print and record a training line every this many iterations"),
    "eval_iters": (200, "batches per split in each loss estimate"),
    "eval_only": (False, "estimate the losses once and exit, writing nothing"),
    "always_save_checkpoint": (True, "save ckpt.pt at every eval; False: only when val loss improves, and at the end"),
    "init_from": ("scratch", "'scratch', 'resume' (from out_dir/ckpt.pt) or a checkpoint path to fine-tune from"),
    "overwrite": (False, "let a new run replace the checkpoint already in out_dir (otherwise that is an error)"),
    # data
    "data_root": ("data", "folder that holds the dataset folders"),
    "dataset": ("openwebtext", "dataset folder under data_root with train.bin and val.bin (+ *_mask.bin for SFT)"),
    "gradient_accumulation_steps": (40, "micro-batches per optimizer step, summed over all processes"),
    "batch_size": (12, "sequences per micro-batch and process"),
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
    "gradient_checkpointing": (False, "recompute blocks in backward: much less memory, ~30% slower"),
    "use_sparse_gate": (False, "soft spike gate in the MLP (logs the share of units that fire)"),
    "sparse_gate_kind": ("lightweight", "'lightweight' (weight + bias per hidden unit) or 'event_layer' (v2: two 4C x 4C matrices)"),
    "bio_threshold": (0.25, "firing threshold of the sparse gate"),
    "vocab_size": (50304, "vocabulary size (GPT-2's 50257 padded to a multiple of 64)"),
    # optimizer
    "learning_rate": (6e-4, "peak learning rate"),
    "max_iters": (600000, "optimizer steps to train for"),
    "weight_decay": (0.1, "AdamW weight decay on matrices and embeddings"),
    "betas": ((0.9, 0.95), "AdamW betas (beta1, beta2)"),
    "grad_clip": (1.0, "clip the gradient norm to this; 0.0 turns clipping off"),
    # learning-rate schedule
    "lr_schedule": ("cosine", "'cosine' (warmup + cosine decay), 'wsd' (warmup-stable-decay) or 'constant'"),
    "warmup_iters": (2000, "iterations of linear warmup from 0 to learning_rate"),
    "lr_decay_iters": (600000, "iteration where the decay reaches min_lr (usually = max_iters)"),
    "wsd_decay_frac": (0.1, "wsd only: share of the post-warmup iterations spent decaying"),
    "min_lr": (6e-5, "learning rate at the end of the decay (usually learning_rate / 10)"),
    # system
    "device": ("auto", "'auto' (cuda > mps > cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    "dtype": ("auto", "'auto' (bf16 if the GPU has it, else fp16; fp32 on CPU), 'float32', 'bfloat16', 'float16'"),
    "compile": (False, "torch.compile the model (faster on recent GPUs, slow first iterations)"),
    "seed": (1337, "random seed; each process adds its rank"),
    "peak_flops": (312e12, "the device's peak FLOP/s for the MFU figure (312e12: A100 bf16)"),
    "max_nan_skips": (5, "stop after this many non-finite losses in a row (each skips its update)"),
    # logging
    "wandb_log": (False, "log to Weights & Biases (WANDB_MODE=offline works without network)"),
    "wandb_project": ("wigglegpt", "wandb project name"),
    "wandb_run_name": ("", "wandb run name ('' lets wandb pick one)"),
}

MODEL_FIELDS = [f.name for f in fields(GPTConfig)]
# fields a checkpoint fixes: its weights were trained with them
ARCH_FIELDS = [f for f in MODEL_FIELDS if f not in ("block_size", "dropout", "gradient_checkpointing")]
SCHEDULES = ("cosine", "wsd", "constant")
SPLITS = ("train", "val")
EXIT_NAN = 3


def as_settings(settings):
    """A dict or namespace of settings (missing ones take their defaults), type-checked like
    the command line; returns a fresh SimpleNamespace so the caller's object is never changed."""
    given = dict(settings) if isinstance(settings, dict) else dict(vars(settings))
    values = settings_bio.apply_settings(SETTINGS, settings_bio.default_values(SETTINGS), given, "in the settings")
    return types.SimpleNamespace(**values)


def check_settings(s):
    """Impossible settings become one clear UserError before anything is built."""
    positive = ["eval_interval", "log_interval", "eval_iters", "gradient_accumulation_steps", "batch_size",
                "block_size", "max_nan_skips"]
    for key in positive:
        if getattr(s, key) <= 0:
            raise UserError(f"{key} must be positive, got {getattr(s, key)}")
    for key in ("max_iters", "warmup_iters", "lr_decay_iters", "learning_rate", "min_lr", "weight_decay", "grad_clip"):
        if getattr(s, key) < 0:
            raise UserError(f"{key} must not be negative, got {getattr(s, key)}")
    if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in s.betas):
        raise UserError(f"betas must be two numbers in [0, 1), got {s.betas!r}")
    s.betas = tuple(float(b) for b in s.betas)
    if s.lr_schedule not in SCHEDULES:
        raise UserError(f"lr_schedule={s.lr_schedule!r}; use one of {', '.join(SCHEDULES)}")
    if s.lr_schedule != "constant" and s.lr_decay_iters <= s.warmup_iters:
        raise UserError(f"lr_decay_iters={s.lr_decay_iters} must be larger than warmup_iters={s.warmup_iters}")
    if s.min_lr > s.learning_rate:
        raise UserError(f"min_lr={s.min_lr} is above learning_rate={s.learning_rate}")
    if not 0.0 < s.wsd_decay_frac <= 1.0:
        raise UserError(f"wsd_decay_frac must be in (0, 1], got {s.wsd_decay_frac}")
    if s.peak_flops <= 0:
        raise UserError(f"peak_flops must be positive, got {s.peak_flops}")
    if not s.out_dir:
        raise UserError("out_dir must not be empty")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if s.gradient_accumulation_steps % world:
        raise UserError(f"gradient_accumulation_steps={s.gradient_accumulation_steps} is not divisible by the "
                        f"{world} processes; use a multiple of {world}")
    model_config_from(s)  # n_embd % n_head, head size for RoPE, dropout range, ...


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


def setup_distributed(requested_device):
    """torchrun sets RANK/WORLD_SIZE: join the process group (nccl on CUDA, else gloo)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist(), settings_bio.pick_device(requested_device)
    import torch.distributed as dist
    d = Dist(True, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), int(os.environ["WORLD_SIZE"]))
    device = settings_bio.pick_device(requested_device)
    if device.startswith("cuda"):
        device = f"cuda:{d.local_rank}"  # one GPU per process
        torch.cuda.set_device(device)
    nccl = device.startswith("cuda") and dist.is_nccl_available()  # Windows builds have no nccl
    dist.init_process_group(backend="nccl" if nccl else "gloo")
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
        import dataprep_bio  # the offline demo corpus is built on first use (seconds)
        dataprep_bio.ensure_demo_data(folder)
    if d.ddp:
        import torch.distributed as dist
        dist.barrier()  # the others wait until rank 0 has the files
    if not os.path.isdir(folder):
        raise UserError(f"data folder not found: {folder} (prepare it with dataprep_bio.py, or set "
                        "--data_root / --dataset)")
    for split in SPLITS:
        if not os.path.isfile(os.path.join(folder, f"{split}.bin")):
            raise UserError(f"{os.path.join(folder, split + '.bin')} is missing; prepare the data with dataprep_bio.py")
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
    After lr_decay_iters: min_lr."""
    if it < s.warmup_iters:
        return s.learning_rate * (it + 1) / (s.warmup_iters + 1)
    if s.lr_schedule == "constant":
        return s.learning_rate
    if it >= s.lr_decay_iters:
        return s.min_lr
    if s.lr_schedule == "cosine":
        progress = (it - s.warmup_iters) / (s.lr_decay_iters - s.warmup_iters)
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
    overrides = dict(dropout=s.dropout, gradient_checkpointing=s.gradient_checkpointing)
    if s.init_from == "scratch":
        return GPT(model_config_from(s)).to(device), None
    if s.init_from == "resume":
        path = os.path.join(s.out_dir, "ckpt.pt")
        if not os.path.exists(path):
            raise UserError(f"init_from='resume' but {path} does not exist; start with --init_from=scratch "
                            "or point --out_dir at the run to continue")
        model, ckpt = checkpoint_bio.load_model(path, device, **overrides)
        checked_against(s, model.config, path, d)
        for key in ("optimizer", "iter_num"):
            if key not in ckpt:
                raise UserError(f"{path} has no {key!r}: it cannot be resumed; fine-tune from it with --init_from={path}")
        return model, ckpt
    path = s.init_from  # fine-tune: the weights only; a fresh optimizer at iteration 0
    if not os.path.exists(path):
        raise UserError(f"init_from={path!r}: no such checkpoint; use 'scratch', 'resume' or the path of a "
                        "checkpoint file (e.g. a run's ckpt.pt or the published ckpt_pretrain.pt)")
    model, ckpt = checkpoint_bio.load_model(path, device, **overrides)
    checked_against(s, model.config, path, d)
    print0(d, f"fine-tuning from {path}" + (" (original WiggleGPT format: legacy_rope on)"
                                          if checkpoint_bio.is_original_format(ckpt) else ""))
    del ckpt
    return model, None


# ---------------------------------------------------------------------------------------
# metrics.jsonl, wandb, checkpoints

def write_metrics(out_dir, record):
    """Append one JSON object per line to out_dir/metrics.jsonl (rank 0 only). Kinds:
    start {iter, params, tokens_per_iter, config, time}; train {iter, loss, lr, dt_ms, mfu,
    tokens, tokens_per_sec, firing_share}; eval {iter, train_loss, val_loss, tokens, lr,
    peak_mem_mb}; end {iter, best_val_loss, tokens, elapsed_s, reason}."""
    with open(os.path.join(out_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


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
    ckpt = checkpoint_bio.checkpoint_dict(
        raw_model, optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), train_config=dict(vars(s)),
        iter_num=state.iter_num, best_val_loss=float(state.best_val_loss), tokens=state.tokens,
        last_eval_iter=state.last_eval_iter, rng={k: v for k, v in rngs[0].items() if k != "sampler"},
        sampler={"generator": rngs[0]["sampler"], "world_size": d.world},
        rank_states=rngs if d.ddp else None, wandb_run_id=state.wandb_run_id)
    path = os.path.join(path_dir, "ckpt.pt")
    checkpoint_bio.save_checkpoint(ckpt, path)
    if best:
        keep_as_best(ckpt, path, os.path.join(path_dir, "ckpt_best.pt"))
    return path


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
        checkpoint_bio.save_checkpoint(ckpt, best)


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


@dataclass
class Run:
    """Everything one training process works with."""
    s: types.SimpleNamespace
    d: Dist
    device: str
    dtype: str
    ctx: object  # autocast (or nothing on the CPU)
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
    wandb: object = None


def setup_run(s, d, device):
    """Precision, seeds, model (scratch, resumed or fine-tuned), data and optimizer."""
    device_type = device.split(":")[0]
    dtype = settings_bio.pick_dtype(s.dtype, device)
    if device_type == "cpu" and dtype != "float32":
        print0(d, f"note: dtype {dtype} asked for; the CPU computes in float32")
        dtype = "float32"
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls on Ampere+: fp32 range, much faster
        torch.backends.cudnn.allow_tf32 = True

    # seeds: each process its own, so ranks draw different batches
    random.seed(s.seed + d.rank)
    np.random.seed(s.seed + d.rank)
    torch.manual_seed(s.seed + d.rank)
    sampler = torch.Generator().manual_seed(sampler_seed(s.seed, d.rank))

    raw_model, ckpt = build_model(s, device, d)  # before the data: a checkpoint brings its own vocab_size
    data = open_data(s, d, device)
    optimizer = raw_model.configure_optimizers(s.weight_decay, s.learning_rate, s.betas, device_type)
    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))  # fp16 needs loss scaling, bf16 not
    model = torch.compile(raw_model) if s.compile else raw_model  # checkpoints save raw_model
    train_model = model
    if d.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        train_model = DDP(model, device_ids=[d.local_rank] if device_type == "cuda" else None)
    run = Run(s, d, device, dtype, settings_bio.autocast_for(device, dtype), raw_model, model, train_model,
              optimizer, scaler, data, sampler, RunState(),
              s.gradient_accumulation_steps * s.batch_size * s.block_size, s.gradient_accumulation_steps // d.world)
    if ckpt is not None:
        restore(run, ckpt)
    return run


def restore(run, ckpt):
    """Resume: optimizer, loss scale, counters and every random stream as they were saved."""
    s, d = run.s, run.d
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if run.scaler.is_enabled() and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    run.state = RunState(ckpt["iter_num"], float(ckpt.get("best_val_loss", float("inf"))),
                         int(ckpt.get("tokens", ckpt["iter_num"] * run.tokens_per_iter)),
                         int(ckpt.get("last_eval_iter", -1)), ckpt.get("wandb_run_id"))
    saved_world = ckpt.get("sampler", {}).get("world_size", 1)
    if "rng" in ckpt and saved_world == d.world:
        snap = ckpt["rank_states"][d.rank] if d.ddp else {**ckpt["rng"], "sampler": ckpt["sampler"]["generator"]}
        restore_rng(snap, run.sampler)
    else:
        why = (f"was written by {saved_world} process(es), this run has {d.world}" if "rng" in ckpt
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
    print0(d, f"model: {run.raw_model.get_num_params():,} parameters ({cfg.n_layer} layers, {cfg.n_head} heads, "
              f"{cfg.n_embd} wide; {', '.join(kind)})")
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
                _, loss = model(x, y)
                loss = loss / run.accum  # the mean over micro-batches
            if not last:
                x, y = data.batch("train", run.sampler)  # drawn while the GPU still works on this one
            scaler.scale(loss).backward()
        loss_sum += loss.detach()
    # one small collective and one GPU sync per iteration: every process must agree whether
    # to step (NaN guard) and whether to stop (a signal may reach only some of them)
    packed = torch.stack([loss_sum.float(), torch.tensor(float(stop.requested), device=data.device)])
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
def evaluate(run):
    """Mean loss over eval_iters batches of each split, from generators of their own so the
    training streams are untouched (an eval never changes what training does next)."""
    from tqdm import tqdm
    s, d = run.s, run.d
    run.model.eval()
    out = {}
    for split in SPLITS:
        generator = torch.Generator().manual_seed(eval_seed(s.seed, d.rank, split))
        losses = torch.zeros(s.eval_iters, device=run.data.device)
        for k in tqdm(range(s.eval_iters), desc=f"eval {split}", leave=False, disable=None if d.master else True):
            x, y = run.data.batch(split, generator)
            with run.ctx:
                _, loss = run.model(x, y)
            losses[k] = loss
        out[split] = all_reduce_mean(losses.mean(), run.d).item()  # syncs the GPU
    run.model.train()
    return out


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
    losses = evaluate(run)
    state.last_eval_iter = state.iter_num
    firing = run.raw_model.firing_share()  # since the last log line, mostly the eval batches; syncs the GPU
    print0(d, f"step {state.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
              + (f", firing {firing * 100:.1f}%" if firing is not None else ""))
    if d.master:
        write_metrics(s.out_dir, {"kind": "eval", "iter": state.iter_num, "train_loss": losses["train"],
                                  "val_loss": losses["val"], "tokens": state.tokens, "lr": lr,
                                  "peak_mem_mb": peak_memory_mb(run.device)})
        if run.wandb is not None:
            run.wandb.log({"iter": state.iter_num, "train/loss": losses["train"], "val/loss": losses["val"],
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
    mfu = run.raw_model.estimate_mfu(run.tokens_per_iter // d.world, dt, s.peak_flops)  # per device
    firing = run.raw_model.firing_share()  # since the last log line; syncs the GPU
    print0(d, f"iter {it}: loss {loss:.4f}, time {dt * 1000:.2f} ms, mfu {mfu * 100:.2f}%"
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
    d, device = setup_distributed(s.device)
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
        losses = evaluate(run)
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

    reason, nan_streak, last_val, last_good = "max_iters", 0, float("nan"), None
    with StopSignals() as stop:
        while True:
            lr = learning_rate_at(state.iter_num, s)
            at_end = state.iter_num >= s.max_iters
            # evaluate (and save) every eval_interval and at the end; not twice for one state
            if (state.iter_num % s.eval_interval == 0 or at_end) and state.last_eval_iter != state.iter_num:
                last_val, path = eval_and_save(run, lr, at_end)
                last_good = path or last_good
            if at_end:
                break

            t0 = time.perf_counter()
            loss, stop_now = train_step(run, lr, stop)
            dt = max(time.perf_counter() - t0, 1e-9)  # honest: train_step ended with a GPU sync
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

    elapsed = time.time() - t_start
    if d.master:
        write_metrics(s.out_dir, {"kind": "end", "iter": state.iter_num, "best_val_loss": state.best_val_loss,
                                  "tokens": state.tokens, "elapsed_s": elapsed, "reason": reason})
        if run.wandb is not None:
            run.wandb.finish()
    return dict(iter=state.iter_num, best_val_loss=state.best_val_loss, tokens=state.tokens, elapsed_s=elapsed,
                out_dir=s.out_dir, reason=reason, last_val_loss=last_val, checkpoint=last_good)


def main(argv=None):
    settings = load_settings(SETTINGS, argv, description=__doc__.strip().splitlines()[0])
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
