"""Protects compare_bio.py: the table's numbers (params, tokens, iterations, final and best val
loss, median tokens/s, peak memory) from metrics.jsonl files written here; a resumed run
(several start records) counts only its final timeline, the last record of each iteration;
the loss-curve PNG is written; --rope_variants plans a real-RoPE and a legacy-RoPE run of
each RoPE config; a folder without metrics.jsonl is one clear error (exit 2, no traceback);
and --run trains two tiny configs through train_bio.py and compares them. Multi-seed
comparisons: the Student t quantile against published table values, mean and sample std, the
paired differences and their confidence interval against a direct computation, seed folders
read back as one config (with val_bpb and HellaSwag records), the band plot, --seeds=0 as one
clear error, and --run --seeds=2 training every config with seeds seed and seed+1. The original's
loss chart (--chart): its three panels (linear with the best and final val loss, log scale, the
final region) and the reference line from metrics.jsonl and from a console log in the original's
format, through the real command line; an unreadable log, a log without loss lines and bad
--zoom/--reference_loss values as one error line (exit 2, no traceback). One setting at a time,
through the real command line: --ablate trains the config and a variant per switch whose ckpt.pt
differs from the base's in that switch alone (and out_dir), reported with the changed column and
paired differences; --sweep trains a run per value, the first the reference, and writes the
sweep figure (numeric, logarithmic or categorical axis, checked in-process); every bad --ablate
or --sweep input is one error line, exit 2, before anything trains."""

import json
import math
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest

import compare_bio
from conftest import ROOT
from wigglegpt import stats
from wigglegpt.common import UserError


def write_metrics(folder, records):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.jsonl"), "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def start(it, params):
    return {"kind": "start", "iter": it, "params": params, "tokens_per_iter": 100, "config": {"seed": 1}, "time": 0.0}


def train(it, loss, tps):
    return {"kind": "train", "iter": it, "loss": loss, "lr": 1e-3, "dt_ms": 10.0, "mfu": None,
            "tokens": (it + 1) * 100, "tokens_per_sec": tps, "firing_share": None}


def evaluation(it, val, mem):
    return {"kind": "eval", "iter": it, "train_loss": val - 0.1, "val_loss": val, "tokens": it * 100,
            "lr": 1e-3, "peak_mem_mb": mem}


@pytest.fixture
def runs(tmp_path):
    """Run A: 10 steps in one go. Run B: crashed after its checkpoint at iter 5, resumed from it."""
    a = tmp_path / "run-a"
    write_metrics(a, [start(0, 1_234_567), evaluation(0, 4.0, 300.0)]
                  + [train(i, 4.0 - 0.1 * i, 1000.0 + i) for i in range(10)]
                  + [evaluation(5, 3.2, 310.0), evaluation(10, 3.0, 320.5),
                     {"kind": "end", "iter": 10, "best_val_loss": 3.0, "tokens": 1000, "elapsed_s": 1.0,
                      "reason": "max_iters"}])
    b = tmp_path / "run-b"
    first = ([start(0, 2_000_000), evaluation(0, 4.1, 500.0)] + [train(i, 9.0, 50.0) for i in range(8)]
             + [evaluation(5, 3.5, 510.0), evaluation(8, 1.0, 999.0)])  # iters 5..8 are lost in the crash
    second = ([start(5, 2_000_000)] + [train(i, 3.0, 300.0) for i in range(5, 10)]
              + [evaluation(10, 2.9, 520.0),
                 {"kind": "end", "iter": 10, "best_val_loss": 2.9, "tokens": 1000, "elapsed_s": 1.0,
                  "reason": "max_iters"}])
    write_metrics(b, first + second)
    return str(a), str(b)


def test_summary_numbers(runs):
    a = compare_bio.summarize("run-a", compare_bio.read_metrics(runs[0]))
    assert a["params"] == 1_234_567
    assert a["tokens"] == 1000
    assert a["iters"] == 10
    assert a["final_val_loss"] == 3.0
    assert a["best_val_loss"] == 3.0
    assert a["tokens_per_sec"] == pytest.approx(1004.5)  # median of 1000..1009
    assert a["peak_mem_mb"] == 320.5
    assert a["status"] == "max_iters"


def test_unfinished_run_and_bad_records(tmp_path):
    folder = tmp_path / "cut"
    write_metrics(folder, [start(0, 10), evaluation(0, 4.0, 1.0), train(0, 4.0, 9.0)])
    with open(folder / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "it')  # killed mid-write
    row = compare_bio.summarize("cut", compare_bio.read_metrics(str(folder)))
    assert row["status"] == "unfinished" and row["iters"] == 1 and row["tokens"] == 100
    write_metrics(folder, [start(0, 10), {"kind": "eval", "iter": 0, "tokens": 0}, train(0, 4.0, 9.0)])
    with pytest.raises(UserError, match="line 2: eval record without"):
        compare_bio.read_metrics(str(folder))


def test_resumed_run_keeps_only_its_final_timeline(runs):
    t = compare_bio.timeline(compare_bio.read_metrics(runs[1]))
    start_rec, trains, evals, end = t["start"], t["train"], t["eval"], t["end"]
    assert start_rec["iter"] == 5 and end["iter"] == 10
    assert [t["iter"] for t in trains] == list(range(10))
    assert [t["loss"] for t in trains[5:]] == [3.0] * 5  # the resumed process's values, not the lost 9.0s
    assert [e["iter"] for e in evals] == [0, 5, 10]  # the eval at 8 belonged to the lost timeline
    b = compare_bio.summarize("run-b", compare_bio.read_metrics(runs[1]))
    assert b["best_val_loss"] == 2.9  # not the lost 1.0
    assert b["peak_mem_mb"] == 520.0
    assert b["tokens_per_sec"] == pytest.approx(175.0)  # median of five 50s (iters 0..4) and five 300s


def test_table_and_plot(runs, tmp_path, capsys):
    plot = tmp_path / "curves.png"
    compare_bio.main([*runs, f"--plot={plot}"])
    out = capsys.readouterr().out
    row_a = next(line for line in out.splitlines() if line.startswith("run-a"))
    row_b = next(line for line in out.splitlines() if line.startswith("run-b"))
    assert row_a.split() == ["run-a", "1,234,567", "1,000", "10", "3.0000", "3.0000", "1,004", "320.5"]
    assert row_b.split() == ["run-b", "2,000,000", "1,000", "10", "2.9000", "2.9000", "175", "520.0"]
    data = plot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_metrics_file_paths_and_default_plot(runs, tmp_path, capsys):
    out_root = tmp_path / "cmp"
    rows = compare_bio.main([os.path.join(runs[0], "metrics.jsonl"), runs[1], f"--out_root={out_root}"])
    assert [r["name"] for r in rows] == ["run-a", "run-b"]
    assert (out_root / "compare.png").stat().st_size > 10_000


def test_rope_variants_plan(tmp_path):
    bio = tmp_path / "tiny_bio.py"
    bio.write_text("use_rope = True\n")
    gelu = tmp_path / "tiny_gelu.py"
    gelu.write_text("use_rope = False\n")
    plan = compare_bio.planned_runs([str(bio), str(gelu)], rope_variants=True, train_args=[])
    assert [(name, extra) for name, _, extra in plan] == [
        ("tiny_bio-rope", ["--legacy_rope=False"]), ("tiny_bio-legacy_rope", ["--legacy_rope=True"]),
        ("tiny_gelu", [])]
    assert [name for name, _, _ in compare_bio.planned_runs([str(bio)], False, [])] == ["tiny_bio"]
    # an extra --use_rope=False for every run leaves nothing to vary
    assert [name for name, _, _ in compare_bio.planned_runs([str(bio)], True, ["--use_rope=False"])] == ["tiny_bio"]
    with pytest.raises(UserError, match="share the name"):
        compare_bio.planned_runs([str(bio), str(bio)], False, [])


def test_missing_metrics_is_one_clear_error(tmp_path, runs):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "compare_bio.py"), runs[0], str(empty)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "has no metrics.jsonl" in r.stderr
    with pytest.raises(UserError, match="two or more"):
        compare_bio.main([runs[0]])
    with pytest.raises(UserError, match="only apply with --run"):
        compare_bio.main([*runs, "--rope_variants"])


TINY = """\
device = "cpu"
compile = False
data_root = {data_root!r}
dataset = "tiny"
vocab_size = 64
n_layer = 1
n_head = 2
n_embd = 16
block_size = 16
batch_size = 4
gradient_accumulation_steps = 1
max_iters = 50
eval_interval = 3
eval_iters = 2
log_interval = 1
learning_rate = 1e-2
min_lr = 1e-3
warmup_iters = 1
lr_decay_iters = 6
use_bio_mlp = {bio}
use_rmsnorm = {bio}
use_rope = {bio}
"""


def tiny_configs(tmp_path, data_seed):
    """A random-token dataset and two tiny config files, oscillating and GELU; their paths."""
    data = tmp_path / "data" / "tiny"
    data.mkdir(parents=True)
    rng = np.random.default_rng(data_seed)
    rng.integers(0, 64, 3000, dtype=np.uint16).tofile(data / "train.bin")
    rng.integers(0, 64, 600, dtype=np.uint16).tofile(data / "val.bin")
    configs = []
    for name, bio in (("tiny_bio", True), ("tiny_gelu", False)):
        path = tmp_path / f"{name}.py"
        path.write_text(TINY.format(data_root=str(tmp_path / "data"), bio=bio))
        configs.append(str(path))
    return configs


def test_run_trains_two_configs(tmp_path):
    configs = tiny_configs(tmp_path, data_seed=0)
    out_root = tmp_path / "runs"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "compare_bio.py"), "--run", *configs,
                        "--max_iters=6", "--seed=7", f"--out_root={out_root}"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.startswith("tiny_")}
    assert set(rows) == {"tiny_bio", "tiny_gelu"}
    for name, row in rows.items():
        assert row[2] == "384" and row[3] == "6"  # 6 iterations x 4 x 16 tokens: max_iters reached every run
        start = json.loads((out_root / name / "metrics.jsonl").read_text().splitlines()[0])
        assert start["config"]["seed"] == 7 and start["config"]["max_iters"] == 6
        assert start["config"]["use_bio_mlp"] == (name == "tiny_bio")
        assert int(row[1].replace(",", "")) == start["params"]
    assert (out_root / "compare.png").stat().st_size > 10_000


# ---------------------------------------------------------------------------------------
# several seeds per config

def test_t_quantile_matches_tables():
    # two-sided 95% (p = 0.975) values of any t table, and the Cauchy case df=1 exactly
    for df, expected in [(2, 4.303), (3, 3.182), (4, 2.776), (9, 2.262), (30, 2.042)]:
        assert stats.t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)
    assert stats.t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-9)
    assert stats.t_quantile(0.995, 4) == pytest.approx(4.604, abs=5e-4)
    assert stats.t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-9)
    assert stats.t_quantile(0.975, 1000) == pytest.approx(1.962, abs=1e-3)  # toward the normal 1.960
    with pytest.raises(ValueError):
        stats.t_quantile(0.975, 0)


def test_mean_std_and_paired_difference_against_direct_computation():
    values = [3.1, 3.4, 2.9, 3.3]
    mean, sd = stats.mean_std(values)
    assert mean == pytest.approx(statistics.mean(values)) and sd == pytest.approx(statistics.stdev(values))
    assert stats.mean_std([2.5]) == (2.5, None)
    base = {1: 3.00, 2: 3.10, 3: 2.95, 9: 1.0}
    other = {1: 3.05, 2: 3.12, 3: 3.05, 4: 7.0}  # seeds 4 and 9 have no partner: left out
    pair = compare_bio.paired_difference(base, other)
    diffs = [0.05, 0.02, 0.10]
    assert pair["seeds"] == [1, 2, 3] and pair["diffs"] == pytest.approx(diffs) and pair["df"] == 2
    half = 4.302653 * statistics.stdev(diffs) / math.sqrt(3)
    assert pair["mean"] == pytest.approx(statistics.mean(diffs))
    assert (pair["low"], pair["high"]) == pytest.approx((statistics.mean(diffs) - half, statistics.mean(diffs) + half),
                                                        abs=1e-6)
    single = compare_bio.paired_difference({1: 1.0}, {1: 1.5})
    assert single["mean"] == 0.5 and single["low"] is None
    assert compare_bio.paired_difference({1: 1.0}, {2: 1.0}) is None


def seed_run(folder, seed, final_val, bpb=None, acc_norm=None):
    """A finished 10-step run with its seed in the start record; evals at 0, 5 and 10."""
    first = start(0, 1000)
    first["config"] = {"seed": seed}
    evals = [evaluation(it, val, 100.0) for it, val in ((0, 5.0), (5, final_val + 0.5), (10, final_val))]
    records = [first, evals[0]] + [train(i, 4.0, 100.0) for i in range(5)] + [evals[1]] \
        + [train(i, 3.5, 100.0) for i in range(5, 10)] + [evals[2]]
    if bpb is not None:
        for e in evals:
            e["val_bpb"], e["train_bpb"] = e["val_loss"] / 3.0, e["train_loss"] / 3.0
    if acc_norm is not None:
        records += [{"kind": "hellaswag", "iter": 10, "acc": acc_norm - 0.01, "acc_norm": acc_norm, "n": 50,
                     "tokens": 1000}]
    records.append({"kind": "end", "iter": 10, "best_val_loss": final_val, "tokens": 1000, "elapsed_s": 1.0,
                    "reason": "max_iters"})
    write_metrics(folder / f"seed{seed}", records)


def test_seed_folders_summary_and_band_plot(tmp_path, capsys):
    a, b = tmp_path / "cfg-a", tmp_path / "cfg-b"
    finals_a, finals_b = {1337: 3.00, 1338: 3.10, 1339: 2.90}, {1337: 3.20, 1338: 3.15, 1339: 3.05}
    accs_b = {1337: 0.26, 1338: 0.27, 1339: 0.30}
    for seed in finals_a:
        seed_run(a, seed, finals_a[seed], bpb=True)
        seed_run(b, seed, finals_b[seed], bpb=True, acc_norm=accs_b[seed])
    (b / "seed1340").mkdir()  # an empty folder (a run that never started) is not a seed
    plot = tmp_path / "bands.png"
    rows = compare_bio.main([str(a), str(b), f"--plot={plot}"])
    assert [r["name"] for r in rows] == [f"cfg-{c}/seed{s}" for c in "ab" for s in (1337, 1338, 1339)]
    assert [r["seed"] for r in rows] == [1337, 1338, 1339] * 2
    assert rows[3]["final_val_bpb"] == pytest.approx(3.20 / 3) and rows[3]["hellaswag_acc_norm"] == 0.26
    assert rows[0]["hellaswag_acc_norm"] is None
    out = capsys.readouterr().out
    mean_b, sd_b = statistics.mean(finals_b.values()), statistics.stdev(finals_b.values())
    line_b = next(line for line in out.splitlines() if line.startswith("cfg-b ") and "+-" in line)
    assert f"{mean_b:.4f} +- {sd_b:.4f} (n=3)" in line_b
    assert f"{statistics.mean(accs_b.values()):.4f} +- {statistics.stdev(accs_b.values()):.4f} (n=3)" in line_b
    diffs = [finals_b[s] - finals_a[s] for s in finals_a]
    half = 4.302653 * statistics.stdev(diffs) / math.sqrt(3)
    paired = next(line for line in out.splitlines() if "cfg-b val loss:" in line)
    assert f"mean {statistics.mean(diffs):+.4f}" in paired
    assert f"[{statistics.mean(diffs) - half:+.4f}, {statistics.mean(diffs) + half:+.4f}], df=2" in paired
    assert "1339: +0.1500" in paired
    data = plot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < len(data) < 200_000
    x, mean, low, high = compare_bio.band([r["curves"]["val"] for r in rows[:3]])
    assert x == [0, 500, 1000] and mean[-1] == pytest.approx(3.0) and (low[-1], high[-1]) == (2.9, 3.1)


def test_zero_seeds_is_one_clear_error(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "compare_bio.py"), "--run", "config/shakespeare_bio.py",
                        "config/shakespeare_gelu.py", "--seeds=0", f"--out_root={tmp_path}"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr == "error: seeds must be at least 1, got 0\n"
    assert not os.listdir(tmp_path)  # nothing was trained
    with pytest.raises(UserError, match="only apply with --run"):
        compare_bio.main([str(tmp_path), str(tmp_path), "--seeds=2"])


def test_run_with_two_seeds(tmp_path):
    configs = tiny_configs(tmp_path, data_seed=1)
    out_root = tmp_path / "runs"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "compare_bio.py"), "--run", *configs, "--max_iters=3",
                        "--seed=40", "--seeds=2", f"--out_root={out_root}"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    finals = {}
    for name in ("tiny_bio", "tiny_gelu"):
        assert sorted(os.listdir(out_root / name)) == ["seed40", "seed41"]
        for seed in (40, 41):
            records = [json.loads(line) for line in (out_root / name / f"seed{seed}" / "metrics.jsonl").read_text().splitlines()]
            assert records[0]["config"]["seed"] == seed and records[0]["config"]["max_iters"] == 3
            finals[name, seed] = [x for x in records if x["kind"] == "eval"][-1]["val_loss"]
    assert finals["tiny_bio", 40] != finals["tiny_bio", 41]  # the seed reached the training
    mean, sd = statistics.mean([finals["tiny_gelu", 40], finals["tiny_gelu", 41]]), \
        statistics.stdev([finals["tiny_gelu", 40], finals["tiny_gelu", 41]])
    assert f"{mean:.4f} +- {sd:.4f} (n=2)" in r.stdout
    diffs = [finals["tiny_gelu", s] - finals["tiny_bio", s] for s in (40, 41)]
    assert f"tiny_gelu val loss: mean {statistics.mean(diffs):+.4f}, 95% CI [" in r.stdout
    assert (out_root / "compare.png").stat().st_size > 10_000


# ---------------------------------------------------------------------------------------
# --chart: the original's loss chart

CONSOLE_LOG = """\
tokens per iteration will be: 491,520
step 0: train loss 10.9410, val loss 10.9413
iter 0: loss 10.9432, time 21034.12ms, mfu -100.00%
saving checkpoint to out-wigglegpt-pure-124m
step 8000: train loss 1.5143, val loss 1.3184
iter 8001: loss 1.6, time 400.00ms, lr 2.00e-05
step 9000: train loss 1.5394, val loss 1.5115, sparsity 13.30%
> step 10,000: train loss 1.6527, val loss 1.5888
"""


def compare_command(*args, cwd=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "compare_bio.py"), *args], capture_output=True,
                          text=True, cwd=cwd or ROOT)


def test_chart_from_a_console_log_through_the_command_line(tmp_path):
    log = tmp_path / "finetune_log.md"
    log.write_text(CONSOLE_LOG, encoding="utf-8")
    chart = tmp_path / "charts" / "finetune_loss_chart.png"
    r = compare_command(str(log), f"--chart={chart}", "--zoom=0.25", "--reference_loss=1.4")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("finetune_log"))
    assert row.split() == ["finetune_log", "4", "10,000", "1.5888", "1.3184", "8,000"]
    data = chart.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert f"wrote {chart}" in r.stdout and not (tmp_path / "out-compare").exists()  # no comparison plot


def test_chart_layout_from_metrics_and_a_log(runs, tmp_path):
    import matplotlib.pyplot as plt

    log = tmp_path / "console.txt"
    log.write_text(CONSOLE_LOG, encoding="utf-8")
    curves = [("run-b", compare_bio.eval_curve(runs[1])), ("console", compare_bio.eval_curve(str(log)))]
    assert curves[0][1] == [(0, pytest.approx(4.0), 4.1), (5, pytest.approx(3.4), 3.5), (10, pytest.approx(2.8), 2.9)]
    assert curves[1][1][-1] == (10_000, 1.6527, 1.5888)
    fig = compare_bio.figure_loss_chart(curves, reference=3.12, zoom=0.1)
    try:
        linear, logscale, final = fig.axes
        assert len(fig.axes) == 3 and {ax.get_subplotspec().get_geometry()[:2] for ax in fig.axes} == {(1, 3)}
        assert (linear.get_yscale(), logscale.get_yscale(), final.get_yscale()) == ("linear", "log", "linear")
        for ax in fig.axes:  # the reference line on every panel
            assert any(list(line.get_ydata()) == [3.12, 3.12] for line in ax.get_lines())
        assert final.get_xlim()[0] == pytest.approx(9_000)  # the last 10% of steps 0..10,000
        low, high = final.get_ylim()
        assert low < 1.5115 and high > 3.12  # the final region's losses and the reference line
        labels = linear.get_legend_handles_labels()[1]
        assert "run-b: val loss (best 2.9000 at step 10, final 2.9000)" in labels
        assert "console: val loss (best 1.3184 at step 8,000, final 1.5888)" in labels
        assert "final region: the last 10% of the iterations" in final.get_title()
    finally:
        plt.close(fig)


def test_chart_bad_inputs_are_one_error_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "noise.log").write_text("iter 0: loss 10.9, time 1.0ms, mfu 1.00%\nsaving checkpoint to out\n")
    (tmp_path / "good.log").write_text(CONSOLE_LOG)
    cases = [(["afile/trainlog.txt", "--chart=c.png"], "cannot read the log afile/trainlog.txt: Not a directory"),
             (["missing.txt", "--chart=c.png"], "log not found: missing.txt"),
             (["noise.log", "--chart=c.png"], "noise.log has no eval lines"),
             (["good.log", "--chart=c.png", "--zoom=0"], "zoom is the final share"),
             (["good.log", "--chart=c.png", "--reference_loss=-1"], "reference_loss must be 0"),
             (["good.log", "--chart=afile/c.png"], "afile is a file, not a folder; choose another --chart"),
             (["good.log", "--chart=c.png", "--run"], "drop --run and --plot")]
    for args, phrase in cases:
        r = compare_command(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
        assert r.stderr.startswith("error: ") and phrase in r.stderr, (args, r.stderr)
    assert sorted(os.listdir(tmp_path)) == ["afile", "good.log", "noise.log"]  # nothing written


# ---------------------------------------------------------------------------------------
# one setting at a time: --ablate and --sweep

# what compare_bio.py itself sets apart per run besides the varied setting (and seed, which
# the same-seed pairs below share): each run's own folder
BOOKKEEPING = {"out_dir"}


def changed_settings(run_a, run_b):
    """The train_config keys whose values differ between two runs' ckpt.pt, and the model
    config keys likewise."""
    from wigglegpt.checkpoint import load_checkpoint

    a, b = load_checkpoint(str(run_a / "ckpt.pt")), load_checkpoint(str(run_b / "ckpt.pt"))
    train = {k for k in a["train_config"].keys() | b["train_config"].keys()
             if a["train_config"].get(k) != b["train_config"].get(k)}
    model = {k for k in a["config"].keys() | b["config"].keys() if a["config"].get(k) != b["config"].get(k)}
    return train, model, a["train_config"], b["train_config"]


def final_val_loss(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "eval"][-1]["val_loss"]


def test_ablation_trains_one_switch_flipped_per_run(tmp_path):
    config = tiny_configs(tmp_path, data_seed=2)[0]  # tiny_bio: oscillating MLP, RMSNorm, RoPE
    out_root = tmp_path / "runs"
    r = compare_command("--run", config, "--ablate=use_bio_mlp", "--seeds=2", "--seed=5", "--max_iters=2",
                        f"--out_root={out_root}")
    assert r.returncode == 0, r.stderr[-2000:]
    variant = "tiny_bio-use_bio_mlp=False"
    assert sorted(os.listdir(out_root)) == sorted(["compare.png", "tiny_bio", variant])
    for seed in (5, 6):
        base_run, variant_run = out_root / "tiny_bio" / f"seed{seed}", out_root / variant / f"seed{seed}"
        train, model, base, other = changed_settings(base_run, variant_run)
        assert train == {"use_bio_mlp"} | BOOKKEEPING and model == {"use_bio_mlp"}
        assert (base["use_bio_mlp"], other["use_bio_mlp"]) == (True, False)
        assert base["seed"] == other["seed"] == seed and base["max_iters"] == other["max_iters"] == 2
    lines = r.stdout.splitlines()
    assert next(line for line in lines if line.startswith("run ")).split()[:2] == ["run", "changed"]
    assert next(line for line in lines if line.startswith("tiny_bio/seed5 ")).split()[1:3] == ["none", "(base)"]
    assert "use_bio_mlp: True -> False" in next(line for line in lines if line.startswith(f"{variant}/seed6 "))
    summary = next(line for line in lines if line.startswith(f"{variant} ") and "+-" in line)
    assert "use_bio_mlp: True -> False" in summary and "(n=2)" in summary
    diffs = [final_val_loss(out_root / variant / f"seed{s}") - final_val_loss(out_root / "tiny_bio" / f"seed{s}")
             for s in (5, 6)]
    half = stats.t_quantile(0.975, 1) * statistics.stdev(diffs) / math.sqrt(2)
    paired = next(line for line in lines if line.startswith(f"  {variant} val loss: "))
    assert f"mean {statistics.mean(diffs):+.4f}, 95% CI [{statistics.mean(diffs) - half:+.4f}, " \
           f"{statistics.mean(diffs) + half:+.4f}], df=1" in paired
    assert "paired differences to tiny_bio " in r.stdout


def test_sweep_trains_one_run_per_value_and_plots_them(tmp_path):
    config = tiny_configs(tmp_path, data_seed=3)[1]  # tiny_gelu, n_layer = 1
    out_root, plot = tmp_path / "runs", tmp_path / "plots" / "layers.png"
    r = compare_command("--run", config, "--sweep=n_layer=2,1", "--max_iters=2", f"--out_root={out_root}",
                        f"--plot={plot}")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("tiny_gelu-")]
    assert [row.split()[0] for row in rows] == ["tiny_gelu-n_layer=2", "tiny_gelu-n_layer=1"]  # the reference first
    assert "n_layer: 1 -> 2" in rows[0] and "n_layer: 1 (as the config)" in rows[1]
    params = [int(row.split()[-7].replace(",", "")) for row in rows]  # the column after "changed"
    assert params[0] > params[1]  # two blocks, then one
    train, model, reference, other = changed_settings(out_root / "tiny_gelu-n_layer=2", out_root / "tiny_gelu-n_layer=1")
    assert train == {"n_layer"} | BOOKKEEPING and model == {"n_layer"}
    assert (reference["n_layer"], other["n_layer"]) == (2, 1)
    for path in (plot, tmp_path / "plots" / "layers-sweep.png"):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert f"wrote {path}" in r.stdout


def sweep_groups(finals):
    """[(name, rows)] as main() reads them, from {name: {seed: final val loss}}."""
    return [(name, [dict(seed=s, final_val_loss=v, final_val_bpb=None, hellaswag_acc_norm=None)
                    for s, v in by_seed.items()]) for name, by_seed in finals.items()]


def test_sweep_figure_axes():
    import matplotlib.pyplot as plt

    groups = sweep_groups({"a": {1: 3.0, 2: 3.2}, "b": {1: 2.9, 2: 2.95}, "c": {1: 2.8, 2: 2.9}})
    cases = [("n_layer", [2, 4, 8], "linear", [2.0, 4.0, 8.0], ["2", "4", "8"]),
             ("learning_rate", [1e-4, 1e-3, 1e-2], "log", [1e-4, 1e-3, 1e-2], ["0.0001", "0.001", "0.01"]),
             ("lr_schedule", ["cosine", "wsd", "constant"], "linear", [0, 1, 2], ["cosine", "wsd", "constant"])]
    for key, values, scale, ticks, labels in cases:
        fig = compare_bio.figure_sweep(key, values, groups)
        try:
            ax = fig.axes[0]
            assert ax.get_xscale() == scale and ax.get_xlabel() == key
            assert list(ax.get_xticks()) == pytest.approx(ticks)
            assert [t.get_text() for t in ax.get_xticklabels()] == labels
            means = ax.containers[0].lines[0]  # the errorbar's data line: the means over seeds
            assert list(means.get_xdata()) == pytest.approx(ticks)
            assert list(means.get_ydata()) == pytest.approx([3.1, 2.925, 2.85])
        finally:
            plt.close(fig)
    assert compare_bio.sweep_plot_path(os.path.join("out", "cmp.png")) == os.path.join("out", "cmp-sweep.png")
    assert compare_bio.split_values("(0.9,0.95), (0.9,0.99)") == ["(0.9,0.95)", "(0.9,0.99)"]
    assert compare_bio.split_values("'a,b',c") == ["'a,b'", "c"]


def test_ablate_and_sweep_bad_inputs_are_one_line_and_train_nothing(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    config, other = tiny_configs(tmp_path, data_seed=4)
    # bio_threshold, no gate setting and the original's beta names: train_bio.py derives the v2 gate
    original = tmp_path / "v2_style.py"
    original.write_text(open(config).read() + "bio_threshold = 0.3\nbeta1 = 0.9\n")
    out_root = tmp_path / "runs"
    cases = [(["--run", config, "--ablate=n_layer"], "n_layer is not one (its default is 12); try --sweep=n_layer="),
             (["--run", config, "--ablate=use_bio_mpl"], "unknown setting 'use_bio_mpl' of train_bio.py; did you mean "
                                                         "'use_bio_mlp'"),
             (["--run", config, "--sweep=n_layr=1,2"], "unknown setting 'n_layr' of train_bio.py; did you mean 'n_layer'"),
             (["--run", config, "--sweep=n_layer=2,x"], "n_layer='x' in --sweep=n_layer=2,x should be an int"),
             (["--run", config, "--sweep=learning_rate=1e-3,0.001"], "gives learning_rate=0.001 twice"),
             (["--run", config, "--ablate=seed"], "seed is set by compare_bio.py itself"),
             (["--run", str(original), "--ablate=use_sparse_gate"],
              "would change sparse_gate_kind, use_sparse_gate, not use_sparse_gate alone"),
             (["--run", config, "--ablate="], "--ablate is empty"),
             (["--run", config, "--sweep=n_layer="], "--sweep=n_layer is empty"),
             (["--run", config, "--sweep=n_layer=1,,2"], "has an empty item"),
             (["--run", config, "--ablate=use_rope,use_rope"], "names use_rope twice"),
             (["--run", config, "--sweep=n_layer=2,4,2"], "names 2 twice"),
             (["--run", config, "--sweep=n_layer=2"], "has one value"),
             (["--run", config, "--sweep=n_layer"], "--sweep takes KEY=V1,V2,..."),
             (["--run", config, "--sweep=n_layer=1,2", "--train_args=--n_layer=3"], "--train_args sets n_layer"),
             (["--run", config, "--ablate=use_rope", "--sweep=n_layer=1,2"], "--ablate and --sweep together"),
             (["--run", config, "--ablate=use_rope", "--rope_variants"], "--ablate and --rope_variants together"),
             (["--run", config, other, "--ablate=use_rope"], "--ablate varies one config; give one config file, not 2"),
             (["--run", config, other, "--sweep=n_layer=1,2"], "--sweep varies one config; give one config file, not 2"),
             ([config, "--ablate=use_rope"], "--ablate trains variants of a config: add --run"),
             ([config, "--sweep=n_layer=1,2"], "--sweep trains variants of a config: add --run")]
    # a few through the real command line (one that reads train_bio.py's settings, one that fails
    # before, one that needs the derived gate), side by side; the rest in this process, on the
    # settings table train_bio.py --help=json gave once
    on_the_command_line = [cases[0], cases[6], cases[-1]]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda case: compare_command(*case[0], f"--out_root={out_root}"), on_the_command_line))
    for (args, phrase), r in zip(on_the_command_line, results):
        assert r.returncode == 2, (args, r.stdout[-500:], r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
        assert r.stderr.startswith("error: ") and phrase in r.stderr, (args, r.stderr)
        assert "===" not in r.stdout, args  # no training started
    table = compare_bio.train_settings()
    monkeypatch.setattr(compare_bio, "train_settings", lambda: table)
    for args, phrase in cases:
        with pytest.raises(UserError) as info:
            compare_bio.main([*args, f"--out_root={out_root}"])
        assert phrase in str(info.value) and "\n" not in str(info.value), (args, str(info.value))
    assert not out_root.exists()
