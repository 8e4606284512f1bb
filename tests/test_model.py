"""Protects model_bio.py: the published 124M shape and parameter count, causality, RoPE
(real and the published checkpoints' legacy behaviour), the oscillating neuron's hand-written
backward, the GPT-2 baseline toggles, the sparse gate, the KV cache and the optimizer groups."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from model_bio import GPT, GPTConfig, OscillateFunction, apply_rope, rope_tables
from wigglegpt import optim


def test_published_124m_config_has_exact_parameter_count():
    with torch.device("meta"):  # no memory, no init cost
        model = GPT(GPTConfig())
    assert model.get_num_params() == 123_697_920
    neurons = sum(p.numel() for n, p in model.named_parameters() if n.endswith("activation.omega"))
    assert neurons == 36_864 == 12 * 3072
    assert "transformer.wpe.weight" not in model.state_dict()


def test_gpt2_baseline_toggles_build_standard_gpt2():
    cfg = GPTConfig(vocab_size=50257, bias=True, use_bio_mlp=False, use_rmsnorm=False, use_rope=False)
    with torch.device("meta"):
        model = GPT(cfg)
    # the well-known GPT-2 124M count (with position embeddings)
    assert model.get_num_params(non_embedding=False) == 124_439_808
    keys = set(model.state_dict())
    for key in ("transformer.wpe.weight", "transformer.h.0.ln_1.bias", "transformer.h.0.attn.c_attn.bias",
                "transformer.h.0.mlp.c_fc.bias", "transformer.ln_f.bias"):
        assert key in keys
    assert not any("activation" in k for k in keys)
    assert isinstance(model.transformer.h[0].mlp.activation, torch.nn.GELU)
    assert isinstance(model.transformer.h[0].ln_1, torch.nn.LayerNorm)


def test_state_dict_keys_match_the_original_names():
    model = GPT(tiny_config(n_layer=1))
    assert sorted(model.state_dict()) == sorted([
        "transformer.wte.weight", "lm_head.weight", "transformer.ln_f.weight",
        "transformer.h.0.ln_1.weight", "transformer.h.0.ln_2.weight",
        "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight",
        "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight",
        "transformer.h.0.mlp.activation.omega", "transformer.h.0.mlp.activation.phi",
        "transformer.h.0.mlp.activation.baseline",
    ])
    assert model.transformer.h[0].mlp.activation.omega.shape == (4 * 32,)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied


def test_init_rules():
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=64, vocab_size=512, n_layer=4, n_head=4, n_embd=256)
    model = GPT(cfg)
    omega = torch.cat([b.mlp.activation.omega for b in model.transformer.h])
    phi = torch.cat([b.mlp.activation.phi for b in model.transformer.h])
    assert abs(omega.mean().item() - 1.0) < 0.02 and abs(omega.std().item() - 0.1) < 0.01
    assert abs(phi.mean().item()) < 0.02 and abs(phi.std().item() - 0.1) < 0.01
    assert all(b.mlp.activation.baseline.abs().max() == 0 for b in model.transformer.h)
    c_proj = model.transformer.h[0].mlp.c_proj.weight
    assert abs(c_proj.std().item() - 0.02 / math.sqrt(2 * cfg.n_layer)) < 0.001
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.001


def test_output_shapes_and_loss():
    model = GPT(tiny_config())
    idx = torch.randint(0, 96, (3, 20))
    logits, loss = model(idx, torch.randint(0, 96, (3, 20)))
    assert logits.shape == (3, 20, 96) and loss.ndim == 0
    assert abs(loss.item() - math.log(96)) < 0.3  # near-uniform at init
    logits, loss = model(idx)
    assert logits.shape == (3, 1, 96) and loss is None
    targets = idx.clone()
    targets[:, :10] = -1  # ignored positions
    _, partial = model(idx, targets)
    full_logits, _ = model(idx, idx)
    expected = F.cross_entropy(full_logits[:, 10:].reshape(-1, 96), idx[:, 10:].reshape(-1))
    assert torch.allclose(partial, expected, atol=1e-6)


@pytest.mark.parametrize("overrides", [{}, {"use_rope": False}, {"legacy_rope": True},
                                       {"use_bio_mlp": False, "use_rmsnorm": False, "bias": True}])
def test_causality(overrides):
    torch.manual_seed(0)
    model = GPT(tiny_config(**overrides)).eval()
    idx = torch.randint(0, 96, (2, 16))
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 96
    a, _ = model(idx, idx)
    b, _ = model(changed, changed)
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    head_dim = 16
    cos, sin = rope_tables(head_dim, 64)
    q, k = torch.randn(head_dim), torch.randn(head_dim)

    def score(m, n):
        qm = apply_rope(q.view(1, 1, 1, -1), cos[m:m + 1], sin[m:m + 1])
        kn = apply_rope(k.view(1, 1, 1, -1), cos[n:n + 1], sin[n:n + 1])
        return (qm * kn).sum().item()

    assert score(5, 2) == pytest.approx(score(40, 37), abs=1e-5)
    assert score(9, 0) == pytest.approx(score(30, 21), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)  # and it does depend on it
    # adjacent pairs (2i, 2i+1) are what rotates: pair 0 by angle pos * 1
    x = torch.tensor([1.0, 0.0] + [0.0] * (head_dim - 2)).view(1, 1, 1, -1)
    r = apply_rope(x, cos[3:4], sin[3:4]).flatten()
    assert r[0].item() == pytest.approx(math.cos(3)) and r[1].item() == pytest.approx(math.sin(3))


def test_rope_model_sees_order_without_any_position_buffer_saved():
    model = GPT(tiny_config())
    assert not any("rope" in k for k in model.state_dict())
    assert hasattr(model, "rope_cos")


def test_legacy_rope_is_what_the_original_computed():
    """The original rotated each head's q and k by the angle of position `head index`, the
    same at every time step: scores q.k are unchanged, so legacy_rope = no rotation."""
    torch.manual_seed(0)
    B, n_head, T, head_dim = 2, 4, 6, 8
    q, k = torch.randn(B, n_head, T, head_dim), torch.randn(B, n_head, T, head_dim)
    cos, sin = rope_tables(head_dim, 16)
    per_head_cos, per_head_sin = cos[:n_head].view(1, n_head, 1, -1), sin[:n_head].view(1, n_head, 1, -1)
    q_orig, k_orig = apply_rope(q, per_head_cos, per_head_sin), apply_rope(k, per_head_cos, per_head_sin)
    assert torch.allclose(q_orig @ k_orig.transpose(-1, -2), q @ k.transpose(-1, -2), atol=1e-5)

    # and the legacy model's attention is plain softmax(q.k) attention, for any prompt length
    model = GPT(tiny_config(legacy_rope=True)).eval()
    assert not hasattr(model, "rope_cos")
    logits, _ = model(torch.tensor([[7]]))  # one token: the original crashed below n_head tokens
    assert logits.shape == (1, 1, 96)
    attn = model.transformer.h[0].attn
    x = torch.randn(1, 5, 32)
    qq, kk, vv = attn.c_attn(x).split(32, dim=2)
    qq, kk, vv = (t.view(1, 5, 4, 8).transpose(1, 2) for t in (qq, kk, vv))
    scores = (qq @ kk.transpose(-1, -2)) / math.sqrt(8)
    scores = scores.masked_fill(torch.ones(5, 5).triu(1).bool(), float("-inf"))
    manual = (scores.softmax(-1) @ vv).transpose(1, 2).reshape(1, 5, 32)
    assert torch.allclose(attn(x), attn.c_proj(manual), atol=1e-5)


def test_oscillating_activation_gradcheck_float64():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    params = [torch.randn(6, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    assert torch.autograd.gradcheck(OscillateFunction.apply, (x, *params))


def test_oscillating_activation_matches_the_formula_and_saves_only_inputs():
    torch.manual_seed(0)
    x = torch.randn(4, 5, 8, requires_grad=True)
    omega, phi, baseline = (torch.randn(8, requires_grad=True) for _ in range(3))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = OscillateFunction.apply(x, omega, phi, baseline)
    assert len(saved) == 3 and sum(t.numel() for t in saved) == x.numel() + 16
    ref = torch.sin(omega * x + phi) * torch.tanh(x) + baseline
    assert torch.allclose(y, ref, atol=1e-6)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, omega, phi, baseline), g)
    ref_grads = torch.autograd.grad(ref, (x, omega, phi, baseline), g)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_oscillating_activation_under_autocast_and_compile():
    torch.manual_seed(0)
    model = GPT(tiny_config())
    idx = torch.randint(0, 96, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and model.transformer.h[0].mlp.activation.omega.grad is not None
    x = torch.randn(16, 8, dtype=torch.bfloat16)
    y = OscillateFunction.apply(x, torch.ones(8), torch.zeros(8), torch.zeros(8))
    assert y.dtype == torch.bfloat16  # keeps the autocast dtype: no fp32 copy downstream

    def f(x, w, p, b):
        return OscillateFunction.apply(x, w, p, b).square().sum()

    inputs = [torch.randn(6, 8, requires_grad=True)] + [torch.randn(8, requires_grad=True) for _ in range(3)]
    compiled = torch.compile(f, backend="aot_eager")  # traces the autograd.Function (no C++ build)
    out = compiled(*inputs)
    grads = torch.autograd.grad(out, inputs)
    ref = torch.autograd.grad(f(*inputs), inputs)
    assert torch.allclose(out, f(*inputs), atol=1e-5)
    for a, b in zip(grads, ref):
        assert torch.allclose(a, b, atol=1e-5)


def test_lightweight_gate_reports_the_firing_share_and_learns():
    torch.manual_seed(0)
    model = GPT(tiny_config(use_sparse_gate=True, bio_threshold=0.25))
    assert model.firing_share() is None  # nothing measured before a forward
    idx = torch.randint(0, 96, (2, 16))
    _, loss = model(idx, idx)
    loss.backward()
    f = model.firing_share()
    assert 0.0 <= f < 0.3  # h ~ N(0, small): most units stay under the threshold at init
    assert model.firing_share() is None  # read once: the running mean starts over
    mlp = model.transformer.h[0].mlp
    assert mlp.gate_weight.grad is not None and mlp.gate_weight.grad.abs().sum() > 0
    assert mlp.gate_bias.grad is not None and mlp.gate_bias.grad.abs().sum() > 0
    assert "transformer.h.0.mlp.gate_weight" in model.state_dict()
    assert GPT(tiny_config()).firing_share() is None
    # the share of units whose voltage h * gate_weight + gate_bias is above the threshold,
    # averaged over the forwards since the last read
    one = GPT(tiny_config(n_layer=1, use_sparse_gate=True))
    with torch.no_grad():
        one.transformer.h[0].mlp.gate_weight.zero_()
        one.transformer.h[0].mlp.gate_bias.fill_(0.3)  # every unit fires ...
        one(idx)
        one.transformer.h[0].mlp.gate_bias.fill_(0.2)  # ... then none
        one(idx)
    assert one.firing_share() == pytest.approx(0.5)


def test_event_layer_gate_is_the_v2_model():
    """The published v2 sparse model: 4 x 6 x 384, LayerNorm, learned positions, no biases,
    counted as the original did (position table left out): 45.31M."""
    cfg = GPTConfig(n_layer=4, n_head=6, n_embd=384, bias=False, use_rmsnorm=False, use_rope=False,
                    use_sparse_gate=True, sparse_gate_kind="event_layer", bio_threshold=0.25)
    with torch.device("meta"):
        model = GPT(cfg)
    C, H = 384, 4 * 384
    per_layer = 4 * C * C + 2 * C * H + 2 * H * H + 2 * 3 * H + 2 * C  # attn, MLP, gate + transform, 2 neurons, 2 LNs
    assert model.get_num_params() == 50304 * C + 4 * per_layer + C == 45_309_312
    assert round(model.get_num_params() / 1e6, 2) == 45.31
    keys = {k for k in model.state_dict() if k.startswith("transformer.h.0.mlp.")}
    assert keys == {"transformer.h.0.mlp." + k for k in (
        "c_fc.weight", "c_proj.weight", "oscillating.omega", "oscillating.phi", "oscillating.baseline",
        "sparse_gate.gate.weight", "sparse_gate.transform.weight", "sparse_gate.activation.omega",
        "sparse_gate.activation.phi", "sparse_gate.activation.baseline")}
    torch.manual_seed(0)
    small = GPT(tiny_config(use_sparse_gate=True, sparse_gate_kind="event_layer"))
    idx = torch.randint(0, 96, (2, 16))
    _, loss = small(idx, idx)
    loss.backward()
    assert small.firing_share() == 1.0  # sigmoid(gate(h)) ~ 0.5 > 0.25 everywhere at init
    gate = small.transformer.h[0].mlp.sparse_gate
    assert gate.gate.weight.grad.abs().sum() > 0 and gate.activation.omega.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="sparse_gate_kind"):
        tiny_config(sparse_gate_kind="full")
    with pytest.raises(ValueError, match="use_bio_mlp"):
        tiny_config(use_sparse_gate=True, sparse_gate_kind="event_layer", use_bio_mlp=False)


@pytest.mark.parametrize("kind", ["lightweight", "event_layer"])
def test_sparse_gates_keep_the_autocast_dtype_in_what_backward_saves(kind):
    """An fp32 gate parameter times the bf16 hidden tensor would make it (and all the MLP keeps
    for backward) fp32; every activation-sized tensor saved must stay bf16."""
    torch.manual_seed(0)
    model = GPT(tiny_config(use_sparse_gate=True, sparse_gate_kind=kind))
    mlp = model.transformer.h[0].mlp
    x = torch.randn(2, 16, 32, requires_grad=True)
    saved = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out, _ = mlp(x)
    big = [t for t in saved if t.numel() >= 2 * 16 * 128]  # hidden-sized: (2, 16, 4 * 32)
    assert out.dtype == torch.bfloat16 and len(big) >= 3
    assert all(t.dtype == torch.bfloat16 for t in big), [t.dtype for t in big]
    out.float().sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in mlp.parameters())


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = GPT(tiny_config())
    ckpt = GPT(tiny_config(gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 96, (2, 16))
    for m in (plain, ckpt):
        m(idx, idx)[1].backward()
    for (n, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), n


@pytest.mark.parametrize("overrides", [{}, {"use_rope": False}, {"legacy_rope": True}])
def test_kv_cache_prefill_and_decode_match_full_forward(overrides):
    torch.manual_seed(0)
    model = GPT(tiny_config(**overrides)).eval()
    idx = torch.randint(0, 96, (2, 24))
    with torch.no_grad():
        full, _ = model(idx, idx)
        cache = model.new_kv_cache()
        first, _ = model(idx[:, :10], kv_cache=cache)
        assert torch.allclose(first[:, 0], full[:, 9], atol=1e-5)
        for t in range(10, 16):  # one token at a time
            step, _ = model(idx[:, t:t + 1], kv_cache=cache)
            assert torch.allclose(step[:, 0], full[:, t], atol=1e-5)
        chunk, _ = model(idx[:, 16:24], kv_cache=cache)  # several tokens after a cached prefix
        assert torch.allclose(chunk[:, 0], full[:, 23], atol=1e-5)
        assert cache.pos == 24
        with pytest.raises(ValueError):
            model(torch.zeros(2, 9, dtype=torch.long), kv_cache=cache)  # past block_size


def test_optimizer_groups_cover_every_parameter_once():
    model = GPT(tiny_config(use_sparse_gate=True))
    opt = optim.make_optimizer(model, "adamw", 0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    no_decay_ids = {id(p) for p in no_decay["params"]}
    for name, p in model.named_parameters():
        one_d = any(s in name for s in ("omega", "phi", "baseline", "ln_", "gate_w", "gate_b"))
        assert (id(p) in no_decay_ids) == one_d, name


def test_estimate_mfu_follows_the_palm_formula():
    model = GPT(tiny_config())
    n = model.get_num_params()
    expected = (6 * n + 12 * 2 * 32 * 32) * 1000 / 0.5 / 1e12
    assert model.estimate_mfu(1000, 0.5, 1e12) == pytest.approx(expected)


@pytest.mark.parametrize("bad, message", [
    (dict(n_embd=30, n_head=4), "divisible"),
    (dict(n_layer=2.5), "int"),
    (dict(use_rope="yes"), "True or False"),
    (dict(n_layer=0), "positive"),
])
def test_config_errors_are_clear(bad, message):
    with pytest.raises((TypeError, ValueError), match=message):
        tiny_config(**bad)
    with pytest.raises(TypeError, match="unexpected keyword"):
        GPTConfig(n_layers=3)
