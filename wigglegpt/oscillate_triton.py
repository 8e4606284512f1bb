"""
Fused Triton kernels for the oscillating activation y = sin(omega*x + phi) * tanh(x) + baseline,
registered as the torch custom op wigglegpt::oscillate (and wigglegpt::oscillate_backward), so
torch.compile traces through it without a graph break. model_bio uses them on CUDA
(activation_kernel='auto' or 'triton'); the bytes they move against GELU's: README.md, "Benchmarks".

Triton is imported on first use, not with this module: the module imports without Triton, and a
TRITON_INTERPRET=1 set before the first use runs the kernels in Triton's interpreter, on CPU
tensors too. x and grad_y stay in their dtype (fp32, bf16, fp16; others are a ValueError), the
math is fp32.
"""

from __future__ import annotations  # the kernels' `tl.constexpr` annotations stay strings until Triton reads them

import contextlib
import functools
import types

import torch

# A program owns BLOCK_M rows x BLOCK_N columns and walks down its rows one at a time, so the
# parameter vectors are loaded once per BLOCK_M rows and the backward's partial sums are
# (n_rows / BLOCK_M, D) per parameter; no reduction across threads is needed. 512 columns are
# 4 per thread with 4 warps: compiled for sm_90, 40-47 registers forward and 64-72 backward
# (libdevice's sin and cos are register-hungry), room for 7-8 programs per SM, no spills.
# 8192 x 3072 makes 128 x 6 = 768 programs.
BLOCK_M = 64
MAX_BLOCK_N = 512
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ---------------------------------------------------------------------------------------
# the kernels: plain functions until _kernels() jits them, with `tl` (triton.language) in globals
# of their own. They call only Triton's builtins (tl.full, not tl.zeros; no tl.sum): the jitted
# helpers of triton.language fail under the interpreter when Triton was imported before
# TRITON_INTERPRET was set.

def _forward_kernel(x_ptr, omega_ptr, phi_ptr, baseline_ptr, y_ptr, M, D, stride_xm, stride_xn, stride_ym,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < D
    omega = tl.load(omega_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    phi = tl.load(phi_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    baseline = tl.load(baseline_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    row_start = tl.program_id(0) * BLOCK_M
    x_row = x_ptr + row_start.to(tl.int64) * stride_xm  # int64: no overflow past 2**31 elements
    y_row = y_ptr + row_start.to(tl.int64) * stride_ym
    for _ in range(row_start, tl.minimum(row_start + BLOCK_M, M)):
        x = tl.load(x_row + cols * stride_xn, mask=col_ok, other=0.0).to(tl.float32)
        # tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|) in (0, 1]: no overflow at any |x|;
        # below |x| = 0.25, where 1 - e cancels, its Taylor series (error < 1e-8 relative)
        e = tl.exp(-2.0 * tl.abs(x))
        x2 = x * x
        series = x * (1.0 + x2 * (-0.333333333 + x2 * (0.133333333 + x2 * (-0.0539682540 + x2 * 0.0218694885))))
        ratio = (1.0 - e) / (1.0 + e)
        t = tl.where(tl.abs(x) < 0.25, series, tl.where(x < 0.0, -ratio, ratio))
        y = tl.sin(omega * x + phi) * t + baseline
        tl.store(y_row + cols, y.to(y_ptr.dtype.element_ty), mask=col_ok)
        x_row += stride_xm
        y_row += stride_ym


def _backward_kernel(x_ptr, g_ptr, omega_ptr, phi_ptr, grad_x_ptr, partial_ptr, M, D,
                     stride_xm, stride_xn, stride_gm, stride_gn, stride_dxm,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < D
    omega = tl.load(omega_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    phi = tl.load(phi_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    row_start = tl.program_id(0) * BLOCK_M
    x_row = x_ptr + row_start.to(tl.int64) * stride_xm
    g_row = g_ptr + row_start.to(tl.int64) * stride_gm
    dx_row = grad_x_ptr + row_start.to(tl.int64) * stride_dxm
    sum_omega = tl.full((BLOCK_N,), 0.0, tl.float32)  # this block's share of the parameter gradients
    sum_phi = tl.full((BLOCK_N,), 0.0, tl.float32)
    sum_baseline = tl.full((BLOCK_N,), 0.0, tl.float32)
    for _ in range(row_start, tl.minimum(row_start + BLOCK_M, M)):
        x = tl.load(x_row + cols * stride_xn, mask=col_ok, other=0.0).to(tl.float32)
        g = tl.load(g_row + cols * stride_gn, mask=col_ok, other=0.0).to(tl.float32)
        e = tl.exp(-2.0 * tl.abs(x))  # tanh as in the forward kernel
        x2 = x * x
        series = x * (1.0 + x2 * (-0.333333333 + x2 * (0.133333333 + x2 * (-0.0539682540 + x2 * 0.0218694885))))
        ratio = (1.0 - e) / (1.0 + e)
        t = tl.where(tl.abs(x) < 0.25, series, tl.where(x < 0.0, -ratio, ratio))
        sech2 = 4.0 * e / ((1.0 + e) * (1.0 + e))  # 1 - tanh(x)^2 without its cancellation near |x| ~ 5
        z = omega * x + phi  # recomputed: nothing but x was saved
        g_cos_t = g * tl.cos(z) * t  # dL/dz * tanh(x)
        # dy/dx = omega cos(z) tanh(x) + sin(z) (1 - tanh(x)^2)
        grad_x = omega * g_cos_t + g * tl.sin(z) * sech2
        tl.store(dx_row + cols, grad_x.to(grad_x_ptr.dtype.element_ty), mask=col_ok)
        sum_omega += g_cos_t * x  # masked columns have g = 0 and add nothing
        sum_phi += g_cos_t
        sum_baseline += g
        x_row += stride_xm
        g_row += stride_gm
        dx_row += stride_dxm
    # row program_id(0) of the (3, n_row_blocks, D) fp32 buffer
    slab = tl.num_programs(0) * D
    out = partial_ptr + tl.program_id(0) * D + cols
    tl.store(out, sum_omega, mask=col_ok)
    tl.store(out + slab, sum_phi, mask=col_ok)
    tl.store(out + 2 * slab, sum_baseline, mask=col_ok)


# ---------------------------------------------------------------------------------------
# Triton on first use

@functools.cache
def _triton():
    """Import Triton (once it imports; a failed import raises again next time)."""
    import triton
    import triton.language  # noqa: F401  (the kernels' tl)
    return triton


@functools.cache
def _kernels(interpret):
    """The jitted (forward, backward) kernels, per interpreter mode: triton.jit reads
    TRITON_INTERPRET (through triton.knobs) when it wraps a function, so a mode switched on after
    an earlier use gets kernels of its own, whoever imported Triton first."""
    triton = _triton()

    def jit(fn):
        # a copy whose globals hold only tl: Triton's interpreter adds its own names to a kernel's
        # globals, which should not land in this module
        scope = {"__name__": __name__, "tl": triton.language}
        copy = types.FunctionType(fn.__code__, scope, fn.__name__)
        copy.__annotations__ = fn.__annotations__  # the constexpr marks, as strings
        return triton.jit(copy)

    return jit(_forward_kernel), jit(_backward_kernel)


def _interpreting():
    return bool(_triton().knobs.runtime.interpret)


def _blocks(n_cols):
    """(BLOCK_N, num_warps) for rows of n_cols: narrow rows get a narrow block and fewer warps."""
    block_n = min(MAX_BLOCK_N, max(16, 1 << (max(n_cols, 1) - 1).bit_length()))
    return block_n, max(1, block_n // 128)


def _grid(n_rows, n_cols):
    return -(-n_rows // BLOCK_M), -(-n_cols // _blocks(n_cols)[0])


def _on_device(t):
    # Triton launches on the current CUDA device: make it the tensor's
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _launch_forward(x, omega, phi, baseline):
    D = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    x2 = x.reshape(-1, D)  # (M, D), a view whenever the leading dims allow one; strides go to the kernel
    M = x2.shape[0]
    block_n, num_warps = _blocks(D)
    forward, _ = _kernels(_interpreting())
    with _on_device(x):
        forward[_grid(M, D)](x2, omega.contiguous(), phi.contiguous(), baseline.contiguous(), y, M, D,
                             x2.stride(0), x2.stride(1), D, BLOCK_M=BLOCK_M, BLOCK_N=block_n, num_warps=num_warps)
    return y


def _launch_backward(x, grad_y, omega, phi):
    D = x.shape[-1]
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:  # no positions: the sums over them are zero
        return (grad_x, torch.zeros_like(omega), torch.zeros_like(phi), torch.zeros_like(omega))
    x2, g2 = x.reshape(-1, D), grad_y.reshape(-1, D)  # (M, D) each
    M = x2.shape[0]
    block_n, num_warps = _blocks(D)
    grid = _grid(M, D)
    partial = torch.empty((3, grid[0], D), dtype=torch.float32, device=x.device)  # (param, row block, D)
    _, backward = _kernels(_interpreting())
    with _on_device(x):
        backward[grid](x2, g2, omega.contiguous(), phi.contiguous(), grad_x, partial, M, D,
                       x2.stride(0), x2.stride(1), g2.stride(0), g2.stride(1), D,
                       BLOCK_M=BLOCK_M, BLOCK_N=block_n, num_warps=num_warps)
    # the blocks' partial sums, added in fp32 by a reduction (a ones @ partial matmul would run
    # as TF32 under allow_tf32); each gradient its own tensor, as a custom op's outputs must be
    grad_omega, grad_phi, grad_baseline = (p.sum(0) for p in partial)
    return grad_x, grad_omega.to(omega.dtype), grad_phi.to(phi.dtype), grad_baseline.to(omega.dtype)


# ---------------------------------------------------------------------------------------
# can it run here?

def available(device_type: str) -> tuple[bool, str]:
    """Whether the kernels run on tensors of device_type ('cuda', 'cpu', ...), and why (or why not)
    in a few words for a start-up log or a one-line error. Cached per device type and mode."""
    try:
        interpret = _interpreting()
    except ImportError:
        return False, "Triton is not installed (pip install triton)"
    except Exception as e:  # a broken install fails in other ways
        return False, f"Triton failed to import: {_first_line(e)}"
    return _probe(device_type, interpret)


def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@functools.cache
def _probe(device_type, interpret):
    if device_type == "cpu" and not interpret:
        return False, "on a CPU the Triton kernel runs only under Triton's interpreter (TRITON_INTERPRET=1)"
    if device_type not in ("cpu", "cuda"):
        return False, f"no Triton kernel for {device_type} tensors"
    if device_type == "cuda" and not torch.cuda.is_available():
        return False, "CUDA is not available"
    try:  # a tiny launch: the driver, the compiler and the kernel's answer
        x = torch.linspace(-3.0, 3.0, 3 * 5, device=device_type).reshape(3, 5)
        omega, phi, baseline = (torch.linspace(lo, hi, 5, device=device_type)
                                for lo, hi in ((0.5, 2.0), (-1.0, 1.0), (0.0, 0.1)))
        got = _launch_forward(x, omega, phi, baseline)
        want = torch.sin(omega * x + phi) * torch.tanh(x) + baseline
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
            return False, f"Triton failed a test launch: wrong answer (max error {(got - want).abs().max().item():.2e})"
    except Exception as e:
        return False, f"Triton failed a test launch: {_first_line(e)}"
    mode = " under the interpreter" if interpret else ""
    return True, f"Triton {_triton().__version__} kernel{mode}"


def _require(device):
    ok, reason = available(device.type)
    if not ok:
        raise RuntimeError(f"the Triton oscillate kernel cannot run on {device}: {reason}")


def _check(x, omega, phi, baseline=None, grad_y=None):
    """Shapes, dtypes and devices the kernels take; a ValueError names what is wrong."""
    if x.dtype not in DTYPES:
        raise ValueError(f"the Triton oscillate kernel takes float32, bfloat16 or float16 x, not {x.dtype}; "
                         "use the PyTorch path for it")
    if x.dim() == 0:
        raise ValueError("the Triton oscillate kernel needs x with a last dimension (the neurons)")
    for name, p in (("omega", omega), ("phi", phi), ("baseline", baseline), ("grad_y", grad_y)):
        if p is None:
            continue
        want = tuple(x.shape) if name == "grad_y" else (x.shape[-1],)
        if tuple(p.shape) != want or p.dtype not in DTYPES or p.device != x.device:
            raise ValueError(f"the Triton oscillate kernel needs {name} of shape {want} on {x.device} in one of "
                             f"{[str(d) for d in DTYPES]}, got {tuple(p.shape)} {p.dtype} on {p.device}")


# ---------------------------------------------------------------------------------------
# the custom ops

@torch.library.custom_op("wigglegpt::oscillate", mutates_args=())
def _oscillate(x: torch.Tensor, omega: torch.Tensor, phi: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    _check(x, omega, phi, baseline)
    _require(x.device)
    return _launch_forward(x, omega, phi, baseline)


@_oscillate.register_fake
def _(x, omega, phi, baseline):
    _check(x, omega, phi, baseline)
    return x.new_empty(x.shape)  # contiguous, as the kernel writes it


@torch.library.custom_op("wigglegpt::oscillate_backward", mutates_args=())
def _oscillate_backward(x: torch.Tensor, grad_y: torch.Tensor, omega: torch.Tensor, phi: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(x, omega, phi, grad_y=grad_y)
    _require(x.device)
    return _launch_backward(x, grad_y, omega, phi)


@_oscillate_backward.register_fake
def _(x, grad_y, omega, phi):
    _check(x, omega, phi, grad_y=grad_y)
    return x.new_empty(x.shape), omega.new_empty(omega.shape), phi.new_empty(phi.shape), omega.new_empty(omega.shape)


def _setup_context(ctx, inputs, output):
    x, omega, phi, baseline = inputs
    ctx.save_for_backward(x, omega, phi)  # nothing else of x's size: backward recomputes the rest
    ctx.baseline_dtype = baseline.dtype


def _backward(ctx, grad_y):
    x, omega, phi = ctx.saved_tensors
    grad_x, grad_omega, grad_phi, grad_baseline = torch.ops.wigglegpt.oscillate_backward(x, grad_y, omega, phi)
    return grad_x, grad_omega, grad_phi, grad_baseline.to(ctx.baseline_dtype)


_oscillate.register_autograd(_backward, setup_context=_setup_context)


def oscillate(x, omega, phi, baseline):
    """y = sin(omega*x + phi) * tanh(x) + baseline over x's last dimension (omega, phi, baseline of
    that size), differentiable, by the fused Triton kernels. x in fp32, bf16 or fp16 (y in x's
    dtype; the parameters may stay fp32 under autocast); check available(x.device.type) first."""
    return torch.ops.wigglegpt.oscillate(x, omega, phi, baseline)


def traffic_bytes(n_rows: int, n_cols: int, x_dtype: torch.dtype) -> dict:
    """Bytes the forward and backward kernels load and store for an (n_rows, n_cols) x of x_dtype,
    with grad_y in x's dtype and fp32 parameters, counted from the kernels' own loads and stores."""
    e, p = x_dtype.itemsize, 4
    n = n_rows * n_cols
    row_blocks = _grid(n_rows, n_cols)[0] if n else 0
    params = row_blocks * n_cols * p  # one parameter vector, read once per block of rows
    partials = 3 * params  # the fp32 partial sums of three gradients, one row per block of rows
    return {
        "forward": 2 * n * e + 3 * params,  # read x, write y; omega, phi, baseline
        "backward": 3 * n * e + 2 * params  # read x and grad_y, write grad_x; omega, phi
                    + 2 * partials  # written by the kernel, read by the .sum(0)
                    + 3 * n_cols * p,  # the three fp32 sums written
    }
