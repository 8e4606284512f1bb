"""Protects the speed switches of training (compile_choice and activation_choice in wigglegpt/gpu.py): activation_kernel ('auto' | 'triton' | 'torch') and
compile ('auto' | True | False) as settings, their one-line errors, what the start-up log says
runs, compile='auto' choosing eager off CUDA and without Triton, a compiled run's first eval
running eager (the no-grad graph is not compiled before the training graph), the first compiled
iteration's time printed, DDP without buffer broadcasts, and the Triton kernel training the
same model as the PyTorch path (through Triton's interpreter on the CPU)."""

import os
import subprocess
import sys

import pytest
import torch

import model_bio
import train_bio
from wigglegpt import gpu, oscillate_triton
from conftest import require_module, tiny_config
from model_bio import GPT, GPTConfig
from wigglegpt.common import UserError
from test_train import ROOT, TRAIN, argv, cli_env, tiny


def run_train(settings, **env):
    return subprocess.run([sys.executable, TRAIN, *argv(settings)], cwd=ROOT, capture_output=True, text=True,
                          env=cli_env(**env), timeout=300)


def one_line_error(r, *words):
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_old_configs_take_auto_and_unknown_kernels_are_refused():
    assert GPTConfig().activation_kernel == "auto"
    with pytest.raises(ValueError, match="activation_kernel"):
        GPTConfig(activation_kernel="fast")


def test_bad_values_are_one_line(tmp_path):
    one_line_error(run_train(tiny(tmp_path, activation_kernel="fast")), "activation_kernel")
    one_line_error(run_train(tiny(tmp_path, compile="maybe")), "compile='maybe'", "'auto', True or False")


def test_triton_kernel_on_a_cpu_without_the_interpreter_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, TRAIN, *argv(tiny(tmp_path, activation_kernel="triton"))], cwd=ROOT,
                       capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=300)
    one_line_error(r, "activation_kernel='triton'", "cpu")
    assert not (tmp_path / "out" / "ckpt.pt").exists()


def test_compile_auto_runs_eager_on_the_cpu_and_says_which_path_runs(tmp_path):
    r = run_train(tiny(tmp_path, max_iters=2, eval_interval=2))
    assert r.returncode == 0, r.stderr
    assert "compile='auto': running eager on cpu" in r.stdout
    assert "activation: PyTorch ops (activation_kernel='auto'" in r.stdout and "; eager" in r.stdout
    r = run_train(tiny(tmp_path, max_iters=2, eval_interval=2, activation_kernel="torch", compile=False,
                       overwrite=True))
    assert r.returncode == 0 and "compile='auto'" not in r.stdout
    assert "activation: PyTorch ops (activation_kernel='torch')" in r.stdout


def test_compile_choice(monkeypatch):
    monkeypatch.setattr(model_bio, "_KERNEL_CHOICES", {})
    assert gpu.compile_choice(False, "cuda") == (False, "")
    assert gpu.compile_choice(True, "cpu") == (True, "")
    monkeypatch.setattr(oscillate_triton, "available", lambda device_type: (False, "Triton is missing"))
    use, note = gpu.compile_choice("auto", "cuda")
    assert not use and "Triton is missing" in note and "pip install triton" in note
    with pytest.raises(UserError, match="compile=True needs a working Triton"):
        gpu.compile_choice(True, "cuda")
    monkeypatch.setattr(oscillate_triton, "available", lambda device_type: (True, "Triton kernel"))
    assert gpu.compile_choice("auto", "cuda")[0] is True


def test_activation_choice(monkeypatch):
    monkeypatch.setattr(model_bio, "_KERNEL_CHOICES", {})  # decisions are kept per process: start afresh
    assert gpu.activation_choice(tiny_config(use_bio_mlp=False), "cpu").startswith("GELU")
    assert gpu.activation_choice(tiny_config(activation_kernel="torch"), "cuda").startswith("PyTorch ops")
    monkeypatch.setattr(oscillate_triton, "available", lambda device_type: (False, "no Triton here"))
    monkeypatch.setattr(model_bio, "kernel_problem", lambda device_type: "no Triton here")
    with pytest.raises(UserError, match="no Triton here"):
        gpu.activation_choice(tiny_config(activation_kernel="triton"), "cuda")
    assert "no Triton here" in gpu.activation_choice(tiny_config(), "cuda")
    monkeypatch.setattr(oscillate_triton, "available", lambda device_type: (True, "Triton 9 kernel"))
    monkeypatch.setattr(model_bio, "kernel_problem", lambda device_type: None)
    monkeypatch.setattr(model_bio, "_KERNEL_CHOICES", {})
    assert gpu.activation_choice(tiny_config(), "cuda") == "fused Triton kernel (Triton 9 kernel)"
    assert gpu.activation_choice(tiny_config(), "cpu").startswith("PyTorch ops")  # auto: CUDA only


class RecordingCompile(torch.nn.Module):
    """Stands in for torch.compile's module: records whether each call had gradients on."""
    calls = []

    def __init__(self, model, **kwargs):
        super().__init__()
        self.inner = model

    def forward(self, *args, **kwargs):
        RecordingCompile.calls.append(torch.is_grad_enabled())
        return self.inner(*args, **kwargs)


def test_a_compiled_run_compiles_the_training_step_first(tmp_path, monkeypatch, capsys):
    RecordingCompile.calls = []
    monkeypatch.setattr(train_bio.torch, "compile", RecordingCompile)
    summary = train_bio.train(tiny(tmp_path, compile=True, max_iters=4, eval_interval=2))
    assert summary["reason"] == "max_iters"
    calls = RecordingCompile.calls
    assert calls and calls[0] is True  # the first graph seen is the training one, not iter 0's eval
    assert False in calls  # later evals use the compiled model
    out = capsys.readouterr().out
    assert out.count("torch.compile: the first iteration took") == 1


DDP_CHECK = """
import torch, torch.distributed as dist
from conftest import tiny_config
from model_bio import GPT
from wigglegpt.distributed import Dist, data_parallel
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
model = GPT(tiny_config(use_sparse_gate=True))
ddp = data_parallel(model, Dist(True, 0, 0, 1), "cpu")
assert getattr(ddp, "forward_sync_buffers", getattr(ddp, "broadcast_buffers", None)) is False
idx = torch.randint(96, (2, 8))
with ddp.no_sync():
    ddp(idx, idx, return_logits=False)[1].backward()
ddp(idx, idx, return_logits=False)[1].backward()
assert model.firing_stats[1].item() == 2  # the counters stay this rank's own
print("ok", flush=True)
"""


def test_ddp_does_not_broadcast_buffers():
    # in a process of its own: a process group torn down under pytest can hang in gloo's destructor
    r = subprocess.run([sys.executable, "-c", DDP_CHECK], cwd=os.path.join(ROOT, "tests"), capture_output=True,
                       text=True, env=cli_env(PYTHONPATH=ROOT), timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-2000:]


# --- the Triton kernel through the whole model and the real command (interpreter on the CPU)

@pytest.fixture
def interpreter(monkeypatch):
    """The device the kernel runs on here: CUDA, or the CPU under Triton's interpreter."""
    require_module("triton", "pip install triton")
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    from wigglegpt import oscillate_triton
    ok, why = oscillate_triton.available("cuda" if torch.cuda.is_available() else "cpu")
    assert ok, why
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("overrides", [{}, {"use_sparse_gate": True, "sparse_gate_kind": "event_layer"},
                                       {"gradient_checkpointing": True}])
def test_whole_model_loss_and_gradients_equal_the_pytorch_path(overrides, interpreter):
    device = interpreter
    torch.manual_seed(0)
    ref = GPT(tiny_config(activation_kernel="torch", **overrides)).to(device)
    fused = GPT(tiny_config(activation_kernel="triton", **overrides)).to(device)
    fused.load_state_dict(ref.state_dict())
    idx = torch.randint(96, (2, 32), device=device)
    results = []
    for model in (ref, fused):
        _, loss = model(idx, idx, return_logits=False)
        results.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
    (loss_ref, grads_ref), (loss_fused, grads_fused) = results
    torch.testing.assert_close(loss_fused, loss_ref, rtol=1e-5, atol=0)
    for (name, _), g, r in zip(ref.named_parameters(), grads_fused, grads_ref):
        assert ((g - r).abs().max() / r.abs().max().clamp(min=1e-12)).item() < 1e-4, name


def test_training_with_the_kernel_through_the_real_command(tmp_path, interpreter):
    r = run_train(tiny(tmp_path, max_iters=3, eval_interval=3, activation_kernel="triton"), TRITON_INTERPRET="1")
    assert r.returncode == 0, r.stderr
    assert "activation: fused Triton kernel" in r.stdout
    assert (tmp_path / "out" / "ckpt.pt").exists()


def test_a_checkpoint_trained_with_the_kernel_loads_anywhere_as_auto(tmp_path):
    from wigglegpt import checkpoint
    model = GPT(tiny_config(activation_kernel="triton"))
    path = tmp_path / "ckpt.pt"
    checkpoint.save_checkpoint(checkpoint.checkpoint_dict(model), str(path))
    loaded, _ = checkpoint.load_model(str(path))
    assert loaded.config.activation_kernel == "auto"
    loaded(torch.randint(96, (1, 4)))  # runs on this CPU, no Triton asked
    again, _ = checkpoint.load_model(str(path), activation_kernel="torch")
    assert again.config.activation_kernel == "torch"
