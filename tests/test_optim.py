"""
Protects wigglegpt/optim.py: optimizer_type's choices each train a tiny model on the CPU where
their library allows, over the model's own parameter groups; Lion's update is the paper's; a Lion
run resumes and refuses another optimizer's state; adamw8bit without CUDA or bitsandbytes is one
clear line.
"""

import os
import sys

import pytest
import torch

import train_bio
from conftest import tiny_config
from model_bio import GPT
from test_compat import TINY, assert_one_line_error, run_train
from wigglegpt import optim
from wigglegpt.common import UserError


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


def test_freeze_layers_freezes_the_embeddings_and_the_first_blocks():
    for use_rope in (True, False):
        model = GPT(tiny_config(n_layer=3, use_rope=use_rope))
        trainable, total = optim.freeze_layers(model, 2)
        frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
        expected = {name for name, _ in model.named_parameters()
                    if name.startswith(("transformer.wte.", "transformer.wpe.", "transformer.h.0.", "transformer.h.1."))}
        assert frozen == expected and not model.lm_head.weight.requires_grad  # tied to wte
        assert trainable == sum(p.numel() for n, p in model.named_parameters() if n not in expected) and \
            total == sum(p.numel() for p in model.parameters())
        groups = model.parameter_groups(0.1)
        assert sum(len(g["params"]) for g in groups) == len([p for p in model.parameters() if p.requires_grad])
    assert optim.freeze_layers(GPT(tiny_config()), 0)[0] == sum(p.numel() for p in GPT(tiny_config()).parameters())
    with pytest.raises(UserError, match="freeze_layers=3, but the model has 2 blocks"):
        optim.freeze_layers(GPT(tiny_config()), 3)


def test_fine_tuning_with_frozen_layers_trains_only_the_rest_and_resumes_exactly(tmp_path, capsys):
    from test_train import load, tiny
    base = tiny(tmp_path, n_layer=3, max_iters=2, eval_interval=2, out_dir=str(tmp_path / "base"))
    train_bio.train(base)
    source = load(tmp_path / "base" / "ckpt.pt")
    ft = {**base, "init_from": str(tmp_path / "base" / "ckpt.pt"), "freeze_layers": 2, "max_iters": 4,
          "eval_interval": 2, "out_dir": str(tmp_path / "whole")}
    train_bio.train(ft)
    assert "trainable: " in capsys.readouterr().out
    whole = load(tmp_path / "whole" / "ckpt.pt")
    for name, value in whole["model"].items():
        same = torch.equal(value, source["model"][name])
        frozen = name.startswith(("transformer.wte.", "lm_head.", "transformer.h.0.", "transformer.h.1."))
        assert same == frozen or (same and name.endswith("baseline")), name  # frozen: exactly the source
    state = whole["optimizer"]["state"]  # AdamW's moments for the trainable parameters only
    model = GPT(tiny_config(n_layer=3, n_embd=32, n_head=2, block_size=16, vocab_size=64))
    optim.freeze_layers(model, 2)
    assert len(state) == len([p for p in model.parameters() if p.requires_grad])
    assert whole["train_config"]["freeze_layers"] == 2
    # stopped after 2 iterations and resumed: the same weights as the run that went through
    train_bio.train({**ft, "max_iters": 2, "out_dir": str(tmp_path / "halves")})
    train_bio.train({**ft, "init_from": "resume", "out_dir": str(tmp_path / "halves")})
    halves = load(tmp_path / "halves" / "ckpt.pt")
    assert all(torch.equal(whole["model"][k], halves["model"][k]) for k in whole["model"])
    with pytest.raises(UserError, match="trained with freeze_layers=2; resume with --freeze_layers=2"):
        train_bio.train({**ft, "init_from": "resume", "freeze_layers": 0, "max_iters": 6,
                         "out_dir": str(tmp_path / "halves")})
