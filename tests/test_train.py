"""Protects train_bio.py: the command line and its one-line errors (exit code 2), that a few
iterations learn and leave a weights_only-loadable ckpt.pt and a metrics.jsonl of every kind,
bit-identical resume, crash safety (kill -9 mid-save, Ctrl-C/SIGTERM), masked SFT targets, the
NaN guard, fine-tuning from an original-format checkpoint, torchrun DDP on CPU, and wandb
offline runs that keep their id across a resume. Tiny models on tiny token files in tmp_path."""

import hashlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import types

import numpy as np
import pytest
import torch

from wigglegpt import checkpoint
from wigglegpt.data import TokenSplit
import train_bio
from model_bio import GPT, GPTConfig
from wigglegpt.common import run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "train_bio.py")
PATTERN = np.random.RandomState(0).randint(0, 64, 37).astype(np.uint16)  # a cycle the model can learn


def write_tokens(folder, n_train=4000, n_val=1500, mask_fn=None):
    """train.bin/val.bin of a repeating pattern (+ aligned *_mask.bin when mask_fn is given)."""
    os.makedirs(folder, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        tokens = np.resize(PATTERN, n)
        tokens.tofile(os.path.join(folder, f"{split}.bin"))
        if mask_fn is not None:
            mask_fn(tokens).astype(np.uint8).tofile(os.path.join(folder, f"{split}_mask.bin"))


def tiny(tmp_path, **overrides):
    """Settings of a 2-layer, 32-wide model on tmp_path/data/pat (written if missing)."""
    if not os.path.exists(tmp_path / "data" / "pat" / "train.bin"):
        write_tokens(tmp_path / "data" / "pat")
    settings = dict(data_root=str(tmp_path / "data"), dataset="pat", out_dir=str(tmp_path / "out"), device="cpu",
                    n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64, batch_size=4,
                    gradient_accumulation_steps=2, max_iters=8, eval_interval=4, eval_iters=2, log_interval=1,
                    learning_rate=1e-2, min_lr=1e-3, warmup_iters=2, lr_decay_iters=8, seed=0)
    settings.update(overrides)
    return settings


def argv(settings):
    return [f"--{k}={v}" for k, v in settings.items()]


def cli_env(**extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # tiny models: one thread is fastest
    env.update(extra)
    return env


def run_cli(args, timeout=120, **env):
    return subprocess.run([sys.executable, TRAIN, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=cli_env(**env))


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class LineReader:
    """Lines of a child's stdout through a queue, so waiting for one can time out."""

    def __init__(self, proc):
        self.lines, self.queue = [], queue.Queue()
        threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True).start()

    def _pump(self, stream):
        for line in stream:
            self.queue.put(line)
        self.queue.put(None)

    def wait_for(self, pattern, timeout=90):
        while True:
            line = self.queue.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"child ended before printing {pattern!r}:\n{''.join(self.lines)}")
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    def rest(self):
        while True:
            line = self.queue.get(timeout=60)
            if line is None:
                return "".join(self.lines)
            self.lines.append(line)


# ---------------------------------------------------------------------------------------

def test_cli_trains_logs_and_saves(tmp_path):
    s = tiny(tmp_path, max_iters=12, lr_decay_iters=12, peak_flops=1e11)
    r = run_cli(argv(s))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for figure in ("parameters", "tokens per iteration: 128", "gradient accumulation steps: 2", "device cpu",
                   "dtype float32"):
        assert figure in out
    assert re.search(r"model: \d{1,3}(,\d{3})+ parameters", out)  # thousands separators
    iter_lines = [l for l in out.splitlines() if l.startswith("iter ")]
    step_lines = [l for l in out.splitlines() if l.startswith("step ")]
    assert len(iter_lines) == 12 and len(step_lines) == 4  # evals at 0, 4, 8, 12
    assert all(re.fullmatch(r"iter \d+: loss \d+\.\d{4}, time \d+\.\d{2} ms, mfu \d+\.\d{2}%", l) for l in iter_lines)
    assert all(re.fullmatch(r"step \d+: train loss \d+\.\d{4}, val loss \d+\.\d{4}", l) for l in step_lines)

    records = metrics(s["out_dir"])
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("train") == 12 and kinds.count("eval") == 4
    start, end = records[0], records[-1]
    assert start["iter"] == 0 and start["tokens_per_iter"] == 128 and isinstance(start["params"], int)
    assert start["config"]["n_embd"] == 32 and set(train_bio.SETTINGS) <= set(start["config"])
    train = [r for r in records if r["kind"] == "train"]
    assert [t["iter"] for t in train] == list(range(12)) and train[-1]["tokens"] == 12 * 128
    assert all(isinstance(t[k], float) for t in train for k in ("loss", "lr", "dt_ms", "tokens_per_sec", "mfu"))
    assert all(t["firing_share"] is None for t in train)
    evals = [r for r in records if r["kind"] == "eval"]
    assert all(e["peak_mem_mb"] > 0 and isinstance(e["val_loss"], float) for e in evals)
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5, "the loss should fall on a repeating pattern"
    assert end == {**end, "iter": 12, "tokens": 12 * 128, "reason": "max_iters",
                   "best_val_loss": min(e["val_loss"] for e in evals)} and end["elapsed_s"] > 0

    ckpt = load(os.path.join(s["out_dir"], "ckpt.pt"))  # the whole checkpoint loads with weights_only=True
    for key in ("model", "optimizer", "scaler", "config", "model_args", "train_config", "iter_num", "best_val_loss",
                "rng", "sampler", "wandb_run_id", "tokens"):
        assert key in ckpt, key
    assert ckpt["iter_num"] == 12 and isinstance(ckpt["best_val_loss"], float)
    assert set(ckpt["rng"]) == {"python", "numpy", "torch"} and isinstance(ckpt["sampler"]["generator"], torch.Tensor)
    assert ckpt["train_config"]["betas"] == (0.9, 0.95) and ckpt["wandb_run_id"] is None
    best = load(os.path.join(s["out_dir"], "ckpt_best.pt"))
    assert best["best_val_loss"] == end["best_val_loss"]
    model, _ = checkpoint.load_model(os.path.join(s["out_dir"], "ckpt.pt"))
    assert model.config == GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32)


def bad_input_cases(tmp_path):
    """(name, extra args, extra env, words the one-line message must hold)."""
    typo_file = tmp_path / "typo.py"
    typo_file.write_text("n_layers = 4\n")
    type_file = tmp_path / "badtype.py"
    type_file.write_text("batch_size = '8'\n")
    resume_dir = tmp_path / "small_ckpt"
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32))
    checkpoint.save_checkpoint(checkpoint.checkpoint_dict(model, optimizer={}, iter_num=0),
                                   str(resume_dir / "ckpt.pt"))
    cases = [
        ("unknown key in file", [str(typo_file)], {}, ["unknown setting 'n_layers'", "did you mean 'n_layer'"]),
        ("unknown key on command line", ["--learning_rat=0.1"], {}, ["--learning_rat", "did you mean 'learning_rate'"]),
        # the rest: the same path as the command line (run_main around main), in this process to save time
        ("wrong type on command line", ["--batch_size=big"], {}, ["batch_size", "int"]),
        ("missing config file", [str(tmp_path / "nope.py")], {}, ["config file not found"]),
        ("batch larger than data", ["--batch_size=100000"], {}, ["fewer than one batch needs"]),
        ("cuda without a GPU", ["--device=cuda"], {}, ["device=cuda", "no CUDA"]),
        ("wrong type in file", [str(type_file)], {}, ["batch_size", "int"]),
        ("n_embd % n_head", ["--n_embd=30", "--n_head=4"], {}, ["not divisible by n_head"]),
        ("missing data dir", ["--dataset=nothing_here"], {}, ["data folder not found"]),
        ("resume without a checkpoint", ["--init_from=resume", f"--out_dir={tmp_path / 'empty'}"], {}, ["does not exist"]),
        ("block_size above the checkpoint's", ["--init_from=resume", f"--out_dir={resume_dir}", "--block_size=32"], {},
         ["block_size=32 is larger than the block_size 16"]),
        ("a new run over a finished one", [f"--out_dir={resume_dir}"], {},
         ["already holds a ckpt.pt", "--init_from=resume", "--overwrite=True"]),
        ("fine-tune from a missing file", [f"--init_from={tmp_path / 'gone.pt'}"], {}, ["gone.pt", "no such checkpoint"]),
        ("unknown schedule", ["--lr_schedule=linear"], {}, ["lr_schedule='linear'"]),
        ("betas", ["--betas=(0.9,1.5)"], {}, ["betas"]),
        ("accumulation vs processes", ["--gradient_accumulation_steps=3"],
         {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, ["not divisible by the 2 processes"]),
    ]
    if torch.cuda.is_available():
        cases = [c for c in cases if c[0] != "cuda without a GPU"]
    return cases


def check_one_line(name, code, err, words):
    lines = [l for l in err.splitlines() if l.strip()]
    if code != 2 or len(lines) != 1 or "Traceback" in err or not all(w in err for w in words):
        return f"{name}: exit {code}, stderr {err!r}"
    return None


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys):
    base = argv(tiny(tmp_path))
    cases = bad_input_cases(tmp_path)
    n_cli = 2  # through the real command line, side by side (tests/test_bad_inputs.py has many more)
    procs = [(name, words, subprocess.Popen([sys.executable, TRAIN, *base, *extra], cwd=ROOT, text=True,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(**env)))
             for name, extra, env, words in cases[:n_cli]]
    failures = []
    for name, extra, env, words in cases[n_cli:]:
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            capsys.readouterr()
            with pytest.raises(SystemExit) as exit_info:
                run_main(lambda: train_bio.main([*base, *extra]))
            failures.append(check_one_line(name, exit_info.value.code, capsys.readouterr().err, words))
    for name, words, proc in procs:
        _, err = proc.communicate(timeout=120)
        failures.append(check_one_line(name, proc.returncode, err, words))
    failures = [f for f in failures if f]
    assert not failures, "\n".join(failures)


def test_resume_is_bit_identical(tmp_path):
    # dropout on, evals and checkpoints in between: none of it may change what training does
    s = tiny(tmp_path, dropout=0.1, eval_interval=3, max_iters=8)
    whole = train_bio.train({**s, "out_dir": str(tmp_path / "whole")})
    assert whole["iter"] == 8 and whole["reason"] == "max_iters" and whole["tokens"] == 8 * 128
    first = train_bio.train({**s, "out_dir": str(tmp_path / "split"), "max_iters": 4})
    assert first["iter"] == 4
    second = train_bio.train({**s, "out_dir": str(tmp_path / "split"), "init_from": "resume"})
    assert second["iter"] == 8 and second["tokens"] == 8 * 128

    def losses(out_dir):
        return {r["iter"]: r["loss"] for r in metrics(out_dir) if r["kind"] == "train"}  # the last per iteration
    assert list(losses(tmp_path / "whole").values()) == [losses(tmp_path / "split")[i] for i in range(8)]
    a, b = load(tmp_path / "whole" / "ckpt.pt"), load(tmp_path / "split" / "ckpt.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for i, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], b["optimizer"]["state"][i]["exp_avg"])
    assert torch.equal(a["sampler"]["generator"], b["sampler"]["generator"])
    starts = [r for r in metrics(tmp_path / "split") if r["kind"] == "start"]
    assert [r["iter"] for r in starts] == [0, 4]


def test_kill_9_while_saving_keeps_the_last_checkpoint(tmp_path):
    s = tiny(tmp_path, max_iters=8, eval_interval=4)
    child = tmp_path / "slow_save.py"
    child.write_text(
        "import sys, time, torch\n"
        f"sys.path.insert(0, {ROOT!r})\n"
        "real_save, calls = torch.save, []\n"
        "def slow_save(obj, f, *args, **kwargs):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:  # the second checkpoint: half written, then the machine dies\n"
        "        f.write(b'half a checkpoint'); f.flush()\n"
        "        print('SAVING', flush=True)\n"
        "        time.sleep(120)\n"
        "    return real_save(obj, f, *args, **kwargs)\n"
        "torch.save = slow_save\n"
        "import train_bio\n"
        "from wigglegpt.common import run_main\n"
        "run_main(lambda: train_bio.main(sys.argv[1:]))\n")
    proc = subprocess.Popen([sys.executable, str(child), *argv(s)], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=cli_env())
    try:
        LineReader(proc).wait_for("^SAVING")
        assert [n for n in os.listdir(s["out_dir"]) if n.startswith("ckpt.pt.tmp")], "the write goes to a temporary file"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    ckpt = load(os.path.join(s["out_dir"], "ckpt.pt"))  # still the complete checkpoint of iteration 0
    assert ckpt["iter_num"] == 0
    summary = train_bio.train({**s, "init_from": "resume"})  # and the run goes on from it
    assert summary["iter"] == 8 and load(os.path.join(s["out_dir"], "ckpt.pt"))["iter_num"] == 8


def test_ctrl_c_and_sigterm_save_and_exit_cleanly(tmp_path):
    s = tiny(tmp_path, max_iters=100000, lr_decay_iters=100000, eval_interval=1000)
    ckpt_path = os.path.join(s["out_dir"], "ckpt.pt")
    for sig, extra in ((signal.SIGINT, []), (signal.SIGTERM, ["--init_from=resume"])):
        before = load(ckpt_path)["iter_num"] if os.path.exists(ckpt_path) else -1
        proc = subprocess.Popen([sys.executable, TRAIN, *argv(s), *extra], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
        try:
            reader = LineReader(proc)
            reader.wait_for(rf"^iter {before + 3}:")
            proc.send_signal(sig)
            out = reader.rest()
            err = proc.stderr.read()
            assert proc.wait(timeout=60) == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()
        assert "Traceback" not in err and "continue with --init_from=resume" in out
        ckpt = load(ckpt_path)
        assert ckpt["iter_num"] > before + 3
        end = metrics(s["out_dir"])[-1]
        assert end["kind"] == "end" and end["reason"] == "interrupted" and end["iter"] == ckpt["iter_num"]


def test_masked_targets_are_the_assistant_tokens_only(tmp_path):
    folder = tmp_path / "data" / "chat"
    learned = {5, 6, 7}
    write_tokens(folder, mask_fn=lambda t: np.isin(t, list(learned)))
    part = TokenSplit(str(folder), "train", masked=True)
    x, y = part.sample(32, 16, torch.Generator().manual_seed(0))
    kept = y != -1
    assert kept.any() and set(y[kept].tolist()) <= learned  # the mask of the target token decides
    next_tokens = x[:, 1:]  # y[:, i] is the token after x[:, i]: it must be kept iff it is an assistant token
    assert torch.equal(kept[:, :-1], torch.isin(next_tokens, torch.tensor(sorted(learned))))

    # windows without a single assistant target (a 0/0 loss) are drawn again
    sparse_mask = lambda t: np.arange(len(t)) >= len(t) - 40  # noqa: E731
    write_tokens(tmp_path / "data" / "rare", mask_fn=sparse_mask)
    rare = TokenSplit(str(tmp_path / "data" / "rare"), "train", masked=True)
    _, y = rare.sample(16, 16, torch.Generator().manual_seed(1))
    assert ((y != -1).sum(dim=1) > 0).all()


def test_sft_run_uses_the_mask_and_reports_the_firing_share(tmp_path, capsys):
    write_tokens(tmp_path / "data" / "chat", mask_fn=lambda t: t % 2 == 0)
    s = tiny(tmp_path, dataset="chat", use_sparse_gate=True, max_iters=4)
    summary = train_bio.train(s)
    out = capsys.readouterr().out
    assert summary["reason"] == "max_iters" and "loss on assistant tokens only" in out
    assert re.search(r"^iter 3: loss .*, mfu \S+, firing \d+\.\d%$", out, re.M)
    assert re.search(r"^step 4: train loss .*, firing \d+\.\d%$", out, re.M)
    train = [r for r in metrics(s["out_dir"]) if r["kind"] == "train"]
    assert all(0.0 <= t["firing_share"] <= 1.0 for t in train)


def test_nan_guard_stops_without_touching_the_last_checkpoint(tmp_path):
    s = tiny(tmp_path, max_iters=4, eval_interval=2)
    train_bio.train(s)
    ckpt_path, best_path = os.path.join(s["out_dir"], "ckpt.pt"), os.path.join(s["out_dir"], "ckpt_best.pt")
    before = digest(ckpt_path), digest(best_path)
    # a learning rate of 1e30 blows the weights up in one step; every later loss is non-finite
    r = run_cli(argv({**s, "init_from": "resume", "max_iters": 40, "lr_decay_iters": 40, "learning_rate": 1e30,
                      "min_lr": 0.0, "max_nan_skips": 3}))
    assert r.returncode == 3, r.stdout + r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "3 non-finite losses in a row" in lines[0] and "Traceback" not in r.stderr
    assert r.stdout.count("update skipped") == 3
    assert (digest(ckpt_path), digest(best_path)) == before
    end = metrics(s["out_dir"])[-1]
    assert end["kind"] == "end" and end["reason"] == "nan"


def test_fine_tune_from_an_original_checkpoint(tmp_path, capsys):
    cfg = GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32, bias=True, legacy_rope=True)
    model = GPT(cfg)
    model_args = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, bias=True, vocab_size=64, dropout=0.0,
                      use_bio_mlp=True, use_rmsnorm=True, use_rope=True, gradient_checkpointing=False)
    original = {"model": {"_orig_mod." + k: v for k, v in model.state_dict().items()},
                "optimizer": torch.optim.AdamW(model.parameters()).state_dict(), "model_args": model_args,
                "iter_num": 600000, "best_val_loss": torch.tensor(3.25),
                "config": {**model_args, "dataset": "openwebtext", "batch_size": 2}}
    path = tmp_path / "ckpt_pretrain.pt"
    torch.save(original, path)
    s = tiny(tmp_path, init_from=str(path), n_layer=3, max_iters=2, eval_interval=100)
    summary = train_bio.train(s)
    out = capsys.readouterr().out
    assert "original WiggleGPT format: legacy_rope on" in out
    assert "warning: n_layer=3 ignored" in out  # the checkpoint decides the architecture
    assert summary["iter"] == 2
    ckpt = load(os.path.join(s["out_dir"], "ckpt.pt"))
    assert ckpt["config"]["legacy_rope"] is True and ckpt["config"]["n_layer"] == 2 and ckpt["config"]["bias"] is True
    assert ckpt["iter_num"] == 2 and all(st["step"] == 2 for st in ckpt["optimizer"]["state"].values())  # fresh AdamW
    assert ckpt["train_config"]["n_layer"] == 2
    assert metrics(s["out_dir"])[0]["iter"] == 0


def test_torchrun_two_cpu_processes(tmp_path):
    s = tiny(tmp_path, max_iters=4, eval_interval=2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", TRAIN, *argv(s)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180, env=cli_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("device cpu, dtype float32, 2 process(es)") == 1  # only rank 0 talks
    assert "gradient accumulation steps: 1 per process x 2 process(es)" in r.stdout
    assert sorted(os.listdir(s["out_dir"])) == ["ckpt.pt", "ckpt_best.pt", "metrics.jsonl"]
    records = metrics(s["out_dir"])
    assert [r["kind"] for r in records].count("start") == 1 and records[-1]["iter"] == 4
    ckpt = load(os.path.join(s["out_dir"], "ckpt.pt"))
    assert ckpt["iter_num"] == 4 and ckpt["sampler"]["world_size"] == 2 and len(ckpt["rank_states"]) == 2
    assert not torch.equal(ckpt["rank_states"][0]["sampler"], ckpt["rank_states"][1]["sampler"])  # own batches

    # torchrun 2 -> torchrun 2 continues every process's streams; torchrun 2 -> plain warns and goes on
    r = subprocess.run([*cmd, "--init_from=resume", "--max_iters=6"], cwd=ROOT, capture_output=True, text=True,
                       timeout=180, env=cli_env())
    assert r.returncode == 0 and "resuming from" in r.stdout and "warning" not in r.stdout, r.stdout + r.stderr
    r = run_cli([*argv(s), "--init_from=resume", "--max_iters=8"])
    assert r.returncode == 0, r.stderr
    assert "was written by 2 process(es), this run has 1: batches and dropout will not continue exactly" in r.stdout
    assert load(os.path.join(s["out_dir"], "ckpt.pt"))["iter_num"] == 8


def test_resume_between_plain_and_torchrun_with_one_process_is_exact(tmp_path):
    # a plain run's checkpoint has no rank_states; one torchrun process is the same single stream
    s = tiny(tmp_path, dropout=0.1, max_iters=6)
    train_bio.train({**s, "out_dir": str(tmp_path / "whole")})
    train_bio.train({**s, "max_iters": 2})  # what `python train_bio.py` writes
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--standalone", TRAIN]
    r = subprocess.run([*torchrun, *argv(s), "--init_from=resume", "--max_iters=4"], cwd=ROOT, capture_output=True,
                       text=True, timeout=180, env=cli_env())
    assert r.returncode == 0 and "warning" not in r.stdout, r.stdout + r.stderr
    assert load(os.path.join(s["out_dir"], "ckpt.pt"))["rank_states"] is not None
    r = run_cli([*argv(s), "--init_from=resume"])  # and back to a plain run
    assert r.returncode == 0 and "warning" not in r.stdout, r.stderr

    def losses(out_dir):
        return {r["iter"]: r["loss"] for r in metrics(out_dir) if r["kind"] == "train"}
    assert losses(s["out_dir"]) == losses(tmp_path / "whole")
    a, b = load(tmp_path / "whole" / "ckpt.pt"), load(os.path.join(s["out_dir"], "ckpt.pt"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_wandb_offline_run_continues_on_resume(tmp_path):
    pytest.importorskip("wandb")
    s = tiny(tmp_path, max_iters=2, eval_interval=2, wandb_log=True, wandb_project="test", wandb_run_name="tiny")
    env = dict(WANDB_MODE="offline", WANDB_DIR=str(tmp_path), WANDB_SILENT="true")
    r = run_cli(argv(s), **env)
    assert r.returncode == 0, r.stderr
    run_id = load(os.path.join(s["out_dir"], "ckpt.pt"))["wandb_run_id"]
    assert isinstance(run_id, str) and run_id
    runs = lambda: sorted(n for n in os.listdir(tmp_path / "wandb") if n.startswith("offline-run-"))  # noqa: E731
    assert len(runs()) == 1 and runs()[0].endswith(run_id)
    r = run_cli(argv({**s, "init_from": "resume", "max_iters": 4}), **env)
    assert r.returncode == 0, r.stderr
    assert load(os.path.join(s["out_dir"], "ckpt.pt"))["wandb_run_id"] == run_id
    assert len(runs()) == 2 and all(n.endswith(run_id) for n in runs())


def test_learning_rate_schedules():
    s = types.SimpleNamespace(learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110, wsd_decay_frac=0.2,
                              lr_schedule="cosine", decay_lr=True, stable_iters=0)
    lr = lambda it: train_bio.learning_rate_at(it, s)  # noqa: E731
    assert lr(0) == pytest.approx(1 / 11) and lr(9) == pytest.approx(10 / 11)  # linear warmup
    assert lr(10) == pytest.approx(1.0) and lr(60) == pytest.approx(0.55) and lr(110) == lr(500) == 0.1
    assert all(lr(i) >= lr(i + 1) for i in range(10, 120))
    s.lr_schedule = "wsd"  # stable until the last 20% of the 100 post-warmup iterations
    assert lr(10) == lr(89) == lr(90) == 1.0 and lr(100) == pytest.approx(0.55) and lr(110) == 0.1
    s.lr_schedule = "constant"
    assert lr(10) == lr(10_000) == 1.0


def test_every_model_field_is_a_setting_and_help_lists_them(capsys):
    assert set(train_bio.MODEL_FIELDS) <= set(train_bio.SETTINGS)
    with pytest.raises(SystemExit) as exit_info:
        train_bio.main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert all(f"--{key}" in out for key in train_bio.SETTINGS)
