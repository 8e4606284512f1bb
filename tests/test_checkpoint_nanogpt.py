"""Protects loading nanoGPT's checkpoints (wigglegpt/checkpoint.py and compat.py): a ckpt.pt laid out
as nanoGPT's train.py writes it (model_args n_layer/n_head/n_embd/block_size/bias/vocab_size/dropout,
the training config under 'config', the '_orig_mod.' keys of a compiled model, the causal-mask
buffers of its non-flash attention) from a model shaped like nanoGPT's GPT, written here: it loads in
the loader every script uses with the same logits, and samples and evaluates through the real
command lines."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import ROOT
from wigglegpt.loader import load_for_inference

ARGS = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, bias=True, vocab_size=50304, dropout=0.0)


class ReferenceBlock(nn.Module):
    """One block as nanoGPT builds it: pre-LayerNorm, causal attention through one c_attn matmul,
    exact GELU in a 4x MLP, residual adds."""

    def __init__(self, n_embd, n_head, block_size, bias):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.attn.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        mask = torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size)
        self.attn.register_buffer("bias", mask)  # the causal mask, saved in the state dict as nanoGPT's is
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.mlp.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)

    def forward(self, x):
        B, T, C = x.shape
        h = self.ln_1(x)
        q, k, v = self.attn.c_attn(h).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # the explicit attention of nanoGPT's slow path
        att = att.masked_fill(self.attn.bias[:, :, :T, :T] == 0, float("-inf")).softmax(dim=-1)
        x = x + self.attn.c_proj((att @ v).transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x))))


class ReferenceGPT(nn.Module):
    def __init__(self, n_layer, n_head, n_embd, block_size, bias, vocab_size, dropout):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd), wpe=nn.Embedding(block_size, n_embd),
            h=nn.ModuleList(ReferenceBlock(n_embd, n_head, block_size, bias) for _ in range(n_layer)),
            ln_f=nn.LayerNorm(n_embd, bias=bias)))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied, as in nanoGPT
        for p in self.parameters():  # random weights well away from any init rule ours might share
            nn.init.normal_(p, std=0.2)

    def forward(self, idx):
        pos = torch.arange(idx.size(1))
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


@pytest.fixture(scope="module", params=[True, False], ids=["bias", "no-bias"])
def nanogpt_ckpt(request, tmp_path_factory):
    torch.manual_seed(0)
    args = {**ARGS, "bias": request.param}
    model = ReferenceGPT(**args).eval()
    # what nanoGPT's train.py saves from a compiled model: keys under '_orig_mod.'
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    folder = tmp_path_factory.mktemp("nanogpt")
    path = folder / "ckpt.pt"
    torch.save({"model": state, "optimizer": {}, "model_args": args, "iter_num": 250, "best_val_loss": 3.5,
                "config": {"batch_size": 12, "learning_rate": 6e-4, "dataset": "shakespeare"}}, path)
    return model, path


def test_a_nanogpt_checkpoint_loads_with_its_logits(nanogpt_ckpt):
    reference, path = nanogpt_ckpt
    model, source = load_for_inference(str(path))
    assert source == str(path) and not model.config.use_bio_mlp and not model.config.use_rope
    assert model.config.bias == (reference.transformer.ln_f.bias is not None)
    idx = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = model(idx, idx)  # with targets: the logits of every position
        want = reference(idx)
    assert torch.allclose(ours, want, atol=1e-5, rtol=1e-5), (ours - want).abs().max()


def test_a_nanogpt_checkpoint_samples_and_evaluates_through_the_commands(nanogpt_ckpt, tmp_path):
    _, path = nanogpt_ckpt
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sample = subprocess.run([sys.executable, os.path.join(ROOT, "sample_bio.py"), f"--ckpt={path}", "--start=Hello",
                             "--max_new_tokens=5", "--num_samples=1", "--device=cpu"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert sample.returncode == 0 and sample.stdout.startswith("Hello"), sample.stderr
    folder = tmp_path / "data" / "tiny"
    folder.mkdir(parents=True)
    for split in ("train", "val"):
        np.resize(np.arange(1000, dtype=np.uint16), 4000).tofile(folder / f"{split}.bin")
    ev = subprocess.run([sys.executable, os.path.join(ROOT, "eval_bio.py"), f"--ckpt={path}", "--tasks=val",
                         f"--data_root={tmp_path / 'data'}", "--dataset=tiny", "--eval_windows=4", "--device=cpu"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert ev.returncode == 0 and "bpb" in ev.stdout, ev.stderr
