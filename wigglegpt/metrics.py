"""
What a training run reports as it goes: out_dir/metrics.jsonl (one JSON object per line, the
record every comparison and plot reads), the peak memory, and Weights & Biases when asked.
"""

import json
import os
import sys

import torch

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
