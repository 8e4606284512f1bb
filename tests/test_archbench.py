"""Protects wigglegpt/archbench.py and xor_bio.py --suite, the original WiggleGPT's architecture
benchmark (bio_inspired_neurons2.py): each task's rows are what the original defines (labels
recomputed here), each MLP kind's forward is its formula written out here, the parameter counts
are the original's at its widths (counted by hand), seeds trained side by side get what each
gets alone and a seed that stops early stays stopped, the t quantile and the paired confidence
interval match hand-computed values, and the real command line prints the table, writes the PNG
and turns bad settings into one line and exit code 2."""

import math
import re
import subprocess
import sys

import pytest
import torch

import xor_bio
from conftest import ROOT
from wigglegpt import archbench, stats
from wigglegpt.common import UserError


def rows(name, seed=0):
    return archbench.TASKS[name].rows(archbench.seed_stream(seed, 0))


# ---------------------------------------------------------------------------------------
# tasks

def test_xor_rows_are_the_four_points_250_times_each():
    x, y = rows("xor")
    assert x.shape == (1000, 2) and y.shape == (1000, 1)
    for point in ([0, 0], [0, 1], [1, 0], [1, 1]):
        assert (x == torch.tensor(point, dtype=torch.float32)).all(1).sum() == 250
    assert torch.equal(y[:, 0], (x[:, 0] != x[:, 1]).float())
    assert not torch.equal(x[:4], torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]))  # shuffled


def test_parity_modular_and_logic_labels():
    x, y = rows("parity-4")
    assert x.shape == (1000, 4) and set(x.unique().tolist()) == {0.0, 1.0}
    assert [int(t) for t in y[:, 0]] == [int(sum(r)) % 2 for r in x.tolist()]

    x, y = rows("modular-5")
    assert x.shape == (1000, 2) and set(x.unique().tolist()) == set(map(float, range(10)))  # digits, not scaled
    assert y[:, 0].tolist() == pytest.approx([((a + b) % 5) / 5 for a, b in x.tolist()])

    x, y = rows("logical-inference")
    assert x.shape == (1000, 4)
    assert y[:, 0].tolist() == [float((a and b) or (c and d)) for a, b, c, d in x.int().tolist()]


def test_split_is_the_first_800_rows_and_the_last_200_per_seed():
    task = archbench.TASKS["parity-4"]
    x_train, y_train, x_test, y_test = archbench.task_data(task, [0, 5])
    assert x_train.shape == (2, 800, 4) and y_train.shape == (2, 800, 1)
    assert x_test.shape == (2, 200, 4) and y_test.shape == (2, 200, 1)
    x5, _ = rows("parity-4", seed=5)
    assert torch.equal(x_train[1], x5[:800]) and torch.equal(x_test[1], x5[800:])
    assert not torch.equal(x_train[0], x_train[1])  # each seed draws its own rows


def test_readouts():
    out = torch.tensor([[[0.49], [0.51], [0.7], [-0.2]]])
    target = torch.tensor([[[0.0], [1.0], [0.0], [0.0]]])
    assert archbench.TASKS["xor"].accuracy(out, target).tolist() == [0.75]
    # Modular-5: the nearest of the levels 0, 0.2, .., 0.8
    out = torch.tensor([[[0.09], [0.25], [0.79], [0.5]]])
    target = torch.tensor([[[0.0], [0.2], [0.8], [0.8]]])
    assert archbench.TASKS["modular-5"].accuracy(out, target).tolist() == [0.75]
    # 190 of 200 right is 95 %, the target reached (in float32 it would fall just below 0.95)
    out, target = torch.zeros(1, 200, 1), torch.cat([torch.zeros(1, 190, 1), torch.ones(1, 10, 1)], 1)
    assert archbench.TASKS["parity-4"].accuracy(out, target).item() >= archbench.TARGET_ACCURACY


# ---------------------------------------------------------------------------------------
# the MLP kinds against their formulas

def linear(layer, s, x):
    return x @ layer.weight[s] + layer.bias[s]


def oscillate(act, s, z):
    n = z.shape[-1]
    omega, phi, baseline = (p.view(-1, n)[s] for p in (act.act.omega, act.act.phi, act.act.baseline))
    return torch.sin(omega * z + phi) * torch.tanh(z) + baseline


def sparse(layer, s, x):
    voltage = torch.sigmoid(linear(layer.gate, s, x))
    return torch.relu(linear(layer.transform, s, x * torch.sigmoid(10 * (voltage - layer.threshold))))


def dendritic(layer, s, x):
    """The original's DendriticCompartmentLayer, compartment by compartment."""
    k, size = layer.k, layer.size
    x = torch.cat([x, torch.zeros(x.shape[0], k * size - x.shape[1])], 1)
    outs = [torch.tanh(x[:, i * size:(i + 1) * size] @ layer.comp_weight[s, i] + layer.comp_bias[s, i]) for i in range(k)]
    lateral = [sum(outs[i] * layer.lateral[s, i, j] for i in range(k)) for j in range(k)]
    return oscillate(layer.soma_act, s, linear(layer.soma, s, torch.cat(outs + lateral, 1)))


FORMULAS = {
    "standard": lambda layer, s, x: torch.relu(linear(layer, s, x)),
    "oscillating": lambda layer, s, x: oscillate(layer.act, s, linear(layer.linear, s, x)),
    "sparse": sparse,
    "dendritic": dendritic,
    "hybrid": lambda layer, s, x: sparse(layer[1], s, dendritic(layer[0], s, x)),
}


@pytest.mark.parametrize("kind", list(archbench.KINDS))
@pytest.mark.parametrize("n_in", [2, 4])
def test_forward_matches_the_formula(kind, n_in):
    model = archbench.Network(kind, [archbench.seed_stream(s, 1) for s in (0, 1)], n_in)
    x = torch.randn(2, 7, n_in, generator=torch.Generator().manual_seed(0))  # (S, B, n_in)
    with torch.no_grad():
        got = model(x)
        for s in range(2):
            h = x[s]
            for layer in model.layers:
                h = FORMULAS[kind](layer, s, h)
            assert torch.allclose(got[s], linear(model.out, s, h), atol=1e-5)
    assert not torch.equal(got[0], got[1])


def test_init_is_the_original_one():
    model = archbench.Network("hybrid", [archbench.seed_stream(s, 1) for s in range(3)], 4)
    dendrite, gate = model.layers[0]
    omega = dendrite.soma_act.act.omega
    assert abs(omega.mean().item() - 1.0) < 0.05 and 0.05 < omega.std().item() < 0.15
    assert (dendrite.soma_act.act.baseline == 0).all()
    assert torch.allclose(dendrite.lateral.diagonal(dim1=1, dim2=2).mean(), torch.tensor(0.5), atol=0.1)
    assert gate.threshold == 0.3 and model.layers[1][1].threshold == 0.3
    assert archbench.Network("sparse", [archbench.seed_stream(0, 1)], 2).layers[0].threshold == 0.5
    bound = 1 / math.sqrt(32)  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert gate.gate.weight.abs().max() <= bound and gate.gate.weight.abs().max() > 0.9 * bound


def test_parameter_counts_are_the_original_ones():
    def lin(a, b):
        return a * b + b

    def dend(n_in, n_out, k=4):
        size = -(-n_in // k)
        return k * lin(size, n_out) + k * k + lin(2 * k * n_out, n_out) + 3 * n_out

    h = 32
    for n_in in (2, 4):
        expected = {
            "standard": lin(n_in, h) + lin(h, h) + lin(h, 1),
            "oscillating": lin(n_in, h) + lin(h, h) + lin(h, 1) + 2 * 3 * h,
            "sparse": lin(n_in, n_in) + lin(n_in, h) + lin(h, h) + lin(h, h) + lin(h, 1),
            "dendritic": dend(n_in, h) + dend(h, h) + lin(h, 1),
            "hybrid": dend(n_in, h) + dend(h, h) + 2 * (lin(h, h) + lin(h, h)) + lin(h, 1),
        }
        for kind, count in expected.items():
            model = archbench.Network(kind, [archbench.seed_stream(s, 1) for s in range(3)], n_in)
            assert model.params_per_seed() == count, (kind, n_in)
    assert expected["standard"] == 1249 and expected["hybrid"] == 22337  # Parity-4's, as the original prints them


# ---------------------------------------------------------------------------------------
# training side by side

def test_a_seed_side_by_side_gets_what_it_gets_alone():
    task = archbench.TASKS["parity-4"]
    together = archbench.train_kind(task, "sparse", [0, 3], epochs=1)
    alone = archbench.train_kind(task, "sparse", [3], epochs=1)
    assert together["accuracy"][1] == pytest.approx(alone["accuracy"][0])
    assert together["firing"][1] == pytest.approx(alone["firing"][0], abs=1e-6)
    for a, b in zip(together["model"].parameters(), alone["model"].parameters()):
        assert a.detach().view(2, -1)[1].tolist() == pytest.approx(b.detach().view(1, -1)[0].tolist(), abs=1e-5)


def test_a_seed_that_stops_early_stays_stopped():
    task = archbench.TASKS["xor"]
    both = archbench.train_kind(task, "oscillating", [0, 1], epochs=9)
    stop = both["stopped"][1]  # XOR's test MSE falls below 1e-6 within a few epochs
    assert stop is not None and stop < 9 and both["accuracy"][1] == 1.0
    alone = archbench.train_kind(task, "oscillating", [1], epochs=stop)
    assert alone["stopped"] == [stop]
    for a, b in zip(both["model"].parameters(), alone["model"].parameters()):
        assert a.detach().view(2, -1)[1].tolist() == pytest.approx(b.detach().view(1, -1)[0].tolist(), abs=1e-5)


# ---------------------------------------------------------------------------------------
# statistics

def test_t_quantile_against_the_table():
    # Student t table, two-sided 95 %: df 1, 2, 4, 9, 30
    for df, t in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)]:
        assert stats.t_quantile(0.975, df) == pytest.approx(t, abs=1e-4)
    assert stats.t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        stats.t_quantile(0.975, 0)


def test_paired_ci_by_hand():
    # differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1, half width t(0.975, 2) * 0.1 / sqrt(3)
    mean, low, high = archbench.paired_ci([0.6, 0.9, 0.8], [0.5, 0.7, 0.5])
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert mean == pytest.approx(0.2) and low == pytest.approx(0.2 - half, abs=1e-6)
    assert high == pytest.approx(0.2 + half, abs=1e-6)
    assert archbench.paired_ci([1.0], [0.5]) == (0.5, None, None)


# ---------------------------------------------------------------------------------------
# the command line

def run_xor(*args):
    return subprocess.run([sys.executable, "xor_bio.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_suite_prints_the_table_and_writes_the_plot(tmp_path):
    plot = tmp_path / "suite.png"
    done = run_xor("--suite", "--suite_seeds=2", "--suite_epochs=1", "--tasks=xor,Modular-5",
                   "--kinds=standard,hybrid", f"--suite_plot={plot}")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("task") and "epochs to 95%" in line and "95% CI" in line for line in lines)
    body = [line for line in lines if line.startswith(("XOR ", "Modular-5 "))]
    assert [line.split()[:2] for line in body] == [["XOR", "Standard"], ["XOR", "Hybrid"],
                                                    ["Modular-5", "Standard"], ["Modular-5", "Hybrid"]]
    assert "22,337" in body[1] and "1,185" in body[0] and "[" in body[1] and "%" not in body[0].split()[-1]
    data = plot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


@pytest.mark.parametrize("args, message", [
    (["--suite", "--suite_seeds=0"], "suite_seeds must be >= 1"),
    (["--suite", "--suite_epochs=0"], "suite_epochs must be >= 1"),
    (["--suite", "--tasks=xor,sudoku"], "unknown name 'sudoku'"),
    (["--suite", "--kinds=standard,standard"], "twice"),
    (["--suite", "--kinds="], "empty"),
    (["--suite", "--suite_plot=/no/such/folder/x.png"], "does not exist"),
    (["--suite", "--plot=x.png"], "--plot is for the one-neuron XOR run"),
    (["--kinds=standard"], "--kinds needs --suite"),
    (["--suite", "--suite_seeds=two"], "suite_seeds"),
])
def test_bad_suite_settings_are_user_errors(args, message):
    with pytest.raises(UserError, match=re.escape(message)):
        xor_bio.main(args)


def test_a_bad_setting_is_one_line_and_exit_code_2():
    done = run_xor("--suite", "--tasks=xor,sudoku")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: --tasks: unknown name 'sudoku'") and done.stderr.count("\n") == 1, done.stderr
