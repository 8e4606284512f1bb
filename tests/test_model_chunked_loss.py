"""Protects the training loss that never holds the full logits: model(idx, targets,
return_logits=False) and LinearCrossEntropy give F.cross_entropy's loss and gradients (fp32 to
1e-6, fp64 exactly, masked targets -1 included, nothing kept: nan as F.cross_entropy), under
autocast too, without a graph break under torch.compile, with gradient checkpointing; and the
model's call contract stays: model(idx, targets) the full logits and the loss, model(idx) the
last position's logits."""

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from model_bio import GPT, LinearCrossEntropy, loss_chunk_rows


def rel_error(got, want):
    """The relative error of a whole tensor, ||got - want|| / ||want||."""
    return ((got - want).norm() / want.norm().clamp(min=1e-30)).item()


def plain(x, w, t):
    return F.cross_entropy(x @ w.t(), t, ignore_index=-1)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("chunk", [7, 256, 10_000])  # several chunks, the last one short; one chunk
def test_equals_cross_entropy(dtype, tol, chunk):
    torch.manual_seed(0)
    N, C, V = 600, 16, 1000
    x = torch.randn(N, C, dtype=dtype, requires_grad=True)
    w = (0.3 * torch.randn(V, C, dtype=dtype)).requires_grad_()
    t = torch.randint(V, (N,))
    t[::7] = -1  # ignored positions, as masked SFT targets
    want = plain(x, w, t)
    want_grads = torch.autograd.grad(2.5 * want, (x, w))  # a non-unit upstream gradient
    got = LinearCrossEntropy.apply(x, w, t, chunk)
    got_grads = torch.autograd.grad(2.5 * got, (x, w))
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=tol, atol=0)
    for g, ref in zip(got_grads, want_grads):
        assert g.dtype == ref.dtype
        assert rel_error(g, ref) < tol


def test_nothing_kept_is_nan_as_cross_entropy():
    x, w = torch.randn(5, 4, requires_grad=True), torch.randn(9, 4)
    t = torch.full((5,), -1)
    assert torch.isnan(plain(x, w, t)) and torch.isnan(LinearCrossEntropy.apply(x, w, t, 2))


def test_chunk_rows_keep_a_chunk_near_the_hidden_states_size():
    assert loss_chunk_rows(2048, 64, 50304) == 256  # at least 256 positions
    assert loss_chunk_rows(16 * 1024, 768, 50304) == 256  # the 124M model at B = 16: 64 chunks
    rows = loss_chunk_rows(64 * 1024, 768, 50304)  # B = 64: a chunk's logits as large as x, no larger
    assert rows * 50304 >= 64 * 1024 * 768 > (rows - 1) * 50304


def model_and_batch(**overrides):
    torch.manual_seed(0)
    model = GPT(tiny_config(**overrides))
    idx = torch.randint(model.config.vocab_size, (3, model.config.block_size))
    targets = idx.roll(-1, 1)
    targets[:, :4] = -1
    return model, idx, targets


def loss_and_grads(model, idx, targets, **kw):
    _, loss = model(idx, targets, **kw)
    return loss, torch.autograd.grad(loss, [p for p in model.parameters()])


@pytest.mark.parametrize("overrides", [{}, {"use_bio_mlp": False, "use_rope": False, "use_rmsnorm": False},
                                       {"gradient_checkpointing": True}])
def test_model_loss_and_parameter_gradients_equal_the_plain_path(overrides):
    model, idx, targets = model_and_batch(**overrides)
    want, want_grads = loss_and_grads(model, idx, targets)
    got, got_grads = loss_and_grads(model, idx, targets, return_logits=False)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    for (name, p), g, ref in zip(model.named_parameters(), got_grads, want_grads):
        assert rel_error(g, ref) < 1e-6, name


def test_the_call_contract_is_kept():
    model, idx, targets = model_and_batch()
    logits, loss = model(idx, targets)
    assert logits.shape == (*idx.shape, model.config.vocab_size) and loss.dim() == 0
    logits, loss = model(idx)
    assert logits.shape == (idx.shape[0], 1, model.config.vocab_size) and loss is None
    logits, loss = model(idx, targets, return_logits=False)
    assert logits is None and loss.dim() == 0


def test_no_grad_gives_the_same_loss():
    model, idx, targets = model_and_batch()
    with torch.no_grad():
        a, b = model(idx, targets)[1], model(idx, targets, return_logits=False)[1]
    torch.testing.assert_close(b, a, rtol=1e-6, atol=0)


def test_autocast_bfloat16_follows_the_plain_path():
    model, idx, targets = model_and_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, want_grads = loss_and_grads(model, idx, targets)
        got, got_grads = loss_and_grads(model, idx, targets, return_logits=False)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-3, atol=0)
    for p, g, ref in zip(model.parameters(), got_grads, want_grads):
        assert g.dtype == p.dtype
        assert rel_error(g, ref) < 3e-2  # bf16 rounding of the matmuls


def test_compiles_without_a_graph_break():
    model, idx, targets = model_and_batch()
    want, _ = loss_and_grads(model, idx, targets, return_logits=False)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # fullgraph: a break is an error
    got, grads = loss_and_grads(compiled, idx, targets, return_logits=False)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    assert all(torch.isfinite(g).all() for g in grads)
