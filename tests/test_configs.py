"""Protects config/*.py: every file loads through train_bio's real settings parser and passes its
checks, builds its model (on the meta device: no memory, no time), states the tokens per
iteration it really has; the 124M configs are the 123,697,920-parameter WiggleGPT, and the
bio/GELU pairs differ only in the architecture switches, so their comparisons are fair."""

import glob
import os
import re
import types

import pytest
import torch

import train_bio
from model_bio import GPT
from wigglegpt.settings import load_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "config", "*.py")))
SWITCHES = {"use_bio_mlp", "use_rmsnorm", "use_rope"}


def settings_of(name):
    return vars(load_settings(train_bio.SETTINGS, [os.path.join(ROOT, "config", name)]))


def test_the_configs_are_there():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"gpt2_bio_3070.py", "gpt2_bio_5060ti.py", "gpt2_gelu_3070.py", "bio_45m_sparse_3070.py",
            "bio_sparse_lightweight_3070.py", "finetune_smoltalk.py", "shakespeare_bio.py", "shakespeare_gelu.py"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_loads_builds_and_states_its_budget(path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    s = load_settings(train_bio.SETTINGS, [path])
    train_bio.check_settings(s)
    with torch.device("meta"):
        model = GPT(train_bio.model_config_from(s))
    assert model.get_num_params() > 0
    text = open(path, encoding="utf-8").read()
    stated = re.search(r"tokens per iteration: ([\d,]+) = batch_size (\d+) x gradient_accumulation_steps (\d+) "
                       r"x block_size ([\d,]+)", text)
    assert stated, "each config says its tokens per iteration"
    total, batch, accum, block = (int(g.replace(",", "")) for g in stated.groups())
    assert (batch, accum, block) == (s.batch_size, s.gradient_accumulation_steps, s.block_size)
    assert total == batch * accum * block
    assert re.search(r"^# memory: ", text, re.M), "each config says the memory it was sized for"


@pytest.mark.parametrize("name", ["gpt2_bio_3070.py", "gpt2_bio_5060ti.py"])
def test_124m_configs_are_the_published_size(name):
    with torch.device("meta"):
        model = GPT(train_bio.model_config_from(types.SimpleNamespace(**settings_of(name))))
    assert model.get_num_params() == 123_697_920


@pytest.mark.parametrize("bio, gelu", [("gpt2_bio_3070.py", "gpt2_gelu_3070.py"),
                                       ("shakespeare_bio.py", "shakespeare_gelu.py")])
def test_bio_and_gelu_twins_differ_only_in_the_switches(bio, gelu):
    a, b = settings_of(bio), settings_of(gelu)
    differ = {k for k in a if a[k] != b[k]}
    assert differ - {"out_dir", "wandb_run_name"} == SWITCHES
    assert all(a[k] for k in SWITCHES) and not any(b[k] for k in SWITCHES)


def test_the_same_budget_on_both_gpus():
    a, b = settings_of("gpt2_bio_3070.py"), settings_of("gpt2_bio_5060ti.py")
    tokens = lambda s: s["batch_size"] * s["gradient_accumulation_steps"] * s["block_size"]  # noqa: E731
    assert tokens(a) == tokens(b) == 32_768 and (a["batch_size"], b["batch_size"]) == (2, 4)
    assert {k for k in a if a[k] != b[k]} <= {"batch_size", "gradient_accumulation_steps", "out_dir", "peak_flops",
                                              "wandb_run_name"}


def test_special_purpose_configs():
    sft = settings_of("finetune_smoltalk.py")
    assert sft["init_from"].endswith("ckpt.pt") and sft["dataset"] == "smoltalk"
    assert (sft["learning_rate"], sft["min_lr"], sft["warmup_iters"], sft["max_iters"]) == (2e-5, 2e-6, 200, 10000)
    assert (sft["batch_size"], sft["gradient_accumulation_steps"], sft["block_size"]) == (1, 64, 512)
    assert sft["dtype"] == "float16" and sft["gradient_checkpointing"] and sft["betas"] == (0.9, 0.99)
    # the published fine-tune (the original's config_finetune_native.py and its paper's table)
    assert (sft["freeze_layers"], sft["eval_interval"], sft["eval_iters"], sft["weight_decay"]) == (0, 250, 20, 0.01)
    demo = settings_of("shakespeare_bio.py")
    assert demo["dataset"] == "shakespeare" and demo["max_iters"] // demo["eval_interval"] >= 3


def test_sparse_configs():
    """bio_45m_sparse_3070.py is the published v2 run (WiggleGPT-V2-OLD/config_gpt2_bio_3070.py
    and its model); the lightweight twin has the same shape and the per-unit gate."""
    v2 = settings_of("bio_45m_sparse_3070.py")
    assert v2["use_sparse_gate"] and v2["sparse_gate_kind"] == "event_layer" and v2["bio_threshold"] == 0.25
    assert (v2["n_layer"], v2["n_head"], v2["n_embd"], v2["block_size"]) == (4, 6, 384, 1024)
    assert (v2["batch_size"], v2["gradient_accumulation_steps"]) == (2, 16)
    assert (v2["learning_rate"], v2["max_iters"], v2["lr_decay_iters"], v2["dtype"]) == (6e-4, 200000, 200000, "float16")
    assert not (v2["bias"] or v2["use_rmsnorm"] or v2["use_rope"]) and v2["use_bio_mlp"]
    light = settings_of("bio_sparse_lightweight_3070.py")
    assert light["use_sparse_gate"] and light["sparse_gate_kind"] == "lightweight"
    assert (light["n_layer"], light["n_head"], light["n_embd"]) == (4, 6, 384)
    counts = {}
    for name, s in (("v2", v2), ("light", light)):
        with torch.device("meta"):
            counts[name] = GPT(train_bio.model_config_from(types.SimpleNamespace(**s))).get_num_params()
    assert counts == {"v2": 45_309_312, "light": 26_428_800}
    demo = settings_of("shakespeare_bio.py")
    assert demo["dataset"] == "shakespeare" and demo["max_iters"] // demo["eval_interval"] >= 3


def test_the_124m_one_switch_pair_differs_in_use_bio_mlp_only():
    bio, gelu = settings_of("gpt2_bio_3070.py"), settings_of("gpt2_gelu_mlp_3070.py")
    assert bio["use_bio_mlp"] and not gelu["use_bio_mlp"]
    assert {k for k in bio if bio[k] != gelu[k]} == {"use_bio_mlp", "out_dir", "wandb_run_name"}
