"""Protects a newcomer's path through the real command lines, on tiny settings: prepare a small
local corpus, train a few dozen iterations, interrupt with Ctrl-C and resume, sample, chat with
piped input and analyze the checkpoint. Also that every command and config file the README
names exists and parses, and that the 124M configs give the published parameter count."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_DATASETS_OFFLINE": "1",
       "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}


def run(*args, input=None, timeout=300):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, input=input, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr
    return result


def test_prepare_train_interrupt_resume_sample_chat_analyze(tmp_path):
    # 1. a small corpus of our own, prepared the way a user prepares OpenWebText
    corpus = tmp_path / "corpus.jsonl"
    import gzip
    with gzip.open(os.path.join(ROOT, "data", "shakespeare", "shakespeare_complete.txt.gz"), "rt") as f:
        text = f.read(400_000)
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    with open(corpus, "w", encoding="utf-8") as f:
        for p in paragraphs:
            f.write(json.dumps({"text": p}) + "\n")
    data_root = tmp_path / "data"
    run("prepare_openwebtext_streaming.py", f"--data_files={corpus}", f"--out_dir={data_root / 'mini'}",
        "--val_fraction=0.1")
    meta = json.load(open(data_root / "mini" / "meta.json"))
    assert meta["vocab_size"] == 50257

    # 2. train, and interrupt it with Ctrl-C part way
    out = tmp_path / "out"
    settings = [f"--data_root={data_root}", "--dataset=mini", f"--out_dir={out}", "--device=cpu",
                "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8",
                "--gradient_accumulation_steps=1", "--eval_interval=10", "--eval_iters=2", "--log_interval=1",
                "--learning_rate=3e-3", "--min_lr=3e-4", "--warmup_iters=5", "--lr_decay_iters=40"]
    proc = subprocess.Popen([sys.executable, "train_bio.py", *settings, "--max_iters=100000"], cwd=ROOT,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.time() + 240
    while time.time() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if line.startswith("iter 15:"):
            break
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "--init_from=resume" in stdout
    interrupted_at = torch.load(out / "ckpt.pt", weights_only=True)["iter_num"]
    assert interrupted_at >= 16

    # 3. resume to 40 iterations: the loss falls from its start
    result = run("train_bio.py", *settings, "--max_iters=40", "--init_from=resume")
    records = [json.loads(l) for l in open(out / "metrics.jsonl")]
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals[-1]["iter"] == 40 and evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0
    assert [r["iter"] for r in records if r["kind"] == "start"] == [0, interrupted_at]
    assert "step 40:" in result.stdout

    # 4. sample, 5. chat with piped input, 6. analyze
    ckpt = out / "ckpt.pt"
    sample = run("sample_bio.py", f"--ckpt={ckpt}", "--start=ROMEO:", "--num_samples=1", "--max_new_tokens=20",
                 "--device=cpu")
    assert sample.stdout.startswith("ROMEO:") and len(sample.stdout) > len("ROMEO:")
    chat = run("chat_bio.py", f"--ckpt={ckpt}", "--max_new_tokens=8", "--device=cpu", "--seed=1",
               input="Hello there\nWho are you?\n")
    assert len(chat.stdout.splitlines()) == 2
    analysis = run("analyze_bio.py", f"--ckpt={ckpt}", f"--plots={tmp_path / 'plots'}")
    assert "omega" in analysis.stdout and "phi" in analysis.stdout
    assert any(name.endswith(".png") for name in os.listdir(tmp_path / "plots"))


def test_readme_commands_and_configs_exist_and_parse():
    from wigglegpt.settings import load_settings
    import train_bio
    from model_bio import GPT, GPTConfig

    scripts = set(re.findall(r"python ([a-z_]+\.py)", README))
    assert {"train_bio.py", "sample_bio.py", "chat_bio.py", "prepare_openwebtext_streaming.py",
            "prepare_smoltalk.py", "analyze_bio.py", "xor_bio.py", "compare_bio.py", "bench_bio.py"} <= scripts
    for script in scripts:
        assert os.path.exists(os.path.join(ROOT, script)), script
    configs = set(re.findall(r"config/[a-z0-9_]+\.py", README))
    assert {"config/gpt2_bio_3070.py", "config/gpt2_bio_5060ti.py", "config/gpt2_gelu_3070.py",
            "config/bio_45m_sparse_3070.py", "config/finetune_smoltalk.py", "config/shakespeare_bio.py"} <= configs
    for config in configs:
        s = load_settings(train_bio.SETTINGS, [os.path.join(ROOT, config)])
        cfg = GPTConfig(**{k: getattr(s, k) for k in train_bio.MODEL_FIELDS})
        if config in ("config/gpt2_bio_3070.py", "config/gpt2_bio_5060ti.py"):
            with torch.device("meta"):
                assert GPT(cfg).get_num_params() == 123_697_920
    for target in ("make demo", "make test"):
        assert target in README
    makefile = open(os.path.join(ROOT, "Makefile")).read()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in open(os.path.join(ROOT, ".ci", "run")).read()


@pytest.mark.parametrize("script", ["train_bio.py", "sample_bio.py", "chat_bio.py", "analyze_bio.py",
                                    "compare_bio.py", "xor_bio.py", "bench_bio.py",
                                    "prepare_openwebtext_streaming.py", "prepare_smoltalk.py"])
def test_every_script_explains_itself(script):
    result = run(script, "--help", timeout=120)
    assert "--" in result.stdout and len(result.stdout.splitlines()) > 3
