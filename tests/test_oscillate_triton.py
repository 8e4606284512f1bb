"""Protects wigglegpt/oscillate_triton.py, the fused Triton kernels of the oscillating neuron:
the output and its four gradients (x, omega, phi, baseline) against float64 autograd of
sin(omega*x + phi) * tanh(x) + baseline (fp32 within 1e-5, bf16/fp16 within their rounding) for
odd sizes, several row blocks, the 124M width, 1-D to 4-D inputs, non-contiguous views, omega near
0, huge |x| and empty inputs; that backward saves nothing of x's size but x; the custom op's
registration (opcheck), torch.compile(fullgraph=True), checkpointing and autocast; available()'s
answers with and without Triton's interpreter or Triton itself; traffic_bytes against GELU's.
Runs on CUDA when there is one, else on the CPU through Triton's interpreter (slow: small sizes)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, require_module
from wigglegpt import oscillate_triton as ot  # imports without Triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module", autouse=True)
def interpreter():
    """Without CUDA, Triton's interpreter, set before the kernels' first use (which jits them) and
    for this module only: other tests' subprocesses must not inherit it."""
    with pytest.MonkeyPatch.context() as env:
        if DEVICE == "cpu":
            env.setenv("TRITON_INTERPRET", "1")
        yield


@pytest.fixture(autouse=True)
def triton():
    return require_module("triton", "pip install triton")


def params(D):
    """omega, phi, baseline: fp32 leaves on DEVICE, omega around 1 as the init makes it."""
    omega, phi, baseline = 1.0 + 0.5 * torch.randn(D), torch.randn(D), 0.1 * torch.randn(D)
    return [t.to(DEVICE).requires_grad_() for t in (omega, phi, baseline)]


def reference(x, omega, phi, baseline, grad_y):
    """y and the gradients of sum(grad_y * y) by float64 autograd, from the same (rounded) inputs."""
    leaves = [t.detach().double().requires_grad_() for t in (x, omega, phi, baseline)]
    x64, omega64, phi64, baseline64 = leaves
    y = torch.sin(omega64 * x64 + phi64) * torch.tanh(x64) + baseline64
    return y.detach(), torch.autograd.grad(y, leaves, grad_y.double())


def kernel(x, omega, phi, baseline, grad_y):
    y = ot.oscillate(x, omega, phi, baseline)
    return y, torch.autograd.grad(y, (x, omega, phi, baseline), grad_y)


def assert_close(got, want, rtol=1e-5, atol_scale=1e-6):
    """Within rtol, or atol_scale of the tensor's magnitude for the entries near zero."""
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol_scale * max(want.abs().max().item(), 1e-30))


def check(x, omega, phi, baseline, grad_y, rtol=1e-5, atol_scale=1e-6):
    y, grads = kernel(x, omega, phi, baseline, grad_y)
    want_y, want_grads = reference(x, omega, phi, baseline, grad_y)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert_close(y, want_y, rtol, atol_scale)
    for name, got, want, leaf in zip(("x", "omega", "phi", "baseline"), grads, want_grads, (x, omega, phi, baseline)):
        assert got.dtype == leaf.dtype and got.shape == leaf.shape, name
        assert torch.isfinite(got).all(), name
        assert_close(got, want, rtol, atol_scale)


# shapes: not multiples of the blocks, 3 x 2 blocks (64 rows, 512 columns), the 124M width, 1-D to 4-D
@pytest.mark.parametrize("shape", [(3, 7, 37), (5, 130), (130, 600), (3, 3072), (37,), (2, 2, 3, 9)],
                         ids=lambda s: "x".join(map(str, s)))
def test_matches_the_formula_in_fp32(shape):
    torch.manual_seed(0)
    x = (2 * torch.randn(shape)).to(DEVICE).requires_grad_()
    check(x, *params(shape[-1]), torch.randn(shape, device=DEVICE))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_within_its_rounding(dtype):
    """x and grad_y in bf16/fp16 with fp32 parameters (as under autocast): y and grad_x within
    about an ulp of the dtype, the parameter gradients (fp32) within 1e-5."""
    torch.manual_seed(0)
    x = (2 * torch.randn(5, 130)).to(DEVICE, dtype).requires_grad_()
    omega, phi, baseline = params(130)
    grad_y = torch.randn(5, 130, device=DEVICE).to(dtype)
    y, grads = kernel(x, omega, phi, baseline, grad_y)
    want_y, want_grads = reference(x, omega, phi, baseline, grad_y)
    eps = torch.finfo(dtype).eps  # one ulp at 1.0
    assert y.dtype == grads[0].dtype == dtype
    assert_close(y, want_y, rtol=eps, atol_scale=eps / 4)
    assert_close(grads[0], want_grads[0], rtol=eps, atol_scale=eps / 4)
    for got, want in zip(grads[1:], want_grads[1:]):
        assert got.dtype == torch.float32
        assert_close(got, want, rtol=1e-5, atol_scale=1e-6)


@pytest.mark.parametrize("layout", ["transposed", "sliced", "strided_3d", "expanded_grad"])
def test_non_contiguous_inputs(layout):
    torch.manual_seed(0)
    D = 37
    if layout == "transposed":  # (6, 37) with strides (1, 6); grad_y transposed too
        x = torch.randn(D, 6, device=DEVICE, requires_grad=True).t()
        grad_y = torch.randn(D, 6, device=DEVICE).t()
    elif layout == "sliced":  # rows of a wider tensor: row stride 50
        x = torch.randn(6, 50, device=DEVICE, requires_grad=True)[:, 3:3 + D]
        grad_y = torch.randn(6, 50, device=DEVICE)[:, :D]
    elif layout == "strided_3d":  # every other time step: no (M, D) view exists
        x = torch.randn(2, 10, D, device=DEVICE, requires_grad=True)[:, ::2]
        grad_y = torch.randn(2, 10, D, device=DEVICE)[:, 1::2]
    else:  # the gradient of y.sum(): one value broadcast, all strides 0
        x = torch.randn(6, D, device=DEVICE, requires_grad=True)
        grad_y = torch.tensor(0.7, device=DEVICE).expand(6, D)
    assert not x.is_contiguous() or layout == "expanded_grad"
    check(x, *params(D), grad_y)


def test_omega_near_zero():
    torch.manual_seed(0)
    x = torch.randn(5, 40, device=DEVICE, requires_grad=True)
    _, phi, baseline = params(40)
    omega = torch.full((40,), 1e-8, device=DEVICE, requires_grad=True)
    check(x, omega, phi, baseline, torch.randn(5, 40, device=DEVICE))


def test_huge_inputs_saturate_without_overflow():
    """|x| up to 1e4: tanh is exactly +-1 and its derivative 0, nothing is inf or NaN. At
    z = omega*x ~ 1e4 fp32 itself only knows z to ~1e-3 (one ulp), so sin(z) and cos(z) are
    compared to what they are at that precision, not to 1e-5."""
    torch.manual_seed(0)
    big = torch.tensor([1e4, -1e4, 50.0, -50.0, 20.0, -9.0, 0.0, 1e-6, -3e-3, 0.2, -0.3, 1.0])
    x = big.repeat(3, 1).to(DEVICE).requires_grad_()
    omega, phi, baseline = params(big.numel())
    grad_y = torch.randn(x.shape, device=DEVICE)
    y, grads = kernel(x, omega, phi, baseline, grad_y)
    assert all(torch.isfinite(t).all() for t in (y, *grads))
    want_y, want_grads = reference(x, omega, phi, baseline, grad_y)
    z_ulp = (omega.detach() * x.detach() + phi.detach()).abs().max().item() * torch.finfo(torch.float32).eps
    rows, omega_max = x.shape[0], omega.abs().max().item()
    torch.testing.assert_close(y.double(), want_y, rtol=1e-5, atol=4 * z_ulp)
    torch.testing.assert_close(grads[0].double(), want_grads[0], rtol=1e-5, atol=4 * z_ulp * omega_max)
    # grad_omega sums x cos(z) tanh(x) grad_y: the error of cos(z) times |x| <= 1e4
    torch.testing.assert_close(grads[1].double(), want_grads[1], rtol=1e-5, atol=4 * z_ulp * rows * 1e4)
    torch.testing.assert_close(grads[2].double(), want_grads[2], rtol=1e-5, atol=4 * z_ulp * rows)
    torch.testing.assert_close(grads[3].double(), want_grads[3], rtol=1e-5, atol=1e-6)
    # where |x| <= 1 (the tanh series and its edge), elementwise and tighter
    small = slice(6, None)
    assert_close(y[:, small], want_y[:, small], rtol=1e-6, atol_scale=1e-7)
    assert_close(grads[0][:, small], want_grads[0][:, small], rtol=1e-6, atol_scale=1e-7)


def test_tanh_and_its_derivative_keep_their_relative_precision():
    """With omega = 0, phi = pi/2 and baseline = 0, y = tanh(x) and grad_x = 1 - tanh(x)^2, each
    to 1e-6 relative where the plain formulas cancel: near 0, where fp32's 1 - exp(-2|x|) keeps
    ~3 % of tanh(1e-6), and at |x| ~ 9, where fp32's 1 - t*t is 0 or 1.2e-7 instead of 6e-8."""
    x = torch.tensor([[1e-6, -3e-3, 0.2, -0.26, 3.0, -5.0, 7.0, 9.0, -9.0]], device=DEVICE, requires_grad=True)
    D = x.shape[-1]
    omega, baseline = (torch.zeros(D, device=DEVICE, requires_grad=True) for _ in range(2))
    phi = torch.full((D,), torch.pi / 2, device=DEVICE, requires_grad=True)
    y, grads = kernel(x, omega, phi, baseline, torch.ones_like(x))
    want_y, want_grads = reference(x, omega, phi, baseline, torch.ones_like(x))
    torch.testing.assert_close(y.double(), want_y, rtol=1e-6, atol=0)
    torch.testing.assert_close(grads[0].double(), want_grads[0], rtol=1e-6, atol=0)


@pytest.mark.parametrize("shape", [(0, 37), (2, 0, 37)])
def test_empty_input(shape):
    x = torch.randn(shape, device=DEVICE, requires_grad=True)
    omega, phi, baseline = params(37)
    y, grads = kernel(x, omega, phi, baseline, torch.randn(shape, device=DEVICE))
    assert y.shape == x.shape and grads[0].shape == x.shape
    for g in grads[1:]:
        assert g.shape == (37,) and not g.any()


def test_backward_saves_only_x_and_two_parameter_vectors():
    x = torch.randn(4, 37, device=DEVICE, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ot.oscillate(x, *params(37))
    assert sorted(saved) == [(4, 37), (37,), (37,)]


def test_other_dtypes_are_refused_in_one_line():
    omega, phi, baseline = params(8)
    with pytest.raises(ValueError, match="float64"):
        ot.oscillate(torch.randn(3, 8, device=DEVICE, dtype=torch.float64), omega, phi, baseline)
    with pytest.raises(ValueError, match="omega of shape"):
        ot.oscillate(torch.randn(3, 9, device=DEVICE), omega, phi, baseline)


def test_opcheck():
    """Schema, fake tensors, the autograd registration and AOT dispatch with dynamic shapes."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 37, device=DEVICE, requires_grad=True)
    omega, phi, baseline = params(37)
    torch.library.opcheck(torch.ops.wigglegpt.oscillate.default, (x, omega, phi, baseline))
    args = (x.detach(), torch.randn(3, 5, 37, device=DEVICE), omega.detach(), phi.detach())
    torch.library.opcheck(torch.ops.wigglegpt.oscillate_backward.default, args)


def test_compile_fullgraph_matches_eager():
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    torch._dynamo.reset()
    counters.clear()
    weight = torch.randn(37, 16, device=DEVICE, requires_grad=True)
    omega, phi, baseline = params(37)

    def mlp(h):
        return (ot.oscillate(h @ weight.t(), omega, phi, baseline) ** 2).sum()

    h = torch.randn(2, 3, 16, device=DEVICE)
    leaves = (weight, omega, phi, baseline)
    loss = torch.compile(mlp, fullgraph=True, backend="aot_eager")(h)
    grads = torch.autograd.grad(loss, leaves)
    assert dict(counters["graph_break"]) == {}
    eager_loss = mlp(h)
    for got, want in zip(grads, torch.autograd.grad(eager_loss, leaves)):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(loss, eager_loss)


def test_checkpoint_gives_the_same_gradients():
    from torch.utils.checkpoint import checkpoint
    torch.manual_seed(0)
    x = torch.randn(4, 37, device=DEVICE, requires_grad=True)
    leaves = (x, *params(37))
    plain = torch.autograd.grad(ot.oscillate(*leaves).square().sum(), leaves)
    out = checkpoint(lambda *a: ot.oscillate(*a).square().sum(), *leaves, use_reentrant=False)
    for got, want in zip(torch.autograd.grad(out, leaves), plain):
        torch.testing.assert_close(got, want)


def test_autocast_keeps_x_in_bf16_and_the_parameters_in_fp32():
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 37).to(DEVICE)
    omega, phi, baseline = params(37)
    h = torch.randn(4, 16, device=DEVICE)
    with torch.autocast(device_type=DEVICE, dtype=torch.bfloat16):
        x = linear(h)
        x.retain_grad()
        y = ot.oscillate(x, omega, phi, baseline)
    assert x.dtype == y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    assert x.grad.dtype == torch.bfloat16
    assert omega.grad.dtype == phi.grad.dtype == baseline.grad.dtype == torch.float32
    _, want = reference(x, omega, phi, baseline, 2 * y.detach().float())
    assert_close(omega.grad, want[1], rtol=1e-5)


def test_available_here():
    ok, reason = ot.available(DEVICE)
    assert ok and reason.startswith("Triton ") and "kernel" in reason
    assert ("interpreter" in reason) == (DEVICE == "cpu")
    assert ot.available("mps") == (False, "no Triton kernel for mps tensors")


AVAILABLE_SCRIPT = """
import json, os, sys
import torch
sys.path.insert(0, sys.argv[1])
sys.modules["triton"] = None  # as if Triton were not installed
from wigglegpt import oscillate_triton as ot
answers = [ot.available("cuda"), ot.available("cpu")]
try:
    ot.oscillate(*(torch.zeros(3) for _ in range(4)))
except RuntimeError as e:
    answers.append(str(e))
del sys.modules["triton"]  # now it is
answers.append(ot.available("cpu"))  # TRITON_INTERPRET unset
os.environ["TRITON_INTERPRET"] = "1"
answers.append(ot.available("cpu"))
print(json.dumps(answers))
"""


def test_available_without_triton_or_its_interpreter():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", AVAILABLE_SCRIPT, ROOT], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    no_triton_cuda, no_triton_cpu, error, no_interpreter, interpreter = json.loads(result.stdout)
    assert no_triton_cuda == no_triton_cpu == [False, "Triton is not installed (pip install triton)"]
    assert error.startswith("the Triton oscillate kernel cannot run on cpu: Triton is not installed")
    assert no_interpreter == [False, "on a CPU the Triton kernel runs only under Triton's interpreter "
                                     "(TRITON_INTERPRET=1)"]
    assert interpreter[0] and interpreter[1].endswith("kernel under the interpreter")


def test_traffic_is_within_1_3x_of_gelu():
    M, D, dtype = 8192, 3072, torch.bfloat16
    e = dtype.itemsize
    gelu = {"forward": 2 * M * D * e, "backward": 3 * M * D * e}  # read x, write y; read x and grad_y, write grad_x
    traffic = ot.traffic_bytes(M, D, dtype)
    for pass_ in ("forward", "backward"):
        assert gelu[pass_] <= traffic[pass_] <= 1.3 * gelu[pass_], pass_
