"""Protects eval_bio.py through its real command line: on a tiny checkpoint saved with
wigglegpt.checkpoint and a tiny prepared dataset it prints the table and appends one JSON line per
task-metric whose values equal wigglegpt.evaluate's direct results; an unknown task, a dataset folder
without val.bin, a malformed HellaSwag row and a missing model are one error line (exit 2)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import eval_bio
from wigglegpt import evaluate, tokenizer
from wigglegpt.checkpoint import checkpoint_dict, load_model, save_checkpoint
from conftest import ROOT, tiny_config
from model_bio import GPT
from wigglegpt.common import UserError

ROWS = [dict(ctx="The cat sat on the", endings=["mat.", "moon, far away from every other cat.", "dog.", "roof"],
             label=0),
        dict(ctx="She opened the door and", endings=["left.", "smiled at the visitor.", "ran", "closed it again."],
             label="1")]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    ckpt = str(tmp / "ckpt.pt")
    save_checkpoint(checkpoint_dict(GPT(tiny_config(vocab_size=50304, block_size=32)), iter_num=5), ckpt)
    data = tmp / "data" / "tiny"
    data.mkdir(parents=True)
    ids = tokenizer.encode("To be, or not to be, that is the question. " * 30)
    np.array(ids, dtype=np.uint16).tofile(data / "val.bin")
    (tmp / "data" / "empty").mkdir()
    hellaswag = tmp / "hellaswag.jsonl"
    hellaswag.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return dict(tmp=tmp, ckpt=ckpt, data_root=str(tmp / "data"), hellaswag=str(hellaswag))


def run_cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, os.path.join(ROOT, "eval_bio.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env)


def test_command_line_prints_and_appends_results(files):
    out = files["tmp"] / "results.jsonl"
    out.write_text('{"earlier": "line"}\n')
    r = run_cli(f"--ckpt={files['ckpt']}", "--tasks=val,hellaswag", f"--data_root={files['data_root']}",
                "--dataset=tiny", "--eval_windows=6", "--eval_batch_size=4", "--seed=7",
                f"--hellaswag_file={files['hellaswag']}", f"--out={out}", "--device=cpu")
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert json.loads(lines[0]) == {"earlier": "line"}  # appended, not replaced
    records = [json.loads(line) for line in lines[1:]]
    assert [(x["task"], x["metric"], x["n"]) for x in records] == [
        ("val", "loss", 6), ("val", "bpb", 6), ("hellaswag", "acc", 2), ("hellaswag", "acc_norm", 2)]
    assert all(x["model"] == files["ckpt"] and x["time"] > 0 for x in records)

    model, _ = load_model(files["ckpt"])
    model.eval()
    val = evaluate.val_loss_bpb(model, os.path.join(files["data_root"], "tiny"), 6, 4, 0, 7)
    hs = evaluate.score_hellaswag(model, evaluate.load_hellaswag(files["hellaswag"]))
    got = {x["metric"]: x["value"] for x in records}
    assert got["loss"] == pytest.approx(val["loss"], rel=1e-5)
    assert got["bpb"] == pytest.approx(val["bpb"], rel=1e-5)
    assert (got["acc"], got["acc_norm"]) == (hs["acc"], hs["acc_norm"])
    table = r.stdout.splitlines()
    assert any(line.split()[:3] == ["val", "bpb", f"{val['bpb']:.4f}"] for line in table)
    assert any(line.split()[:2] == ["hellaswag", "acc_norm"] for line in table)


def test_unknown_task_is_one_error_line(files):
    r = run_cli(f"--ckpt={files['ckpt']}", "--tasks=val,mmlu")
    assert r.returncode == 2
    assert r.stderr == "error: unknown task 'mmlu'; use some of val, hellaswag\n"


def test_bad_inputs_are_user_errors(files, tmp_path):
    common = [f"--ckpt={files['ckpt']}", f"--data_root={files['data_root']}", "--device=cpu"]
    with pytest.raises(UserError, match="val.bin is missing"):
        eval_bio.main(common + ["--dataset=empty"])
    with pytest.raises(UserError, match="data folder not found"):
        eval_bio.main(common + ["--dataset=nowhere"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({**ROWS[1], "label": 7}) + "\n")
    with pytest.raises(UserError, match="bad.jsonl, line 2: 'label'"):
        eval_bio.main(common + ["--tasks=hellaswag", f"--hellaswag_file={bad}"])
    with pytest.raises(UserError, match="exactly one model"):
        eval_bio.main(["--tasks=val"])
    with pytest.raises(UserError, match="eval_windows must be positive"):
        eval_bio.main(common + ["--eval_windows=0"])
