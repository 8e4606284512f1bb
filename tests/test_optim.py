"""
Protects compatibility with the original WiggleGPT's training settings: its config files (their
key names and values, restated here as plain assignments) run through `python train_bio.py
<config>`; beta1/beta2, decay_lr, stable_iters (its warmup-stable-cosine schedule),
compile_mode, backend and profile_memory mean what they meant there; optimizer_type's four
choices (wigglegpt.optim) each train a tiny model on the CPU where their library allows, Lion's
update is the paper's, and adamw8bit without CUDA or bitsandbytes is one clear line. Settings
of the original's other scripts are one line naming what to use instead.
"""

import math
import os
import subprocess
import sys
import types

import pytest
import torch

from wigglegpt import compat, optim
import train_bio
from conftest import tiny_config
from model_bio import GPT
from wigglegpt.common import UserError
from wigglegpt.settings import load_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# key names and values of the original's config_gpt2_bio_3070.py (v3)
ORIGINAL_3070 = """
out_dir = 'out-wigglegpt-pure-124m'
eval_interval = 1000
log_interval = 10
eval_iters = 100
wandb_log = False
wandb_project = 'wigglegpt-pure'
wandb_run_name = 'wigglegpt-pure-124m'
dataset = 'openwebtext'
batch_size = 2
block_size = 1024
gradient_accumulation_steps = 16
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = False
use_bio_mlp = True
use_rmsnorm = True
use_rope = True
gradient_checkpointing = False
optimizer_type = 'adamw'
lr_schedule = 'cosine'
stable_iters = 0
compile = False
compile_mode = 'default'
max_iters = 600000
lr_decay_iters = 600000
learning_rate = 6e-4
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
warmup_iters = 2000
min_lr = 6e-5
device = 'cuda'
dtype = 'float16'
"""
# ... of optimizations/config_gpt2_bio_optimized.py
ORIGINAL_OPTIMIZED = """
out_dir = 'out-gpt2-bio-optimized'
eval_interval = 2000
log_interval = 10
eval_iters = 50
wandb_log = False
wandb_project = 'wigglegpt-optimized'
wandb_run_name = 'bio-optimized-3070'
dataset = 'openwebtext'
batch_size = 2
block_size = 1024
gradient_accumulation_steps = 16
n_layer = 4
n_head = 6
n_embd = 384
dropout = 0.0
bias = False
use_bio_mlp = True
bio_threshold = 0.25
use_rmsnorm = True
use_rope = False
gradient_checkpointing = False
optimizer_type = 'adamw'
lr_schedule = 'cosine'
stable_iters = 10000
compile = True
compile_mode = 'default'
max_iters = 200000
lr_decay_iters = 200000
learning_rate = 6e-4
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
warmup_iters = 2000
min_lr = 6e-5
device = 'cuda'
dtype = 'float16'
"""
# ... and the training keys of config_finetune_native.py (beta2 0.99, decay_lr)
ORIGINAL_FINETUNE = """
eval_interval = 250
log_interval = 10
eval_iters = 20
always_save_checkpoint = True
batch_size = 1
block_size = 512
gradient_accumulation_steps = 64
learning_rate = 2e-5
weight_decay = 0.01
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0
decay_lr = True
lr_schedule = 'cosine'
max_iters = 10000
warmup_iters = 200
lr_decay_iters = 10000
min_lr = 2e-6
dropout = 0.0
device = 'cuda'
dtype = 'float16'
compile = False
gradient_checkpointing = True
"""
# a tiny, quick run of those configs on the CPU: only the size and the device are overridden
TINY = ["--device=cpu", "--compile=False", "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=32",
        "--batch_size=2", "--gradient_accumulation_steps=1", "--max_iters=3", "--eval_interval=3",
        "--eval_iters=1", "--log_interval=1", "--warmup_iters=1", "--lr_decay_iters=3", "--dataset=shakespeare"]


def run_train(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, os.path.join(ROOT, "train_bio.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


def assert_one_line_error(result, *phrases):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """data/shakespeare built once for this module (train_bio builds it on first use)."""
    root = tmp_path_factory.mktemp("root")
    from wigglegpt import dataprep
    dataprep.ensure_demo_data(str(root / "data" / "shakespeare"))
    return root


@pytest.mark.parametrize("name, text", [("config_gpt2_bio_3070.py", ORIGINAL_3070),
                                        ("config_gpt2_bio_optimized.py", ORIGINAL_OPTIMIZED),
                                        ("config_finetune_native.py", ORIGINAL_FINETUNE)],
                         ids=["3070", "optimized", "finetune"])
def test_original_config_files_run(name, text, demo_data):
    (demo_data / name).write_text(text)
    result = run_train([name, *TINY, f"--out_dir=out-{name}"], cwd=demo_data)
    assert result.returncode == 0, result.stderr
    assert "done: 3 iterations" in result.stdout
    assert os.path.exists(demo_data / f"out-{name}" / "ckpt.pt")


def settings(**given):
    """The settings a run uses: as given (checked, never changed), with the aliases resolved beside them."""
    s = train_bio.as_settings(given)
    before = dict(vars(s))
    train_bio.check_settings(s)
    assert vars(s) == before  # checks only check
    return types.SimpleNamespace(**{**vars(s), **compat.resolved_aliases(s)})


def test_original_setting_names_keep_their_meaning():
    s = settings(beta1=0.8, beta2=0.99)
    assert s.betas == (0.8, 0.99)
    assert settings(beta2=0.98, betas=(0.7, 0.9)).betas == (0.7, 0.98)
    flat = settings(decay_lr=False, learning_rate=1e-3, warmup_iters=100)
    assert [train_bio.learning_rate_at(it, flat) for it in (0, 50, 10**6)] == [1e-3] * 3  # not even warmup
    # the original's wsd: warmup, hold stable_iters, cosine to min_lr at lr_decay_iters
    wsd = settings(lr_schedule="wsd", stable_iters=100, warmup_iters=10, lr_decay_iters=310,
                   learning_rate=1.0, min_lr=0.0)
    assert wsd.lr_schedule == "wsd_cosine"
    lr = [train_bio.learning_rate_at(it, wsd) for it in range(400)]
    assert lr[9] < 1.0 and lr[10] == lr[109] == 1.0
    assert lr[110] == 1.0 and math.isclose(lr[210], 0.5) and lr[310] == 0.0 and lr[399] == 0.0
    assert all(a >= b for a, b in zip(lr[110:], lr[111:]))
    own = settings(lr_schedule="wsd", warmup_iters=10, lr_decay_iters=110, learning_rate=1.0, min_lr=0.0)
    assert own.lr_schedule == "wsd" and train_bio.learning_rate_at(105, own) == 0.5  # this project's linear tail
    for bad, phrase in [(dict(beta1=1.5), "beta1"), (dict(optimizer_type="sgd"), "optimizer_type"),
                        (dict(compile_mode="fast"), "compile_mode"), (dict(backend="mpi"), "backend"),
                        (dict(lr_schedule="wsd_cosine", stable_iters=600000), "stable_iters"),
                        (dict(stable_iters=-1), "stable_iters")]:
        with pytest.raises(UserError, match=phrase):
            settings(**bad)


def test_settings_of_the_original_scripts_say_what_to_use(demo_data):
    (demo_data / "ft.py").write_text("pretrained_ckpt = 'out/ckpt.pt'\nfreeze_layers = 8\n")
    assert_one_line_error(run_train(["ft.py"], cwd=demo_data), "pretrained_ckpt", "init_from")
    with pytest.raises(UserError, match="prepare_smoltalk.py"):
        load_settings(train_bio.SETTINGS, ["--dataset_name=x"], hints=train_bio.ORIGINAL_ONLY)
    with pytest.raises(UserError, match="freezing layers"):
        train_bio.as_settings({"freeze_layers": 8})


def overfit(optimizer_type, lr, steps=15):
    torch.manual_seed(0)
    model = GPT(tiny_config(dropout=0.0))
    optimizer = optim.make_optimizer(model, optimizer_type, 0.1, lr, (0.9, 0.95), "cpu")
    x = torch.randint(0, 96, (4, 32), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(steps):
        _, loss = model(x[:, :-1].contiguous(), x[:, 1:].contiguous())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return optimizer, losses


@pytest.mark.parametrize("optimizer_type, lr, kind", [("adamw", 3e-3, torch.optim.AdamW),
                                                      ("lion", 3e-3, optim.Lion),
                                                      ("adafactor", 5e-2, torch.optim.Adafactor)],
                         ids=["adamw", "lion", "adafactor"])
def test_each_optimizer_trains_a_tiny_model(optimizer_type, lr, kind):
    optimizer, losses = overfit(optimizer_type, lr)
    assert isinstance(optimizer, kind)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]  # the model's own grouping
    assert losses[-1] < 0.8 * losses[0], losses


def test_lion_step_is_the_papers_update():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    m0 = torch.tensor([0.5, 0.5, -1.0, 0.0])
    g = torch.tensor([-1.0, 2.0, 4.0, 0.0])
    opt = optim.Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    opt.state[p]["exp_avg"] = m0.clone()
    p.grad = g.clone()
    before = p.detach().clone()
    opt.step()
    expected = before * (1 - 0.1 * 0.5) - 0.1 * torch.sign(0.9 * m0 + 0.1 * g)
    assert torch.allclose(p.detach(), expected)
    assert torch.allclose(opt.state[p]["exp_avg"], 0.99 * m0 + 0.01 * g)


def test_adamw8bit_needs_cuda_and_bitsandbytes(monkeypatch, demo_data):
    model = GPT(tiny_config())
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(UserError, match="requirements-optional.txt"):
        optim.make_optimizer(model, "adamw8bit", 0.1, 1e-3, (0.9, 0.95), "cuda")
    monkeypatch.undo()
    result = run_train([*TINY, "--optimizer_type=adamw8bit", "--out_dir=out8"], cwd=demo_data)
    assert_one_line_error(result, "adamw8bit", "CUDA", "optimizer_type='adamw'")
    assert not os.path.exists(demo_data / "out8" / "ckpt.pt")


def test_lion_run_resumes_and_refuses_another_optimizer(demo_data, capsys):
    run = dict(data_root=str(demo_data / "data"), dataset="shakespeare", out_dir=str(demo_data / "outlion"),
               device="cpu", n_layer=1, n_head=2, n_embd=16, block_size=32, batch_size=2,
               gradient_accumulation_steps=1, max_iters=2, eval_interval=2, eval_iters=1, warmup_iters=0,
               lr_decay_iters=4, optimizer_type="lion", learning_rate=1e-4, profile_memory=True)
    assert train_bio.train(run)["reason"] == "max_iters"
    assert "profile_memory records CUDA allocations only" in capsys.readouterr().out
    assert train_bio.train({**run, "init_from": "resume", "max_iters": 3})["iter"] == 3
    with pytest.raises(UserError, match="optimizer_type='lion'"):
        train_bio.train({**run, "init_from": "resume", "max_iters": 4, "optimizer_type": "adamw"})


def test_compile_mode_reaches_torch_compile(monkeypatch, tmp_path):
    seen = {}

    def fake_compile(model, mode=None):
        seen["mode"] = mode
        return model
    monkeypatch.setattr(torch, "compile", fake_compile)
    s = types.SimpleNamespace(**vars(settings(compile=True, compile_mode="max-autotune")))
    assert s.compile_mode == "max-autotune"
    import numpy as np
    folder = tmp_path / "data" / "pat"
    folder.mkdir(parents=True)
    for split in ("train", "val"):
        np.resize(np.arange(50, dtype=np.uint16), 3000).tofile(folder / f"{split}.bin")
    train_bio.train(dict(data_root=str(tmp_path / "data"), dataset="pat", out_dir=str(tmp_path / "out"),
                         device="cpu", n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=64, batch_size=2,
                         gradient_accumulation_steps=1, max_iters=1, eval_interval=1, eval_iters=1,
                         warmup_iters=0, lr_decay_iters=1, compile=True, compile_mode="max-autotune"))
    assert seen["mode"] == "max-autotune"
