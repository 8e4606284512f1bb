"""
WiggleGPT: a GPT whose MLP neurons oscillate.

The GELU of the usual transformer MLP is replaced by a neuron with its own learned frequency
omega, phase phi and baseline:

    f(x) = sin(omega * x + phi) * tanh(x) + baseline

The rest is a modern nanoGPT: RMSNorm, rotary position embeddings (RoPE), flash attention
through F.scaled_dot_product_attention, tied input/output embeddings, no biases. Switching
use_bio_mlp / use_rmsnorm / use_rope / bias off gives the standard GPT-2 baseline in the same
code, so the comparison is honest. This file imports only torch and the standard library.
"""

import math
import re
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

SPARSE_GATE_KINDS = ("lightweight", "event_layer")
ACTIVATION_KERNELS = ("auto", "triton", "torch")


@dataclass
class GPTConfig:
    # defaults are the published WiggleGPT 124M model
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = False  # biases in Linear and LayerNorm, as in GPT-2
    use_bio_mlp: bool = True  # oscillating neurons instead of GELU
    use_rmsnorm: bool = True  # RMSNorm instead of LayerNorm
    use_rope: bool = True  # rotary position embeddings instead of a learned wpe table
    gradient_checkpointing: bool = False  # recompute blocks in backward to fit 8 GB GPUs
    use_sparse_gate: bool = False  # a soft spike gate in the MLP; sparse_gate_kind says which
    # "lightweight": a weight and bias per hidden unit, in front of the activation (2 vectors a layer)
    # "event_layer": v2's SparseEventLayer after the activation: two full 4C x 4C matrices and a
    #                second oscillating activation (the published 45.31M model)
    sparse_gate_kind: str = "lightweight"
    bio_threshold: float = 0.25  # the gate's firing threshold
    # The published checkpoints rotated q and k by one head-dependent angle at every position
    # (their rotation table was sliced along the head axis), which leaves q.k unchanged: in
    # effect they have no positional encoding. legacy_rope=True reproduces that exactly by not
    # rotating at all; it is set when an original-format checkpoint is loaded.
    legacy_rope: bool = False
    # GELU of the baseline MLP: 'none' is the exact erf form, 'tanh' the approximation GPT-2
    # was trained with (its converted weights need it to give GPT-2's logits)
    gelu_approximate: str = "none"
    # how the oscillating activation runs (the numbers are the same): 'triton' the fused kernel
    # of wigglegpt/oscillate_triton.py, 'torch' plain PyTorch ops, 'auto' the kernel on a CUDA
    # device where Triton works, PyTorch elsewhere
    activation_kernel: str = "auto"

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type is float and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, float(value))
            elif f.type is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"GPTConfig.{f.name} must be an int, got {value!r}")
            elif f.type is bool and not isinstance(value, bool):
                raise TypeError(f"GPTConfig.{f.name} must be True or False, got {value!r}")
            elif f.type is float and not isinstance(value, float):
                raise TypeError(f"GPTConfig.{f.name} must be a number, got {value!r}")
            elif f.type is str and not isinstance(value, str):
                raise TypeError(f"GPTConfig.{f.name} must be a string, got {value!r}")
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GPTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.use_rope and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"RoPE needs an even head size; n_embd/n_head = {self.n_embd // self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.gelu_approximate not in ("none", "tanh"):
            raise ValueError(f"gelu_approximate must be 'none' or 'tanh', got {self.gelu_approximate!r}")
        if self.activation_kernel not in ACTIVATION_KERNELS:
            raise ValueError(f"activation_kernel must be one of {', '.join(ACTIVATION_KERNELS)}, "
                             f"got {self.activation_kernel!r}")
        if self.sparse_gate_kind not in SPARSE_GATE_KINDS:
            raise ValueError(f"sparse_gate_kind must be one of {', '.join(SPARSE_GATE_KINDS)}, "
                             f"got {self.sparse_gate_kind!r}")
        if self.use_sparse_gate and self.sparse_gate_kind == "event_layer" and not self.use_bio_mlp:
            raise ValueError("the event_layer sparse gate is part of the oscillating MLP: it needs use_bio_mlp=True")


# ---------------------------------------------------------------------------------------
# rotary position embeddings (Su et al. 2021, "RoFormer", arXiv:2104.09864)

def rope_tables(head_dim, max_len, theta=10000.0):
    """cos and sin of angle pos * theta^(-2i/head_dim) for each position and pair i."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (max_len, head_dim/2)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate adjacent pairs (2i, 2i+1) of the last dimension by each position's angle.

    x: (B, n_head, T, head_dim); cos, sin: (T, head_dim/2) for the positions of x.
    """
    pairs = x.float().unflatten(-1, (-1, 2))  # (B, n_head, T, head_dim/2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


# ---------------------------------------------------------------------------------------
# attention, with the small key/value cache that makes generation linear instead of quadratic

class KVCache:
    """Keys and values of every layer for the positions seen so far.

    Preallocated on first use (dtype and device follow the keys), then filled in place:
    prefill writes a whole prompt, each decode step one position. `pos` counts the filled
    positions; it advances once all layers have written.
    """

    def __init__(self, n_layer, max_len):
        self.n_layer, self.max_len = n_layer, max_len
        self.k = self.v = None
        self.pos = 0

    def reset(self):
        self.pos = 0

    def insert(self, layer, k, v):
        """Write this layer's new k, v (B, n_head, T, head_dim); return all cached so far."""
        B, n_head, T, head_dim = k.shape
        if self.pos + T > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {self.pos} + {T} do not fit")
        if self.k is None or self.k.shape[1] != B or self.k.dtype != k.dtype or self.k.device != k.device:
            if self.pos:  # reallocating would silently drop the cached positions
                raise ValueError("KV cache holds another batch size, dtype or device; reset() it first")
            shape = (self.n_layer, B, n_head, self.max_len, head_dim)
            self.k = torch.zeros(shape, dtype=k.dtype, device=k.device)
            self.v = torch.zeros(shape, dtype=v.dtype, device=v.device)
        end = self.pos + T
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n):
        self.pos += n


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, rope=None, kv_cache=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, n_head, T, head_dim)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        past = 0
        if kv_cache is not None:
            past = kv_cache.pos
            k, v = kv_cache.insert(self.layer_idx, k, v)  # (B, n_head, past + T, head_dim)
        if past == 0:
            mask, causal = None, True
        elif T == 1:
            mask, causal = None, False  # one new query sees every cached key
        else:  # several new queries after a cached prefix: query i sees keys up to past + i
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            causal = False
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)  # flash on CUDA
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


# ---------------------------------------------------------------------------------------
# the oscillating neuron

def tanh(x):
    """tanh; on a CPU as 2 * sigmoid(2x) - 1, which takes about a quarter of torch.tanh's time
    there (four cheap passes in eager mode, or fused by torch.compile) and agrees within 2e-7
    in fp32. On a GPU torch.tanh is as fast as any other elementwise pass."""
    if x.device.type != "cpu":
        return torch.tanh(x)
    return torch.mul(x, 2.0).sigmoid_().mul_(2.0).sub_(1.0)


def oscillate_grads_eager(x, g, omega, phi):
    """Gradients of sum(g * (sin(omega*x + phi) * tanh(x) + baseline)) for x, omega, phi and
    baseline, tuned for eager mode, where the cost is the passes over the tensor and the fresh
    allocations: results go into buffers that are no longer needed (in place), and the sums
    over positions are matrix-vector products."""
    D = x.shape[-1]
    z = torch.addcmul(phi, omega, x)  # recomputed, not stored
    sin_z = torch.sin(z)
    t = tanh(x)
    g_cos_t = z.cos_().mul_(t).mul_(g)  # dL/dz * tanh(x) = g * cos(z) * tanh(x)
    g_dtanh = torch.addcmul(g, g, t.square_(), value=-1.0, out=t)  # g * (1 - tanh(x)^2)
    # dy/dx = omega * cos(z) * tanh(x) + sin(z) * (1 - tanh(x)^2)
    grad_x = sin_z.mul_(g_dtanh).addcmul_(g_cos_t, omega)
    g_cos_t_x = torch.mul(g_cos_t, x, out=g_dtanh)
    # the parameters are shared by every position: sum over them. On a CPU as ones @ (positions, D),
    # a BLAS gemv much faster there than a sum over the leading dims; elsewhere as a plain fp32
    # sum, since a matmul on a GPU may run as TF32 (allow_tf32) and lose 3 digits of the sums
    if x.device.type == "cpu":
        ones = x.new_ones(x.numel() // D)
        return grad_x, ones @ g_cos_t_x.reshape(-1, D), ones @ g_cos_t.reshape(-1, D), ones @ g.reshape(-1, D)
    rows = (-1, D)
    return (grad_x, g_cos_t_x.reshape(rows).sum(0), g_cos_t.reshape(rows).sum(0), g.reshape(rows).sum(0))


def oscillate_grads_traced(x, g, omega, phi):
    """The same gradients written plainly, for torch.compile: Inductor fuses the elementwise
    work and the sums into a few kernels, which buffers and gemvs would only get in the way of."""
    z = omega * x + phi
    t = tanh(x)
    g_cos_t = g * torch.cos(z) * t
    sum_dims = tuple(range(x.dim() - 1))
    grad_x = omega * g_cos_t + g * torch.sin(z) * (1 - t * t)
    return grad_x, (g_cos_t * x).sum(sum_dims), g_cos_t.sum(sum_dims), g.sum(sum_dims)


class OscillateFunction(torch.autograd.Function):
    """y = sin(omega*x + phi) * tanh(x) + baseline, per hidden neuron (last dimension).

    Plain autograd would keep sin, cos and tanh of the whole activation tensor for backward
    (1.6x the activation memory of GELU). We save only x and the parameter vectors and
    recompute the cheap elementwise terms in backward. Math is done in fp32 for accuracy;
    the output keeps x's dtype so autocast's bf16/fp16 memory savings carry through.
    """

    @staticmethod
    def forward(ctx, x, omega, phi, baseline):
        ctx.save_for_backward(x, omega, phi)
        dt = torch.promote_types(x.dtype, torch.float32)  # bf16/fp16 -> fp32, fp64 stays
        xf = x.to(dt)
        wave = torch.addcmul(phi.to(dt), omega.to(dt), xf).sin_()
        return tanh(xf).mul_(wave).add_(baseline.to(dt)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, omega, phi = ctx.saved_tensors
        dt = torch.promote_types(x.dtype, torch.float32)
        grads = oscillate_grads_traced if torch.compiler.is_compiling() else oscillate_grads_eager
        grad_x, grad_omega, grad_phi, grad_baseline = grads(x.to(dt), grad_out.to(dt), omega.to(dt), phi.to(dt))
        return (grad_x.to(x.dtype), grad_omega.to(omega.dtype), grad_phi.to(phi.dtype),
                grad_baseline.to(omega.dtype))


_KERNEL_CHOICES = {}  # (setting, device type) -> bool: decided once, a plain lookup after that


def kernel_problem(device_type):
    """Why the fused kernel cannot run on device_type, or None when a test launch works. The
    kernel is the torch op wigglegpt::oscillate, registered by wigglegpt/oscillate_triton.py when
    it is imported (the scripts import it); this file reaches it through torch.ops alone."""
    try:
        op = torch.ops.wigglegpt.oscillate
    except AttributeError:
        return "the kernel is not loaded (import wigglegpt.oscillate_triton first; the scripts do)"
    try:
        x = torch.zeros(2, 4, device=device_type)
        op(x, x[0], x[0], x[0])
    except Exception as e:  # no Triton, no GPU, a failed compile: the op says which
        lines = str(e).strip().splitlines()
        return re.sub(r"^the Triton oscillate kernel cannot run on \S+: ", "", lines[0]) if lines else type(e).__name__
    return None


def uses_kernel(setting, device_type):
    """Whether the oscillating activation runs as the Triton kernel on this device type (see
    GPTConfig.activation_kernel). 'triton' where the kernel cannot run raises ValueError.
    Off CUDA, 'auto' never asks Triton (whose import takes seconds). A model compiled with
    torch.compile takes the kernel where this was asked before tracing (train_bio does)."""
    key = (setting, device_type)
    if key not in _KERNEL_CHOICES:
        if setting == "torch" or (setting == "auto" and device_type != "cuda"):
            _KERNEL_CHOICES[key] = False
        else:
            problem = kernel_problem(device_type)
            if setting == "triton" and problem:
                raise ValueError(f"activation_kernel='triton' cannot run on {device_type}: {problem}; "
                                 "use activation_kernel='auto' or 'torch'")
            _KERNEL_CHOICES[key] = problem is None
    return _KERNEL_CHOICES[key]


class OscillatingActivation(nn.Module):
    """Learned frequency, phase and baseline for each of num_features neurons."""

    def __init__(self, num_features, kernel="auto"):
        super().__init__()
        self.kernel = kernel
        self.omega = nn.Parameter(torch.empty(num_features))
        self.phi = nn.Parameter(torch.empty(num_features))
        self.baseline = nn.Parameter(torch.empty(num_features))

    def forward(self, x):
        if torch.compiler.is_compiling():  # decided before tracing (uses_kernel), or the PyTorch ops, which Inductor fuses
            kernel = _KERNEL_CHOICES.get((self.kernel, x.device.type), False)
        else:
            kernel = uses_kernel(self.kernel, x.device.type)
        if kernel and x.dtype != torch.float64:
            return torch.ops.wigglegpt.oscillate(x, self.omega, self.phi, self.baseline)  # one read of x, one write
        return OscillateFunction.apply(x, self.omega, self.phi, self.baseline)


def spike(voltage, threshold):
    """The soft spike of both gates: near 1 above the threshold, near 0 below, and the share
    of units that fire (voltage above the threshold) as a detached 0-dim tensor: no GPU sync."""
    firing = (voltage.detach() > threshold).float().mean()
    return torch.sigmoid((voltage - threshold) * 5.0), firing


class SparseEventLayer(nn.Module):
    """WiggleGPT v2's gate on the 4C hidden vector h (after the first oscillating activation):
    voltage = sigmoid(gate(h)), out = oscillate(transform(h * spike(voltage))), with gate and
    transform full 4C x 4C Linears and a second oscillating activation of its own."""

    def __init__(self, hidden, threshold, bias, kernel="auto"):
        super().__init__()
        self.threshold = threshold
        self.gate = nn.Linear(hidden, hidden, bias=bias)
        self.transform = nn.Linear(hidden, hidden, bias=bias)
        self.activation = OscillatingActivation(hidden, kernel)

    def forward(self, h):
        strength, firing = spike(torch.sigmoid(self.gate(h)), self.threshold)
        return self.activation(self.transform(h * strength)), firing


class MLP(nn.Module):
    """c_fc -> activation -> c_proj, with an optional sparse gate (config.sparse_gate_kind).

    forward returns (output, firing): the share of the gate's units that fired, a detached
    0-dim tensor, or None without a gate. It goes out through the return value, not a module
    attribute, so torch.compile can trace the block even inside activation checkpointing.
    """

    def __init__(self, config):
        super().__init__()
        hidden = 4 * config.n_embd
        self.gate_kind = config.sparse_gate_kind if config.use_sparse_gate else None
        self.bio_threshold = config.bio_threshold
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        if self.gate_kind == "event_layer":  # v2's names, so its checkpoints load as they are
            self.oscillating = OscillatingActivation(hidden, config.activation_kernel)
            self.sparse_gate = SparseEventLayer(hidden, config.bio_threshold, config.bias, config.activation_kernel)
        else:
            self.activation = (OscillatingActivation(hidden, config.activation_kernel) if config.use_bio_mlp
                               else nn.GELU(approximate=config.gelu_approximate))
        if self.gate_kind == "lightweight":
            self.gate_weight = nn.Parameter(torch.empty(hidden))
            self.gate_bias = nn.Parameter(torch.empty(hidden))
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.c_fc(x)  # (B, T, 4 * n_embd)
        firing = None
        if self.gate_kind == "event_layer":
            h, firing = self.sparse_gate(self.oscillating(h))
        else:
            if self.gate_kind == "lightweight":
                # the gate parameters are cast to h's dtype: under autocast an fp32 parameter
                # would promote the whole hidden tensor (and what backward saves) to fp32
                voltage = torch.addcmul(self.gate_bias.to(h.dtype), h, self.gate_weight.to(h.dtype))
                strength, firing = spike(voltage, self.bio_threshold)
                h = h * strength
            h = self.activation(h)
        return self.dropout(self.c_proj(h)), firing


def make_norm(config):
    """RMSNorm, x / sqrt(mean(x^2) + 1e-6) * weight (Zhang & Sennrich 2019), or GPT-2's LayerNorm."""
    if config.use_rmsnorm:
        return nn.RMSNorm(config.n_embd, eps=1e-6)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


class Block(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rope=None, kv_cache=None):
        """Returns (x, firing share of the MLP's sparse gate or None)."""
        x = x + self.attn(self.ln_1(x), rope, kv_cache)
        out, firing = self.mlp(self.ln_2(x))
        return x + out, firing


# ---------------------------------------------------------------------------------------
# the training loss, without the full logits

class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of the logits x @ weight.T against targets (-1: ignored), made a chunk
    of positions at a time. Each chunk's logits, softmax and logit gradient live only while the
    chunk is worked on; what stays for backward is the gradient of x (x's size) and of weight
    (an fp32 copy of its size). The plain path holds the whole (positions, vocab) logits, their
    fp32 log-softmax and its gradient: several times the rest of a small model's activations.

    x (N, C), weight (V, C), targets (N,) int64. The logits follow autocast as lm_head's would
    (bf16 matmul, then fp32 for the softmax), so the loss is the plain path's.
    """

    @staticmethod
    def forward(ctx, x, weight, targets, chunk_rows):
        ctx.weight_dtype = weight.dtype
        loss, grad_x, grad_w = chunked_cross_entropy(x, weight, targets, chunk_rows, with_grads=True)
        ctx.save_for_backward(grad_x, grad_w)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_loss, (grad_w * grad_loss).to(ctx.weight_dtype), None, None


def chunked_cross_entropy(x, weight, targets, chunk_rows, with_grads):
    """(mean cross-entropy, its gradient for x or None, for weight or None): see LinearCrossEntropy."""
    dt = torch.promote_types(x.dtype, torch.float32)  # the softmax in fp32 at least (fp64 stays)
    total = torch.zeros((), dtype=dt, device=x.device)
    grad_x = torch.empty_like(x) if with_grads else None
    grad_w = torch.zeros(weight.shape, dtype=dt, device=weight.device) if with_grads else None
    for start in range(0, x.shape[0], chunk_rows):
        xc, tc = x[start:start + chunk_rows], targets[start:start + chunk_rows]
        logits = (xc @ weight.t()).to(dt)  # (n, V): the only logits alive at a time
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # (n, 1)
        keep = (tc != -1).unsqueeze(1)  # (n, 1)
        picked = tc.clamp(min=0).unsqueeze(1)
        total += ((lse - logits.gather(1, picked)) * keep).sum()
        if with_grads:
            # dloss/dlogits = softmax - one_hot(target) on the kept positions (divided by their count below)
            grad = logits.sub_(lse).exp_().scatter_add_(1, picked, keep.to(dt).neg()).mul_(keep).to(x.dtype)
            grad_x[start:start + chunk_rows] = grad @ weight  # autocast: in its dtype, as lm_head's backward
            grad_w += grad.t() @ xc  # summed over the chunks in fp32
    n_kept = (targets != -1).sum()
    if with_grads:
        grad_x.div_(n_kept)
        grad_w.div_(n_kept)
    return total / n_kept, grad_x, grad_w  # 0/0 = nan when nothing is kept, as F.cross_entropy gives


def loss_chunk_rows(n_rows, n_embd, vocab_size):
    """Positions per chunk of LinearCrossEntropy: a chunk's logits about the size of the whole
    hidden state x (n_rows x n_embd), and at least 256 positions so each matmul stays large."""
    return max(256, -(-n_rows * n_embd // vocab_size))


# ---------------------------------------------------------------------------------------
# the whole model

class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        layers = dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=make_norm(config),
        )
        if not config.use_rope:
            layers["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.transformer = nn.ModuleDict(layers)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied embeddings (Press & Wolf 2017)
        if config.use_rope and not config.legacy_rope:
            # non-persistent: positions are recomputed, never stored in checkpoints
            cos, sin = rope_tables(config.n_embd // config.n_head, config.block_size)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        # [sum of per-forward firing shares, forwards]: a running mean kept on the device, read
        # (one sync) only when training logs. Under DDP it is rank 0's, the rank that logs.
        self.register_buffer("firing_stats", torch.zeros(2), persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """Every parameter's starting value, one rule each:
        - Linear and Embedding weights ~ N(0, 0.02); biases 0 (GPT-2)
        - residual projections c_proj ~ N(0, 0.02 / sqrt(2 * n_layer)), so each block's
          additions to the residual stream keep its variance in check with depth (GPT-2)
        - norm weights 1, LayerNorm biases 0
        - omega ~ N(1, 0.1), phi ~ N(0, 0.1), baseline 0: each neuron starts near sin(x)*tanh(x)
        - sparse gate weight 1, bias 0: the gate starts as a plain threshold on h
        """
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, residual_std if name.endswith("c_proj") else 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding) and name != "transformer.wte":
                nn.init.normal_(module.weight, 0.0, 0.02)  # wte is lm_head's weight, set above
            elif isinstance(module, (nn.RMSNorm, nn.LayerNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, OscillatingActivation):
                nn.init.normal_(module.omega, 1.0, 0.1)
                nn.init.normal_(module.phi, 0.0, 0.1)
                nn.init.zeros_(module.baseline)
            elif isinstance(module, MLP) and module.gate_kind == "lightweight":
                nn.init.ones_(module.gate_weight)
                nn.init.zeros_(module.gate_bias)

    def get_num_params(self, non_embedding=True):
        """Parameter count; the learned position table is left out with non_embedding=True.
        (The token embedding stays in: it is also the output layer.)"""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def new_kv_cache(self):
        return KVCache(self.config.n_layer, self.config.block_size)

    def forward(self, idx, targets=None, kv_cache=None, return_logits=True):
        """idx (B, T) token ids -> (logits, loss).

        With targets: logits (B, T, vocab) and the mean cross-entropy (targets of -1 are
        ignored). Without: logits of the last position only, (B, 1, vocab), and loss None.
        With targets and return_logits=False: (None, loss), the loss made a chunk of positions
        at a time (LinearCrossEntropy) without ever holding the full logits: what training asks.
        With a kv_cache the T tokens continue the cached sequence at position kv_cache.pos.
        """
        B, T = idx.shape
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}")
        x = self.transformer.wte(idx)  # (B, T, n_embd)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(torch.arange(start, start + T, device=idx.device))
        x = self.transformer.drop(x)
        rope = None
        if hasattr(self, "rope_cos"):
            rope = (self.rope_cos[start:start + T], self.rope_sin[start:start + T])  # (T, head_dim/2)
        firings = []
        for block in self.transformer.h:
            if self.config.gradient_checkpointing and self.training and kv_cache is None:
                x, firing = checkpoint(block, x, rope, use_reentrant=False)  # recomputed in backward
            else:
                x, firing = block(x, rope, kv_cache)
            firings.append(firing)
        if self.config.use_sparse_gate:
            with torch.no_grad():
                self.firing_stats.add_(torch.stack([torch.stack(firings).mean(), torch.ones_like(firings[0])]))
        if kv_cache is not None:
            kv_cache.advance(T)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None  # only the next token's logits are needed
        if not return_logits:
            x, targets = x.reshape(-1, x.size(-1)), targets.reshape(-1)  # (B * T, n_embd), (B * T,)
            rows = loss_chunk_rows(x.size(0), self.config.n_embd, self.config.vocab_size)
            if torch.is_grad_enabled():
                return None, LinearCrossEntropy.apply(x, self.lm_head.weight, targets, rows)
            return None, chunked_cross_entropy(x, self.lm_head.weight, targets, rows, with_grads=False)[0]
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def firing_share(self):
        """Share of the sparse gates' units that fired (voltage above bio_threshold), averaged
        over the layers and the forwards since the last call, or None. It is what the original
        v2 logged as "sparsity". Calls .tolist(): a GPU sync, so training asks only when it logs."""
        if not self.config.use_sparse_gate:
            return None
        total, forwards = self.firing_stats.tolist()
        self.firing_stats.zero_()
        return total / forwards if forwards else None

    def parameter_groups(self, weight_decay):
        """Optimizer groups: weight decay on matrices and embeddings only.

        No decay on what is 1-D: norm weights, biases, and the neurons' omega, phi and
        baseline (decay would pull every frequency toward 0, i.e. toward a linear neuron).
        """
        params = {name: p for name, p in self.named_parameters() if p.requires_grad}
        decay = [p for name, p in params.items() if p.dim() >= 2]
        no_decay = [p for name, p in params.items() if p.dim() < 2]
        assert len(decay) + len(no_decay) == len(params), "optimizer groups must cover every parameter once"
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def estimate_mfu(self, tokens_per_iter, dt, peak_flops, seq_len=None):
        """Model FLOPs utilisation: achieved FLOP/s over peak_flops (e.g. 312e12 for A100 bf16).

        FLOPs per token = 6N + 12 * n_layer * n_head * head_dim * T (PaLM, Chowdhery et al.
        2022, appendix B): 6N for the matmuls forward and backward, the rest for attention,
        where T is the sequence length actually trained (seq_len; default the model's block_size).
        """
        cfg = self.config
        T = seq_len or cfg.block_size
        flops_per_token = 6 * self.get_num_params() + 12 * cfg.n_layer * cfg.n_embd * T
        return flops_per_token * tokens_per_iter / dt / peak_flops
