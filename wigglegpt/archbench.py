"""
The original WiggleGPT's architecture benchmark (bio_inspired_neurons2.py, run_comprehensive_benchmark),
rebuilt so that every seed of a task x kind trains at once: the tasks, the five MLP kinds, the
training loop, and the statistics over seeds (mean, std, paired t confidence intervals).

What carries over from the original: its four tasks (1,000 rows, the first 800 to train on and the
last 200 to test), its MLP kinds at its widths (hidden 32, two hidden layers, 4 dendritic
compartments, sparse thresholds 0.5 and 0.3 for the hybrid), and its training: Adam at lr 1e-3,
mean squared error on a linear output, batches of 32 in a fresh order each epoch, gradients clipped
to norm 1, the test set scored after every epoch, a stop once the test loss is below 1e-6.
What differs is said where it happens (Modular-5's readout, the firing share of the hybrid).

Side by side: every weight has a leading seed dimension S and activations are (S, B, features), so
S independent networks run as one; the per-seed losses are summed (each seed's gradient is its
own), Adam is elementwise, and gradient clipping and the early stop are done per seed.
"""

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from model_bio import OscillatingActivation
from wigglegpt.stats import mean_std, paired_difference

# the original's benchmark settings (its main(): hidden_size=32, num_layers=2, max_epochs=1000)
HIDDEN = 32
N_LAYERS = 2
N_COMPARTMENTS = 4
N_SAMPLES = 1000
N_TRAIN = 800  # int(0.8 * 1000): the first 800 rows train, the last 200 test
LR = 1e-3
BATCH_SIZE = 32
EPOCHS = 1000
MAX_GRAD_NORM = 1.0
STOP_LOSS = 1e-6  # the original stops once the test MSE is below this
TARGET_ACCURACY = 0.95
FIRING_WINDOW = 100  # the firing share is the mean over the last 100 forward calls, as the original's
READOUT_THRESHOLD = 0.5  # a binary task predicts 1 when the output is above this


# ---------------------------------------------------------------------------------------
# tasks: each draws its 1,000 rows from a generator; inputs (N, n_in), targets (N, 1)

def xor_rows(g):
    """The four XOR points {0, 1}^2, each 250 times, shuffled: the test rows repeat training rows."""
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]).repeat(N_SAMPLES // 4, 1)
    y = torch.tensor([[0.0], [1.0], [1.0], [0.0]]).repeat(N_SAMPLES // 4, 1)
    order = torch.randperm(N_SAMPLES, generator=g)
    return x[order], y[order]


def parity_rows(g, n_bits=4):
    """Random bit strings; the target is 1 for an odd number of ones."""
    x = torch.randint(0, 2, (N_SAMPLES, n_bits), generator=g).float()
    return x, (x.sum(1, keepdim=True) % 2)


def modular_rows(g, modulo=5):
    """Two digits a, b in 0..9 (as they are, not scaled); the target is ((a + b) mod 5) / 5."""
    x = torch.randint(0, 10, (N_SAMPLES, 2), generator=g).float()
    return x, (x.sum(1, keepdim=True) % modulo) / modulo


def logic_rows(g):
    """Bits A, B, C, D; the target is (A and B) or (C and D)."""
    x = torch.randint(0, 2, (N_SAMPLES, 4), generator=g).float()
    return x, ((x[:, 0] * x[:, 1] + x[:, 2] * x[:, 3]) > 0).float()[:, None]


@dataclass(frozen=True)
class Task:
    """One of the original's tasks: its rows and how its test rows are scored."""
    name: str  # the original's name
    n_in: int
    rows: object  # generator -> (inputs, targets)
    levels: int = 0  # 0: a binary target; k: targets j/k, scored by the nearest level

    def accuracy(self, out, target):
        """Share of test rows scored right, per seed: out and target are (S, N, 1).

        Modular-5 is scored by the nearest of its levels 0, 1/5, .., 4/5. The original scores it
        like the binary tasks (its 5 target values pass its 'at most 10 distinct targets, so
        classification' test), output > 0.5 against targets j/5, which is right only on rows
        whose target is 0: about a fifth of them at best, whatever the network learned."""
        if self.levels:
            right = torch.round(out * self.levels) == torch.round(target * self.levels)
        else:
            right = (out > READOUT_THRESHOLD).float() == target
        return right.double().mean((1, 2))  # 190/200 is 0.95 in float64; in float32 (the original's) it is just below


TASKS = {t.name.lower(): t for t in (
    Task("XOR", 2, xor_rows),
    Task("Parity-4", 4, parity_rows),
    Task("Modular-5", 2, modular_rows, levels=5),
    Task("Logical-Inference", 4, logic_rows),
)}


def seed_stream(seed, purpose):
    """A generator of its own per (seed, purpose): 0 the data, 1 the init, 2 the batch order.
    Every kind gets the same data and batch order for a seed, so seeds pair across kinds."""
    return torch.Generator().manual_seed(3 * seed + purpose)


# ---------------------------------------------------------------------------------------
# layers with a leading seed dimension: x is (S, B, features)

def uniform_per_seed(gens, shape, fan_in):
    """nn.Linear's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from each seed's generator."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.stack([torch.empty(shape).uniform_(-bound, bound, generator=g) for g in gens]))


class SeedLinear(nn.Module):
    """One nn.Linear(n_in, n_out) per seed: (S, B, n_in) -> (S, B, n_out)."""

    def __init__(self, gens, n_in, n_out):
        super().__init__()
        self.weight = uniform_per_seed(gens, (n_in, n_out), n_in)  # (S, n_in, n_out)
        self.bias = uniform_per_seed(gens, (n_out,), n_in)  # (S, n_out)

    def forward(self, x):
        return torch.baddbmm(self.bias[:, None, :], x, self.weight)


class SeedOscillation(nn.Module):
    """model_bio's oscillating activation, sin(omega*x + phi) * tanh(x) + baseline, for each seed's
    n neurons: one OscillatingActivation over all S * n of them. Init as the original's (and
    model_bio's): omega ~ N(1, 0.1), phi ~ N(0, 0.1), baseline 0."""

    def __init__(self, gens, n):
        super().__init__()
        self.act = OscillatingActivation(len(gens) * n)
        with torch.no_grad():
            self.act.omega.copy_(torch.cat([1.0 + 0.1 * torch.randn(n, generator=g) for g in gens]))
            self.act.phi.copy_(torch.cat([0.1 * torch.randn(n, generator=g) for g in gens]))
            self.act.baseline.zero_()

    def forward(self, x):
        S, B, n = x.shape
        flat = x.transpose(0, 1).reshape(B, S * n)  # seeds side by side in the last dimension
        return self.act(flat).view(B, S, n).transpose(0, 1)


class SparseEvent(nn.Module):
    """The original's SparseEventLayer (ReLU, as every benchmark use has it):
    voltage = sigmoid(gate(x)), out = relu(transform(x * sigmoid(10 (voltage - threshold)))).
    Its spike is twice as steep as model_bio's (slope 10, not 5) and its gate sits on the
    layer's input. The share of gate units with voltage above the threshold is recorded on every
    forward call, training and test alike, as the original records it."""

    def __init__(self, gens, n_in, n_out, threshold):
        super().__init__()
        self.threshold = threshold
        self.gate = SeedLinear(gens, n_in, n_in)
        self.transform = SeedLinear(gens, n_in, n_out)
        self.firing = []  # (S,) per forward call, the last FIRING_WINDOW kept

    def forward(self, x):
        voltage = torch.sigmoid(self.gate(x))
        spike = torch.sigmoid((voltage - self.threshold) * 10.0)
        self.firing = self.firing[-(FIRING_WINDOW - 1):] + [(voltage.detach() > self.threshold).float().mean((1, 2))]
        return torch.relu(self.transform(x * spike))


class Dendritic(nn.Module):
    """The original's DendriticCompartmentLayer with its lateral interactions and oscillating soma:
    the input (zero-padded to a multiple of K = 4) is split into K compartments, each
    tanh(Linear(compartment)); lateral[l] = sum_k out[k] * L[k, l] with L = 0.5 I + 0.1 N(0, 1);
    soma = oscillate(Linear(concat(out, lateral))), from 2 K n_out inputs."""

    def __init__(self, gens, n_in, n_out, k=N_COMPARTMENTS):
        super().__init__()
        self.k, self.size = k, math.ceil(n_in / k)
        self.pad = self.k * self.size - n_in
        bound = 1.0 / math.sqrt(self.size)  # each compartment is an nn.Linear(size, n_out)
        self.comp_weight = nn.Parameter(torch.stack(
            [torch.empty(k, self.size, n_out).uniform_(-bound, bound, generator=g) for g in gens]))  # (S, K, size, n_out)
        self.comp_bias = nn.Parameter(torch.stack(
            [torch.empty(k, n_out).uniform_(-bound, bound, generator=g) for g in gens]))  # (S, K, n_out)
        self.lateral = nn.Parameter(torch.stack(
            [0.5 * torch.eye(k) + 0.1 * torch.randn(k, k, generator=g) for g in gens]))  # (S, K, K)
        self.soma = SeedLinear(gens, 2 * k * n_out, n_out)
        self.soma_act = SeedOscillation(gens, n_out)

    def forward(self, x):
        S, B, _ = x.shape
        x = nn.functional.pad(x, (0, self.pad)).view(S, B, self.k, self.size)
        out = torch.tanh(torch.einsum("sbkc,skco->sbko", x, self.comp_weight) + self.comp_bias[:, None])
        lateral = torch.einsum("sbkd,skl->sbld", out, self.lateral)  # (S, B, K, n_out)
        return self.soma_act(self.soma(torch.cat([out.reshape(S, B, -1), lateral.reshape(S, B, -1)], -1)))


class OscillatingLayer(nn.Module):
    """The original's OscillatingLinear: Linear, then the oscillating activation."""

    def __init__(self, gens, n_in, n_out):
        super().__init__()
        self.linear = SeedLinear(gens, n_in, n_out)
        self.act = SeedOscillation(gens, n_out)

    def forward(self, x):
        return self.act(self.linear(x))


class ReluLayer(SeedLinear):
    """The original StandardMLP's Linear + ReLU."""

    def forward(self, x):
        return torch.relu(super().forward(x))


def hybrid_layer(gens, n_in, n_out):
    """The original's HybridBioLayer: a Dendritic layer, then a SparseEvent gate (threshold 0.3 in
    the benchmark) on its output."""
    return nn.Sequential(Dendritic(gens, n_in, n_out), SparseEvent(gens, n_out, n_out, threshold=0.3))


# kind -> (the original's name, layer maker); each network is N_LAYERS such layers, then a Linear to the output
KINDS = {
    "standard": ("Standard", ReluLayer),
    "oscillating": ("Oscillating", OscillatingLayer),
    "sparse": ("Sparse", lambda gens, n_in, n_out: SparseEvent(gens, n_in, n_out, threshold=0.5)),
    "hybrid": ("Hybrid", hybrid_layer),
    "dendritic": ("Dendritic", Dendritic),
}


class Network(nn.Module):
    """One of the original's MLPs per seed: N_LAYERS hidden layers of the kind (the first from
    n_in, the rest HIDDEN wide), then a plain Linear to n_out, no output activation."""

    def __init__(self, kind, gens, n_in, n_out=1, hidden=HIDDEN):
        super().__init__()
        make = KINDS[kind][1]
        widths = [n_in] + [hidden] * N_LAYERS
        self.layers = nn.Sequential(*[make(gens, a, b) for a, b in zip(widths, widths[1:])])
        self.out = SeedLinear(gens, hidden, n_out)
        self.n_seeds = len(gens)

    def forward(self, x):
        return self.out(self.layers(x))

    def firing_share(self):
        """(S,) mean over the gates of each gate's firing share over its last FIRING_WINDOW calls,
        or None for a kind without gates: the original's SparseMLP.get_avg_sparsity (a share that
        fires, despite its name). The original reports it for the Sparse MLP only (its HybridMLP
        has no get_avg_sparsity); here the Hybrid's two gates are measured the same way."""
        gates = [m for m in self.modules() if isinstance(m, SparseEvent)]
        if not gates or not gates[0].firing:
            return None
        return torch.stack([torch.stack(g.firing).mean(0) for g in gates]).mean(0)

    def params_per_seed(self):
        return sum(p.numel() for p in self.parameters()) // self.n_seeds


# ---------------------------------------------------------------------------------------
# training

def task_data(task, seeds):
    """(train x, train y, test x, test y), each (S, rows, features): the first 800 of each seed's
    1,000 rows train, the last 200 test."""
    rows = [task.rows(seed_stream(s, 0)) for s in seeds]
    x, y = torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
    return x[:, :N_TRAIN], y[:, :N_TRAIN], x[:, N_TRAIN:], y[:, N_TRAIN:]


def clip_per_seed(params, n_seeds, max_norm=MAX_GRAD_NORM):
    """torch.nn.utils.clip_grad_norm_ for each seed's network on its own: its gradients are
    scaled by min(1, max_norm / (norm + 1e-6)), the norm over all of that seed's parameters."""
    grads = [p.grad.view(n_seeds, -1) for p in params]  # every parameter's leading dimension is the seed
    norm = torch.stack([g.square().sum(1) for g in grads]).sum(0).sqrt()
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)[:, None]
    for g in grads:
        g.mul_(scale)


def train_kind(task, kind, seeds, epochs=EPOCHS, on_epoch=None):
    """Train one network of the kind per seed on the task, all side by side.

    Returns a dict with, per seed: accuracy and test_mse (on the test rows after the last epoch,
    or the epoch the seed stopped), epochs_to_target (epochs trained when the test accuracy first reached 95 %,
    None if never), stopped (the epoch the test loss fell below 1e-6, or None), firing (the gates'
    firing share, or None); and params (one seed's network), epochs_run (until every seed had
    stopped, or all of them), seconds (wall time of all seeds together) and the trained model.
    on_epoch() is called after every epoch (a progress bar).
    """
    seeds = list(seeds)
    if not seeds or epochs < 1:
        raise ValueError(f"train_kind needs at least one seed and one epoch, got {len(seeds)} and {epochs}")
    data = task_data(task, seeds)
    model = Network(kind, [seed_stream(s, 1) for s in seeds], task.n_in)
    orders = [seed_stream(s, 2) for s in seeds]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # matrices of a few thousand numbers: more threads only add overhead
    start = time.perf_counter()
    try:
        result = fit(model, task, data, orders, epochs, on_epoch)
    finally:
        torch.set_num_threads(threads)
    return dict(result, task=task.name, kind=kind, seeds=seeds, params=model.params_per_seed(),
                seconds=time.perf_counter() - start, model=model)


def fit(model, task, data, orders, epochs, on_epoch):
    """The original's loop for S seeds at once: each epoch, batches of 32 in each seed's own
    fresh order, then the test rows scored; a seed whose test MSE falls below 1e-6 stops there
    (its parameters are put back after every later step, its figures are the ones it stopped with)."""
    x_train, y_train, x_test, y_test = data
    S = model.n_seeds
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=LR, fused=True)  # one kernel for all parameters: a third of a small step's time otherwise
    seed_rows = torch.arange(S)[:, None]
    accuracy, mse = [0.0] * S, [0.0] * S
    reached, stopped, firing = [None] * S, [None] * S, [None] * S
    active = torch.ones(S, dtype=torch.bool)
    kept = None  # the parameters as they were when the last seed stopped
    for epoch in range(epochs):
        order = torch.stack([torch.randperm(N_TRAIN, generator=g) for g in orders])  # (S, 800)
        xe, ye = x_train[seed_rows, order], y_train[seed_rows, order]
        for i in range(0, N_TRAIN, BATCH_SIZE):
            out = model(xe[:, i:i + BATCH_SIZE])  # (S, B, 1)
            loss = (out - ye[:, i:i + BATCH_SIZE]).square().mean((1, 2)).sum()  # the seeds' MSEs summed
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_per_seed(params, S)
            opt.step()
            if kept is not None:
                with torch.no_grad():
                    for p, k in zip(params, kept):
                        p.view(S, -1)[~active] = k[~active]
        with torch.no_grad():
            out = model(x_test)
            test_loss = (out - y_test).square().mean((1, 2)).tolist()
            acc = task.accuracy(out, y_test).tolist()
        share = model.firing_share()
        for s in torch.nonzero(active).flatten().tolist():
            accuracy[s], mse[s] = acc[s], test_loss[s]
            if reached[s] is None and acc[s] >= TARGET_ACCURACY:
                reached[s] = epoch + 1
            if test_loss[s] < STOP_LOSS:  # the original's early stop, for this seed alone
                stopped[s] = epoch + 1
                firing[s] = None if share is None else float(share[s])
                active[s] = False
                kept = [p.detach().view(S, -1).clone() for p in params]
        if on_epoch:
            on_epoch()
        if not active.any():
            break
    share = model.firing_share()
    for s in torch.nonzero(active).flatten().tolist():
        firing[s] = None if share is None else float(share[s])
    return dict(accuracy=accuracy, test_mse=mse, epochs_to_target=reached, stopped=stopped, firing=firing, epochs_run=epoch + 1)


def run_suite(tasks, kinds, seeds, epochs=EPOCHS, progress=None):
    """train_kind for every task x kind: {(task key, kind): result}. progress: a tqdm bar (or
    None) of len(tasks) * len(kinds) * epochs, advanced by one per epoch."""
    on_epoch = (lambda: progress.update(1)) if progress is not None else None
    results = {}
    for name in tasks:
        for kind in kinds:
            if progress is not None:
                progress.set_postfix_str(f"{TASKS[name].name} {KINDS[kind][0]}")
            r = results[name, kind] = train_kind(TASKS[name], kind, seeds, epochs, on_epoch)
            if progress is not None:
                progress.update(epochs - r["epochs_run"])  # the epochs an early stop left out
    return results


# ---------------------------------------------------------------------------------------
# statistics over seeds

def paired_ci(values, base, level=0.95):
    """Mean of the paired differences values[i] - base[i] and its Student t confidence interval
    (wigglegpt.stats.paired_difference over the seeds in order): (mean, low, high), low and high
    None for n < 2."""
    if len(values) != len(base) or not values:
        raise ValueError(f"paired_ci needs two equally long non-empty lists, got {len(values)} and {len(base)}")
    d = paired_difference(dict(enumerate(base)), dict(enumerate(values)), level)
    return d["mean"], d["low"], d["high"]


def summarize(result, base=None):
    """The report's figures for one task x kind: accuracy and test MSE mean/std, epochs to 95 % (mean/std over
    the seeds that reached it, and how many did), firing mean/std, and with base (the Standard
    result of the same task and seeds) the paired difference in accuracy with its 95 % CI."""
    reached = [e for e in result["epochs_to_target"] if e is not None]
    fired = [f for f in result["firing"] if f is not None]
    return dict(
        accuracy=mean_std(result["accuracy"]),
        test_mse=mean_std(result["test_mse"]),
        epochs_to_target=mean_std(reached) if reached else (None, None),
        n_reached=len(reached),
        firing=mean_std(fired) if fired else (None, None),
        versus_base=paired_ci(result["accuracy"], base["accuracy"]) if base is not None else None,
    )
