"""
What a training run reports: its start-up lines, out_dir/metrics.jsonl (one JSON object per line, the
record every comparison and plot reads), the peak memory, and Weights & Biases when asked.
"""

import json
import os
import sys

import torch

from wigglegpt import chardata, gpu
from wigglegpt.checkpoint import resume_advice
from wigglegpt.common import UserError, write_error


def write_metrics(out_dir, record):
    """Append one JSON object per line to out_dir/metrics.jsonl (rank 0 only). Kinds:
    start {iter, params, tokens_per_iter, config, time}; train {iter, loss, lr, dt_ms, mfu (null
    when the device's peak FLOP/s is unknown), tokens, tokens_per_sec, firing_share}; eval {iter,
    train_loss, val_loss, train_bpb, val_bpb, tokens, lr, peak_mem_mb} (bpb: bits per byte of the
    same eval batches, see wigglegpt/evaluate.py); hellaswag {iter, acc, acc_norm, n, tokens}; end {iter,
    best_val_loss, tokens, elapsed_s, reason}."""
    path = os.path.join(out_dir, "metrics.jsonl")
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        raise write_error(path, e, resume_advice(os.path.join(out_dir, "ckpt.pt"))) from None


def peak_memory_mb(device):
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # Windows has no getrusage
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def start_wandb(project, name, config, run_id):
    try:
        import wandb  # optional, and slow to import
    except ImportError:
        raise UserError("wandb_log=True but wandb is not installed (pip install wandb)") from None
    kwargs = dict(project=project, name=name or None, config=config)
    if run_id:
        kwargs.update(id=run_id, resume="allow")  # the same run continues on resume
    return wandb.init(**kwargs)


class Reporter:
    """What rank 0 records: a line of metrics.jsonl per record and, once started, its wandb point.
    On the other ranks every call does nothing."""

    def __init__(self, out_dir, master):
        self.out_dir, self.master, self.wandb = out_dir, master, None

    def start_wandb(self, project, name, config, run_id):
        """Start (or, with run_id, continue) the wandb run; returns its id."""
        if self.master:
            self.wandb = start_wandb(project, name, config, run_id)
            return self.wandb.id
        return run_id

    def record(self, record, wandb=None, step=None):
        if not self.master:
            return
        write_metrics(self.out_dir, record)
        if self.wandb is not None and wandb:
            self.wandb.log(wandb, step=step)

    def finish(self):
        if self.wandb is not None:
            self.wandb.finish()


def startup_lines(run):
    """The lines a training run prints before its first iteration: device, model, batch, data
    (run: train_bio.py's Run)."""
    cfg, config = run.cfg, run.raw_model.config
    kind = ["oscillating MLP" if config.use_bio_mlp else "GELU MLP", "RMSNorm" if config.use_rmsnorm else "LayerNorm",
            ("legacy RoPE (no positions)" if config.legacy_rope else "RoPE") if config.use_rope else "learned positions"]
    kind += [f"{config.sparse_gate_kind} sparse gate"] if config.use_sparse_gate else []
    lines = [f"device {run.device}, dtype {run.dtype}, {run.dist.world:,} process(es)"]
    if run.peak_flops:
        lines.append(f"MFU against {run.peak_flops / 1e12:,.1f} TFLOP/s "
                     f"({gpu.resolve_peak_flops(cfg.peak_flops, run.device)[1]})")
    else:
        lines.append(f"note: {gpu.unknown_peak_hint(run.device)}")
    lines.append(f"model: {run.raw_model.get_num_params():,} parameters ({config.n_layer} layers, {config.n_head} "
                 f"heads, {config.n_embd} wide; {', '.join(kind)})")
    if cfg.freeze_layers:
        frozen = "block 0" if cfg.freeze_layers == 1 else f"blocks 0-{cfg.freeze_layers - 1}"
        lines.append(f"trainable: {run.trainable:,} of {sum(p.numel() for p in run.raw_model.parameters()):,} "
                     f"parameters (freeze_layers={cfg.freeze_layers}: the embeddings and {frozen} frozen)")
    lines.append(f"activation: {run.activation}; {'compiled' if run.compiled else 'eager'}")
    lines.append(f"tokens per iteration: {run.tokens_per_iter:,} = batch_size {cfg.batch_size:,} x gradient "
                 f"accumulation {cfg.gradient_accumulation_steps:,} x block_size {cfg.block_size:,}")
    lines.append(f"gradient accumulation steps: {run.accum:,} per process x {run.dist.world:,} process(es)")
    train, val = run.data.splits["train"].n_tokens, run.data.splits["val"].n_tokens
    lines.append(f"data: {run.data.folder}: train {train:,} tokens, val {val:,} tokens"
                 + ("; loss on assistant tokens only (masks found)" if run.data.masked else ""))
    if run.vocab is not None:
        origin = ("the checkpoint's" if cfg.init_from != "scratch" else
                  "given" if "vocab_size" in run.given.explicit else "from meta.pkl")
        lines.append(f"character-level data: {len(run.vocab):,} characters in "
                     f"{os.path.join(run.data.folder, chardata.META_NAME)}; vocab_size {config.vocab_size:,} ({origin})")
    return lines
