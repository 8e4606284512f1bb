"""
Train WiggleGPT (or its GELU baseline) on one GPU, the CPU, or many GPUs and nodes.

    python train_bio.py config/shakespeare_bio.py                  # a few minutes on a laptop CPU
    python train_bio.py config/gpt2_bio_3070.py --max_iters=1000   # 124M on an 8 GB GPU
    torchrun --standalone --nproc_per_node=4 train_bio.py config/gpt2_bio_3070.py
    python train_bio.py config/gpt2_bio_3070.py --init_from=resume  # carry on after a stop

Settings come from SETTINGS below, then a config file, then --key=value overrides (--help lists
them). The story: settings -> data -> model -> loop. out_dir/ckpt.pt is written atomically at
every eval and on the way out, and resuming from it continues the run exactly.
"""

import math
import os
import random
import sys
import time
import types
from contextlib import nullcontext
from dataclasses import dataclass, fields

import numpy as np
import torch
from tqdm import tqdm

from model_bio import GPT, GPTConfig
from wigglegpt import chardata, checkpoint, compat, evaluate, gpu, loader, metrics, optim
from wigglegpt.common import StopSignals, UserError, autocast_for, pick_dtype, run_main, write_error
from wigglegpt.compat import ORIGINAL_ONLY
from wigglegpt.data import SPLITS, Data, dataset_folder, eval_seed, sampler_seed
from wigglegpt.distributed import Dist, all_reduce_mean, data_parallel, print0, setup_distributed, shutdown
from wigglegpt.settings import Settings, apply_settings, default_values, load_settings

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
    "init_from": ("scratch", "'scratch', 'resume' (from out_dir/ckpt.pt), a checkpoint path or hf://OWNER/REPO[/FILE] "
                             "to fine-tune from, or GPT-2: gpt2, gpt2-medium, gpt2-large, gpt2-xl or a transformers "
                             "save_pretrained folder"),
    "revision": ("", loader.REVISION_MEANING),
    "overwrite": (False, "let a new run replace the checkpoint already in out_dir (otherwise that is an error)"),
    # data
    "data_root": ("data", "folder that holds the dataset folders"),
    "dataset": ("openwebtext", "dataset folder under data_root with train.bin and val.bin (+ *_mask.bin for SFT; "
                               "+ meta.pkl: nanoGPT's character-level data, vocab_size from it)"),
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
    "vocab_size": (50304, "vocabulary size (GPT-2's 50257 padded to a multiple of 64; character-level data: "
                          "meta.pkl's unless given, and then at least that)"),
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
    "freeze_layers": (0, "fine-tune only the top: freeze the token and position embeddings (the tied output layer "
                         "with them) and blocks 0 .. N-1, as the original's finetune_native.py (0: train everything)"),
    # learning-rate schedule
    "lr_schedule": ("cosine", "'cosine' (warmup + cosine decay), 'wsd' (warmup-stable-decay), 'wsd_cosine' (the "
                              "original's wsd: hold stable_iters, then cosine) or 'constant'"),
    "decay_lr": (True, "False: the learning rate is learning_rate throughout (no warmup, no decay), as the original"),
    "warmup_iters": (2000, "iterations of linear warmup from 0 to learning_rate"),
    "lr_decay_iters": (600000, "iteration where the decay reaches min_lr (usually = max_iters)"),
    "wsd_decay_frac": (0.1, "wsd only: share of the post-warmup iterations spent decaying"),
    "stable_iters": (0, "wsd_cosine: iterations held at learning_rate after warmup before the cosine decay; "
                        "lr_schedule='wsd' with stable_iters given means wsd_cosine (the original's meaning; "
                        "stable_iters=0 is then plain cosine, as there)"),
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
SCHEDULES = ("cosine", "wsd", "wsd_cosine", "constant")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
BACKENDS = ("auto", "nccl", "gloo")
EXIT_NAN = 3


def as_settings(settings):
    """A dict or namespace of settings (missing ones take their defaults), type-checked like
    the command line; returns a fresh SimpleNamespace so the caller's object is never changed."""
    given = dict(settings) if isinstance(settings, dict) else dict(vars(settings))
    values = apply_settings(SETTINGS, default_values(SETTINGS), given, "in the settings", hints=ORIGINAL_ONLY)
    # which settings were given at all (a dict's keys; what load_settings read from the config and command line)
    return Settings(values, explicit=getattr(settings, "explicit", given))


def check_settings(cfg):
    """Impossible settings become one clear UserError before anything is built; cfg is only read."""
    positive = ["eval_interval", "log_interval", "eval_iters", "gradient_accumulation_steps", "block_size",
                "max_nan_skips"] + ([] if cfg.batch_size == "auto" else ["batch_size"])
    for key in positive:
        if getattr(cfg, key) <= 0:
            raise UserError(f"{key} must be positive, got {getattr(cfg, key)}")
    for key in ("max_iters", "warmup_iters", "lr_decay_iters", "learning_rate", "min_lr", "weight_decay", "grad_clip",
                "hellaswag_interval", "hellaswag_limit", "tokens_per_iter", "peak_flops", "freeze_layers"):
        if getattr(cfg, key) < 0:
            raise UserError(f"{key} must not be negative, got {getattr(cfg, key)}")
    aliases = compat.resolved_aliases(cfg)  # checks beta1, beta2 and betas too
    if cfg.lr_schedule not in SCHEDULES:
        raise UserError(f"lr_schedule={cfg.lr_schedule!r}; use one of {', '.join(SCHEDULES)}")
    if not isinstance(cfg.stable_iters, int) or cfg.stable_iters < 0:
        raise UserError(f"stable_iters must be a whole number >= 0, got {cfg.stable_iters!r}")
    schedule = aliases.get("lr_schedule", cfg.lr_schedule)
    held = cfg.warmup_iters + (cfg.stable_iters if schedule == "wsd_cosine" else 0)
    if cfg.decay_lr and schedule != "constant" and cfg.lr_decay_iters <= held:
        extra = f" + stable_iters={cfg.stable_iters}" if held != cfg.warmup_iters else ""
        raise UserError(f"lr_decay_iters={cfg.lr_decay_iters} must be larger than warmup_iters={cfg.warmup_iters}{extra}")
    if cfg.optimizer_type not in optim.OPTIMIZERS:
        raise UserError(f"optimizer_type={cfg.optimizer_type!r}; use one of {', '.join(optim.OPTIMIZERS)}")
    if cfg.compile not in ("auto", True, False):
        raise UserError(f"compile={cfg.compile!r}; use 'auto', True or False")
    if cfg.compile_mode not in COMPILE_MODES:
        raise UserError(f"compile_mode={cfg.compile_mode!r}; use one of {', '.join(COMPILE_MODES)}")
    if cfg.backend not in BACKENDS:
        raise UserError(f"backend={cfg.backend!r}; use one of {', '.join(BACKENDS)}")
    if cfg.min_lr > cfg.learning_rate:
        raise UserError(f"min_lr={cfg.min_lr} is above learning_rate={cfg.learning_rate}")
    if not 0.0 < cfg.wsd_decay_frac <= 1.0:
        raise UserError(f"wsd_decay_frac must be in (0, 1], got {cfg.wsd_decay_frac}")
    if not cfg.out_dir:
        raise UserError("out_dir must not be empty")
    if os.path.exists(cfg.out_dir) and not os.path.isdir(cfg.out_dir):
        raise UserError(f"out_dir={cfg.out_dir} is a file, not a folder; choose another --out_dir")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    gpu.check_token_budget(cfg.batch_size, cfg.gradient_accumulation_steps, cfg.tokens_per_iter, cfg.block_size,
                           world)
    if cfg.batch_size != "auto" and cfg.gradient_accumulation_steps % world:
        raise UserError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} is not divisible by the "
                        f"{world} processes; use a multiple of {world}")
    model_config_from(cfg)  # n_embd % n_head, head size for RoPE, dropout range, ...


def model_config_from(cfg):
    """The GPTConfig these settings describe (a fresh model's; checkpoints bring their own)."""
    try:
        return GPTConfig(**{name: getattr(cfg, name) for name in MODEL_FIELDS})
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None


# ---------------------------------------------------------------------------------------
# learning-rate schedules: functions of the iteration alone, so a resumed run matches

def learning_rate_at(it, cfg):
    """Linear warmup to learning_rate, then
    - cosine: cosine decay to min_lr at lr_decay_iters (Loshchilov & Hutter 2017, SGDR,
      without restarts): lr = min_lr + 0.5 * (1 + cos(pi * progress)) * (learning_rate - min_lr)
    - wsd: hold learning_rate, then decay linearly to min_lr over the last wsd_decay_frac of
      the post-warmup iterations (warmup-stable-decay, Hu et al. 2024, MiniCPM)
    - constant: hold learning_rate.
    - wsd_cosine: hold learning_rate for stable_iters after warmup, then cosine decay to min_lr
      at lr_decay_iters (the original WiggleGPT's 'wsd')
    After lr_decay_iters: min_lr. decay_lr=False: learning_rate throughout (the original's switch)."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    if it >= cfg.lr_decay_iters:
        return cfg.min_lr
    if cfg.lr_schedule in ("cosine", "wsd_cosine"):
        hold = cfg.warmup_iters + (cfg.stable_iters if cfg.lr_schedule == "wsd_cosine" else 0)
        if it < hold:
            return cfg.learning_rate
        progress = (it - hold) / (cfg.lr_decay_iters - hold)
        return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)
    decay_iters = max(1, round(cfg.wsd_decay_frac * (cfg.lr_decay_iters - cfg.warmup_iters)))
    decay_start = cfg.lr_decay_iters - decay_iters
    if it < decay_start:
        return cfg.learning_rate
    return cfg.learning_rate + (cfg.min_lr - cfg.learning_rate) * (it - decay_start) / decay_iters


# ---------------------------------------------------------------------------------------
# setting up one process's run: the model (scratch, resumed or fine-tuned), data, optimizer

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
    given: types.SimpleNamespace  # the settings as the user gave them: what metrics.jsonl logs
    derived: dict  # what the run worked out from them (aliases, the checkpoint's architecture, batch_size='auto')
    cfg: types.SimpleNamespace  # given with derived in place: what the run uses and checkpoints keep
    dist: Dist
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
    tokens_per_iter: int  # over all processes
    accum: int  # micro-batches per process
    peak_flops: float  # the device's, for MFU; None when unknown
    state: RunState = None
    compiled: bool = False  # model is torch.compile's
    activation: str = ""  # how the oscillating activation runs, for the start-up log
    report: metrics.Reporter = None  # metrics.jsonl and wandb, from rank 0
    hellaswag_rows: list = None  # loaded once when hellaswag_interval > 0
    steps_done: int = 0  # by this process: the first compiled one includes the compilation
    trainable: int = 0  # parameters the optimizer updates (fewer than all with freeze_layers)
    vocab: chardata.CharVocab = None  # character-level data: meta.pkl's characters (checkpoints keep them)


def setup_run(given, dist, device):
    """Precision, seeds, model, the settings the run derives, data and optimizer."""
    device_type = device.split(":")[0]
    dtype = pick_dtype(given.dtype, device)  # bf16/fp16 on the CPU too, through CPU autocast
    autocast = autocast_for(device, dtype)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls on Ampere+: fp32 range, much faster
        torch.backends.cudnn.allow_tf32 = True

    # seeds: each process its own, so ranks draw different batches
    random.seed(given.seed + dist.rank)
    np.random.seed(given.seed + dist.rank)
    torch.manual_seed(given.seed + dist.rank)
    sampler = torch.Generator().manual_seed(sampler_seed(given.seed, dist.rank))

    derived = compat.resolved_aliases(given)
    original, notes = compat.original_architecture(given, given.explicit)
    for note in notes:
        print0(dist, f"note: {note}")
    derived.update(original)
    folder = dataset_folder(given.data_root, given.dataset, dist)  # a demo corpus is built on first use
    vocab = chardata.folder_vocab(folder)  # meta.pkl: character ids, not GPT-2 tokens
    if given.init_from == "scratch":  # a checkpoint brings its own vocab_size
        derived.update(chardata.derived_vocab_size(vocab, given.vocab_size, given.explicit, folder))
    if vocab is not None and given.hellaswag_interval:
        raise UserError(f"hellaswag_interval needs GPT-2 BPE, but {folder} is character-level data; leave it at 0")
    wanted = types.SimpleNamespace(**{**vars(given), **derived})
    if given.init_from == "scratch":
        raw_model, ckpt = GPT(model_config_from(wanted)).to(device), None
    else:  # resume, or fine-tune from a checkpoint or GPT-2: the checkpoint's architecture wins
        raw_model, ckpt, arch = loader.load_for_training(wanted, default_values(SETTINGS), device, vocab, folder,
                                                         say=lambda line: print0(dist, line))
        derived.update(arch)
    saved = (ckpt.get("train_config") or {}, ckpt.get("sampler", {}).get("world_size")) if ckpt else None
    derived.update(gpu.plan_batch(raw_model, given.batch_size, given.gradient_accumulation_steps, given.tokens_per_iter,
                                  given.block_size, given.gradient_checkpointing, dtype, device, autocast, dist, saved))
    cfg = types.SimpleNamespace(**{**vars(given), **derived})  # the settings the run uses, computed once

    data = Data(folder, cfg.batch_size, cfg.block_size, cfg.vocab_size, device, vocab)
    trainable = optim.freeze_layers(raw_model, cfg.freeze_layers)[0]  # before the optimizer and DDP see the model
    optimizer = optim.make_optimizer(raw_model, cfg.optimizer_type, cfg.weight_decay, cfg.learning_rate, cfg.betas,
                                     device_type)
    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))  # fp16 needs loss scaling, bf16 not
    compiled, note = gpu.compile_choice(cfg.compile, device)
    if note:
        print0(dist, note)
    model = torch.compile(raw_model, mode=cfg.compile_mode) if compiled else raw_model  # checkpoints save raw_model
    run = Run(given=given, derived=derived, cfg=cfg, dist=dist, device=device, dtype=dtype, ctx=autocast,
              raw_model=raw_model, model=model,
              train_model=data_parallel(model, dist, device_type) if dist.ddp else model,
              optimizer=optimizer, scaler=scaler, data=data, sampler=sampler, state=RunState(),
              tokens_per_iter=cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size,
              accum=cfg.gradient_accumulation_steps // dist.world,
              peak_flops=gpu.resolve_peak_flops(cfg.peak_flops, device)[0], compiled=compiled,
              activation=gpu.activation_choice(raw_model.config, device_type),
              report=metrics.Reporter(cfg.out_dir, dist.master), trainable=trainable, vocab=vocab)
    if ckpt is not None:
        restore(run, ckpt)
    if cfg.hellaswag_interval and not cfg.eval_only:  # read now: a bad file fails before any training
        run.hellaswag_rows = evaluate.load_hellaswag(cfg.hellaswag_file, cfg.hellaswag_limit)
    return run


def restore(run, ckpt):
    """Resume: optimizer, loss scale, counters and every random stream as they were saved."""
    counters = checkpoint.restore_training(ckpt, vars(run.cfg), run.optimizer, run.scaler, run.sampler, run.dist,
                                           sampler_seed(run.cfg.seed, run.dist.rank), run.tokens_per_iter,
                                           os.path.join(run.cfg.out_dir, "ckpt.pt"))
    run.state = RunState(**counters)


# ---------------------------------------------------------------------------------------
# one training step, one evaluation, one log line

def train_step(run, lr, stop):
    """Forward/backward over the micro-batches, then one optimizer step unless the loss is
    not finite. Returns (mean loss over all processes, stop requested by any process)."""
    model, optimizer, scaler, data, dist = run.train_model, run.optimizer, run.scaler, run.data, run.dist
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=data.device)
    x, y = data.batch("train", run.sampler)
    for micro in range(run.accum):
        last = micro == run.accum - 1
        # DDP all-reduces gradients only after the last micro-batch
        with model.no_sync() if dist.ddp and not last else nullcontext():
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
    all_reduce_mean(packed, dist)
    loss_value, stop_votes = packed.tolist()  # syncs the GPU
    if not math.isfinite(loss_value):
        optimizer.zero_grad(set_to_none=True)  # no step on a poisoned gradient
        if scaler.is_enabled():  # back the fp16 loss scale off as an inf gradient would
            scaler.update(new_scale=scaler.get_scale() * scaler.get_backoff_factor())  # get_scale syncs the GPU
        return loss_value, stop_votes > 0
    if run.cfg.grad_clip > 0.0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), run.cfg.grad_clip)
    scaler.step(optimizer)  # fp16: reads the overflow flag (syncs the GPU) and skips the step on inf
    scaler.update()
    optimizer.zero_grad(set_to_none=True)  # frees the gradient memory right away
    return loss_value, stop_votes > 0


def estimate_loss(run):
    """Mean loss over eval_iters batches of each split, from generators of their own so the
    training streams are untouched (an eval never changes what training does next), and the
    bits per byte of the same batches as '{split}_bpb': their nats / ln 2 / target bytes."""
    cfg, dist = run.cfg, run.dist
    # a compiled run's first eval, before any training step, runs eager: compiling the no-grad
    # graph first would double the start-up before the first iteration
    model = run.model if run.steps_done or not run.compiled else run.raw_model
    model.eval()
    byte_table = evaluate.token_byte_table(run.raw_model.config.vocab_size, run.data.device, run.vocab)
    out = {}
    for split in SPLITS:
        generator = torch.Generator().manual_seed(eval_seed(cfg.seed, dist.rank, split))
        batches = (run.data.batch(split, generator) for _ in range(cfg.eval_iters))
        with tqdm(total=cfg.eval_iters, desc=f"eval {split}", leave=False,
                           disable=None if dist.master else True) as progress:
            sums = evaluate.loss_sums(model, batches, byte_table, run.ctx, progress)
        mean_loss, nats, _, n_bytes = all_reduce_mean(sums, dist).tolist()  # means of all: the same ratios; syncs
        out[split] = mean_loss / cfg.eval_iters
        out[f"{split}_bpb"] = evaluate.bits_per_byte(nats, n_bytes)
    model.train()
    return out


def score_hellaswag(run):
    """HellaSwag acc and acc_norm, each process scoring its share of the rows; rank 0 logs them."""
    state = run.state
    acc, acc_norm, n = evaluate.score_hellaswag_shared(run.raw_model, run.hellaswag_rows, run.data.device, run.ctx,
                                                       run.dist)  # raw: no recompiles per length
    state.last_hellaswag_iter = state.iter_num
    print0(run.dist, f"step {state.iter_num}: hellaswag acc {acc:.4f}, acc_norm {acc_norm:.4f} ({n:,} examples)")
    run.report.record({"kind": "hellaswag", "iter": state.iter_num, "acc": acc, "acc_norm": acc_norm, "n": n,
                       "tokens": state.tokens},
                      wandb={"hellaswag/acc": acc, "hellaswag/acc_norm": acc_norm}, step=state.iter_num)


def save_latest(run, best):
    """ckpt.pt (and ckpt_best.pt when best) from rank 0, every rank joining the RNG gather;
    returns its path on rank 0."""
    rngs = checkpoint.gather_rng(run.sampler, run.dist)
    if not run.dist.master:
        return None
    ckpt = checkpoint.training_checkpoint(run.raw_model, run.optimizer, run.scaler, dict(vars(run.cfg)),
                                          vars(run.state), rngs, run.dist,
                                          tokenizer=run.vocab.as_checkpoint() if run.vocab is not None else None)
    return checkpoint.save_training(run.cfg.out_dir, ckpt, best)


def eval_and_save(run, lr, at_end):
    """Estimate the losses, log them, and save ckpt.pt (+ ckpt_best.pt when val improved).
    Returns (val loss, checkpoint path or None)."""
    cfg, dist, state = run.cfg, run.dist, run.state
    losses = estimate_loss(run)
    state.last_eval_iter = state.iter_num
    firing = run.raw_model.firing_share()  # since the last log line, mostly the eval batches; syncs the GPU
    print0(dist, f"step {state.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                 + (f", firing {firing * 100:.1f}%" if firing is not None else ""))
    run.report.record({"kind": "eval", "iter": state.iter_num, "train_loss": losses["train"], "val_loss": losses["val"],
                       "train_bpb": losses["train_bpb"], "val_bpb": losses["val_bpb"], "tokens": state.tokens,
                       "lr": lr, "peak_mem_mb": metrics.peak_memory_mb(run.device)},
                      wandb={"iter": state.iter_num, "train/loss": losses["train"], "val/loss": losses["val"],
                             "train/bpb": losses["train_bpb"], "val/bpb": losses["val_bpb"], "lr": lr,
                             "tokens": state.tokens}, step=state.iter_num)
    if not (math.isfinite(losses["train"]) and math.isfinite(losses["val"])):
        print0(dist, f"warning: non-finite eval loss at iter {state.iter_num}: checkpoint not saved")
        return losses["val"], None
    improved = losses["val"] < state.best_val_loss
    if improved:
        state.best_val_loss = losses["val"]
    if not (cfg.always_save_checkpoint or improved or at_end):
        return losses["val"], None
    path = save_latest(run, improved)
    print0(dist, f"saved {path}" + (" (and ckpt_best.pt)" if improved else ""))
    return losses["val"], path


def log_iteration(run, it, loss, lr, dt):
    """The iteration's log line, metrics record and wandb point."""
    cfg, dist = run.cfg, run.dist
    mfu = (run.raw_model.estimate_mfu(run.tokens_per_iter // dist.world, dt, run.peak_flops, cfg.block_size)  # per device
           if run.peak_flops else None)  # unknown peak: no number rather than a wrong one
    firing = run.raw_model.firing_share()  # since the last log line; syncs the GPU
    print0(dist, f"iter {it}: loss {loss:.4f}, time {dt * 1000:.2f} ms, mfu "
                 + (f"{mfu * 100:.2f}%" if mfu is not None else "unknown")
                 + (f", firing {firing * 100:.1f}%" if firing is not None else ""))
    run.report.record({"kind": "train", "iter": it, "loss": loss, "lr": lr, "dt_ms": dt * 1000, "mfu": mfu,
                       "tokens": run.state.tokens, "tokens_per_sec": run.tokens_per_iter / dt, "firing_share": firing},
                      wandb={"train/iter_loss": loss, "lr": lr, "mfu": mfu, "tokens_per_sec": run.tokens_per_iter / dt},
                      step=it)


# ---------------------------------------------------------------------------------------
# the whole run

def train(settings):
    """Train as the settings say (a dict or namespace; missing keys take SETTINGS defaults).

    Returns {'iter', 'best_val_loss', 'tokens', 'elapsed_s', 'out_dir', 'reason', 'last_val_loss',
    'checkpoint'} with reason 'max_iters', 'interrupted', 'nan' or 'eval_only'. Bad settings
    raise UserError.
    """
    given = as_settings(settings)
    check_settings(given)
    dist, device = setup_distributed(given.device, given.backend)
    try:
        return run_training(given, dist, device)
    finally:
        shutdown(dist)


def run_training(given, dist, device):
    t_start = time.time()
    if (given.init_from != "resume" and not given.eval_only and not given.overwrite
            and os.path.exists(os.path.join(given.out_dir, "ckpt.pt"))):
        # days of training may sit in that file: never replace it by accident
        raise UserError(f"{given.out_dir} already holds a ckpt.pt; continue it with --init_from=resume, "
                        "choose another --out_dir, or start over with --overwrite=True")
    run = setup_run(given, dist, device)
    cfg, state = run.cfg, run.state
    for line in metrics.startup_lines(run):
        print0(dist, line)

    if cfg.eval_only:  # a look at the losses; the run's files stay as they are
        losses = estimate_loss(run)
        print0(dist, f"step {state.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        return dict(iter=state.iter_num, best_val_loss=state.best_val_loss, tokens=state.tokens,
                    elapsed_s=time.time() - t_start, out_dir=cfg.out_dir, reason="eval_only",
                    last_val_loss=losses["val"], checkpoint=None)

    run.data.check_vocab()  # a dataset with ids past vocab_size fails before out_dir is written to
    if dist.master:
        try:
            os.makedirs(cfg.out_dir, exist_ok=True)
        except OSError as e:
            raise write_error(cfg.out_dir, e, "run again") from None
    run.report.record({"kind": "start", "iter": state.iter_num, "params": run.raw_model.get_num_params(),
                       "tokens_per_iter": run.tokens_per_iter, "config": dict(vars(given)), "derived": run.derived,
                       "time": time.time(), "device": device, "dtype": run.dtype, "world_size": dist.world})
    if cfg.wandb_log:
        state.wandb_run_id = run.report.start_wandb(cfg.wandb_project, cfg.wandb_run_name,
                                                    {**vars(given), "derived": run.derived}, state.wandb_run_id)

    profiling = gpu.start_memory_profile(cfg.profile_memory, dist, device)
    reason, nan_streak, last_val, last_good = "max_iters", 0, float("nan"), None
    with StopSignals() as stop:
        while True:
            lr = learning_rate_at(state.iter_num, cfg)
            at_end = state.iter_num >= cfg.max_iters
            # score HellaSwag, then evaluate (and save, so the checkpoint knows HellaSwag was
            # scored here), every interval and at the end; never twice for one state
            if (cfg.hellaswag_interval and (state.iter_num % cfg.hellaswag_interval == 0 or at_end)
                    and state.last_hellaswag_iter != state.iter_num):
                score_hellaswag(run)
            if (state.iter_num % cfg.eval_interval == 0 or at_end) and state.last_eval_iter != state.iter_num:
                last_val, path = eval_and_save(run, lr, at_end)
                last_good = path or last_good
            if at_end:
                break

            t0 = time.perf_counter()
            loss, stop_now = train_step(run, lr, stop)
            dt = max(time.perf_counter() - t0, 1e-9)  # honest: train_step ended with a GPU sync
            run.steps_done += 1
            if run.compiled and run.steps_done == 1:
                print0(dist, f"torch.compile: the first iteration took {dt:,.1f} s (compiling the training step)")
            it = state.iter_num  # the iteration just done
            state.iter_num += 1
            state.tokens += run.tokens_per_iter
            if math.isfinite(loss):
                nan_streak = 0
                if it % cfg.log_interval == 0:
                    log_iteration(run, it, loss, lr, dt)
            else:
                nan_streak += 1
                print0(dist, f"iter {it}: loss is {loss}: update skipped ({nan_streak}/{cfg.max_nan_skips} in a row)")
                if nan_streak >= cfg.max_nan_skips:
                    reason = "nan"  # and no checkpoint: the last one saved is the last good one
                    break
            if stop_now:
                reason = "interrupted"
                if nan_streak == 0:  # between iterations: this state resumes exactly
                    last_good = save_latest(run, False)
                else:
                    print0(dist, "not saving: the last losses were not finite; the last checkpoint stays")
                break

    if profiling:
        gpu.finish_memory_profile(cfg.out_dir, dist)
    elapsed = time.time() - t_start
    run.report.record({"kind": "end", "iter": state.iter_num, "best_val_loss": state.best_val_loss,
                       "tokens": state.tokens, "elapsed_s": elapsed, "reason": reason})
    run.report.finish()
    return dict(iter=state.iter_num, best_val_loss=state.best_val_loss, tokens=state.tokens, elapsed_s=elapsed,
                out_dir=cfg.out_dir, reason=reason, last_val_loss=last_val, checkpoint=last_good)


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
