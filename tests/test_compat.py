"""
Protects wigglegpt/compat.py, compatibility with the original WiggleGPT's training settings: its
config files (their key names and values, restated here as plain assignments) run through
`python train_bio.py <config>`; beta1/beta2, decay_lr, stable_iters (its warmup-stable-cosine
schedule), compile_mode, backend and profile_memory mean what they meant there, derived beside the
settings as given (checks only check). Settings of the original's other scripts are one line
naming what to use instead.
"""

import math
import os
import subprocess
import sys
import types

import pytest
import torch

from wigglegpt import compat
import train_bio
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
# ... of WiggleGPT-V2-OLD/config_gpt2_bio_3070.py (v2 fixed LayerNorm, learned positions and the
# event-layer gate, so its config names none of them) and of WiggleGPT-V1-OLD's (bio_compartments)
ORIGINAL_V2 = """
out_dir = 'out-gpt2-bio'
eval_interval = 2000
log_interval = 10
eval_iters = 50
wandb_log = False
wandb_project = 'owt'
wandb_run_name = 'gpt2-bio-3070'
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
max_iters = 200000
lr_decay_iters = 200000
learning_rate = 6e-4
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
device = 'cuda'
dtype = 'float16'
compile = False
"""
ORIGINAL_V1 = ORIGINAL_V2.replace("bio_threshold = 0.25", "bio_compartments = 2\nbio_threshold = 0.25")
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
    with pytest.raises(UserError, match="config/bio_45m_sparse_3070.py"):  # WiggleGPT v1's dendrites
        train_bio.as_settings({"bio_compartments": 2})


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


def config_keys(text):
    namespace = {}
    exec(text, namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


@pytest.mark.parametrize("text, parameters, kinds", [
    (ORIGINAL_V2, 45_309_312, "oscillating MLP, LayerNorm, learned positions, event_layer sparse gate"),
    (ORIGINAL_OPTIMIZED, 45_309_312, "oscillating MLP, RMSNorm, learned positions, event_layer sparse gate"),
    (ORIGINAL_3070, 123_697_920, "oscillating MLP, RMSNorm, RoPE)")], ids=["v2", "optimized", "v3"])
def test_an_original_config_builds_the_original_model(text, parameters, kinds, demo_data, capsys):
    """Each of the original's configs, at its own size: the parameter count its model had there
    (v2 and optimizations/ counted without the position table, as the original counted)."""
    given = {**config_keys(text), "data_root": str(demo_data / "data"), "dataset": "shakespeare", "device": "cpu",
             "dtype": "float32", "compile": False, "eval_only": True, "eval_iters": 1, "batch_size": 1,
             "block_size": 64, "out_dir": str(demo_data / "never-written")}
    train_bio.train(given)
    out = capsys.readouterr().out
    assert f"model: {parameters:,} parameters" in out and kinds in out, out
    if text is ORIGINAL_3070:  # its RoPE encoded no positions: said, not silently changed
        assert "add legacy_rope=True to train exactly what it trained" in out
    else:
        assert "config/bio_45m_sparse_3070.py" in out
    assert not os.path.exists(demo_data / "never-written")


def test_v1_config_is_refused_pointing_at_the_v2_config(demo_data):
    (demo_data / "v1.py").write_text(ORIGINAL_V1)
    assert_one_line_error(run_train(["v1.py", *TINY], cwd=demo_data), "bio_compartments",
                          "config/bio_45m_sparse_3070.py")


def test_this_projects_gate_settings_and_fine_tuning_are_left_as_given():
    for given in (dict(bio_threshold=0.3, use_sparse_gate=False, beta2=0.95), dict(bio_threshold=0.3),
                  dict(bio_threshold=0.3, use_bio_mlp=False, beta1=0.9), dict(bio_threshold=0.3, init_from="resume",
                                                                              beta1=0.9), dict(use_rmsnorm=False)):
        s = train_bio.as_settings(given)
        assert compat.original_architecture(s, s.explicit)[0] == {}, given
    s = train_bio.as_settings(dict(bio_threshold=0.3))  # this project's own settings: said, not changed
    assert compat.original_architecture(s, s.explicit)[1] == ["bio_threshold has no effect without a sparse gate "
                                                              "(use_sparse_gate=True)"]


def test_wsd_with_stable_iters_zero_is_the_originals_cosine():
    original = settings(lr_schedule="wsd", stable_iters=0, warmup_iters=10, lr_decay_iters=110, learning_rate=1.0,
                        min_lr=0.0)
    cosine = settings(lr_schedule="cosine", warmup_iters=10, lr_decay_iters=110, learning_rate=1.0, min_lr=0.0)
    assert original.lr_schedule == "wsd_cosine"
    assert [train_bio.learning_rate_at(i, original) for i in range(120)] == \
        [train_bio.learning_rate_at(i, cosine) for i in range(120)]
    # the original's formula, in its own terms: warmup (it+1)/(warmup+1), then cosine over the rest
    assert math.isclose(train_bio.learning_rate_at(60, original), 0.5 * (1 + math.cos(math.pi * 50 / 100)))


def test_export_in_the_original_format_loads_as_an_original_checkpoint(tmp_path):
    from model_bio import GPT
    from wigglegpt.checkpoint import load_model
    from conftest import tiny_config
    torch.manual_seed(0)
    model = GPT(tiny_config(use_rope=True, legacy_rope=True, use_rmsnorm=True, vocab_size=64)).eval()
    ckpt = compat.original_checkpoint(model, {"iter_num": 7, "best_val_loss": 2.5, "train_config": {"dataset": "x"}})
    # what the original's v3 GPTConfig(**model_args) accepts, and nothing of this project's
    assert set(ckpt["model_args"]) == {"block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias",
                                       "use_bio_mlp", "use_rmsnorm", "use_rope", "gradient_checkpointing"}
    assert set(ckpt["model"]) == set(model.state_dict()) and ckpt["iter_num"] == 7 and ckpt["config"]["dataset"] == "x"
    out = tmp_path / "for-original"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "export_bio.py"), f"--ckpt={write_ckpt(model, tmp_path)}",
                        f"--out={out}", "--format=original"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    saved = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=True)  # the original's sample_bio loads so
    assert "format" not in saved and set(saved["model_args"]) == set(ckpt["model_args"])
    loaded, _ = load_model(str(out / "ckpt.pt"))  # read back as an original checkpoint
    assert loaded.config.legacy_rope
    x = torch.randint(0, 64, (2, 16))
    assert torch.equal(loaded.eval()(x)[0], model(x)[0])
    for bad, phrase in ((dict(use_rope=True), "RoPE encodes positions"), (dict(use_sparse_gate=True), "sparse gate"),
                        (dict(use_bio_mlp=False, use_rope=False, gelu_approximate="tanh"), "exact GELU")):
        with pytest.raises(UserError, match=phrase):
            compat.original_checkpoint(GPT(tiny_config(vocab_size=64, **bad)))


def write_ckpt(model, folder):
    from wigglegpt.checkpoint import checkpoint_dict, save_checkpoint
    path = folder / "mine.pt"
    save_checkpoint(checkpoint_dict(model), str(path))
    return path
