"""Protects lm_eval_bio.py, the lm-evaluation-harness model 'wigglegpt': offline custom tasks
(YAML in a tmp folder over local .jsonl files, loaded with TaskManager(include_path=...)) run
through lm_eval.simple_evaluate, and what the harness records equals a direct computation on the
same tiny model: multiple-choice loglikelihoods (batched, right-padded, different lengths),
loglikelihood_rolling over texts longer than block_size (windows as the harness's own
get_rolling_token_windows cuts them), and generate_until as a greedy loop cut at the stop string.
Also the real command line `python lm_eval_bio.py --model wigglegpt ...`."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from wigglegpt import tokenizer
from wigglegpt.checkpoint import checkpoint_dict, load_model, save_checkpoint
from conftest import ROOT, require_module, tiny_config
from model_bio import GPT

INSTALL = "pip install -r requirements-optional.txt"
CHOICES = [dict(ctx="The cat sat on the", endings=["mat.", "moon, far away from every other cat.", "dog", "roof"],
                label=0),
           dict(ctx="She opened the door and ", endings=["left.", "smiled at the visitor.", "ran", "shut it."],
                label=1)]
TEXTS = [dict(text="To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
                   "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles."),
         dict(text="Short text.")]
PROMPTS = [dict(ctx="Once upon a time"), dict(ctx="The end")]
TASKS = {
    "wiggle_choice": ("choice.jsonl", CHOICES, """output_type: multiple_choice
doc_to_text: "{{ctx}}"
doc_to_choice: "{{endings}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true"""),
    "wiggle_rolling": ("texts.jsonl", TEXTS, """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte"""),
    "wiggle_generate": ("prompts.jsonl", PROMPTS, """output_type: generate_until
doc_to_text: "{{ctx}}"
doc_to_target: ""
generation_kwargs:
  until: [","]
  max_gen_toks: 12
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true"""),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    require_module("lm_eval", INSTALL)
    tmp = tmp_path_factory.mktemp("lm_eval")
    for name, (data, rows, body) in TASKS.items():
        (tmp / data).write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tmp / f"{name}.yaml").write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                          f"    test: {tmp / data}\ntest_split: test\n{body}\n")
    torch.manual_seed(0)
    ckpt = str(tmp / "ckpt.pt")
    # block_size 16: the long text needs several rolling windows
    save_checkpoint(checkpoint_dict(GPT(tiny_config(vocab_size=50304, block_size=16))), ckpt)
    model, _ = load_model(ckpt)
    return dict(tmp=tmp, ckpt=ckpt, model=model.eval())


def logprobs(model, ids):
    x = torch.tensor([ids])
    with torch.no_grad():
        logits, _ = model(x, torch.zeros_like(x))
    return F.log_softmax(logits[0].double(), dim=-1)


def test_harness_results_match_direct_computation(setup):
    import lm_eval
    import lm_eval_bio
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    model = setup["model"]
    lm = lm_eval_bio.make_lm(ckpt=setup["ckpt"], device="cpu", batch_size=3)
    out = lm_eval.simple_evaluate(model=lm, tasks=list(TASKS), log_samples=True,
                                  task_manager=TaskManager(include_path=str(setup["tmp"]), include_defaults=False))
    samples = out["samples"]

    choice = sorted(samples["wiggle_choice"], key=lambda s: s["doc_id"])
    for row, sample in zip(CHOICES, choice):
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"]):
            ctx_ids = tokenizer.encode(context.rstrip())
            cont_ids = tokenizer.encode(context[len(context.rstrip()):] + continuation)
            ids = (ctx_ids + cont_ids)[-17:]
            logp = logprobs(model, ids[:-1])
            first = len(ids) - 1 - len(cont_ids)
            want = sum(float(logp[first + j, t]) for j, t in enumerate(cont_ids))
            greedy = all(int(logp[first + j].argmax()) == t for j, t in enumerate(cont_ids))
            assert resp[0][0] == pytest.approx(want, rel=1e-4, abs=1e-4)
            assert resp[0][1] == greedy
    assert len({len(tokenizer.encode(" " + e)) for e in CHOICES[0]["endings"]}) > 1  # padding happened

    rolling = sorted(samples["wiggle_rolling"], key=lambda s: s["doc_id"])
    for row, sample in zip(TEXTS, rolling):
        ids = tokenizer.encode(row["text"])
        want = 0.0
        windows = list(map(make_disjoint_window, get_rolling_token_windows(ids, tokenizer.EOT, 16, 1)))
        for context, predicted in windows:
            seq = context + predicted
            logp = logprobs(model, seq[:-1])
            want += sum(float(logp[len(context) - 1 + j, t]) for j, t in enumerate(predicted))
        assert sample["resps"][0][0] == pytest.approx(want, rel=1e-4)
    assert len(tokenizer.encode(TEXTS[0]["text"])) > 2 * 16

    generated = sorted(samples["wiggle_generate"], key=lambda s: s["doc_id"])
    for row, sample in zip(PROMPTS, generated):
        ids = tokenizer.encode(row["ctx"])
        new = []
        for _ in range(12):  # greedy, recomputing the last block_size tokens each step
            logp = logprobs(model, (ids + new)[-16:])
            token = int(logp[-1, :tokenizer.VOCAB_SIZE].argmax())
            if token == tokenizer.EOT:
                break
            new.append(token)
        want = tokenizer.decode(new).split(",")[0]
        assert sample["resps"][0][0] == want


def test_command_line(setup):
    # no --device: lm_eval asks for cuda:0, which falls back to the CPU on a machine without CUDA
    r = subprocess.run([sys.executable, os.path.join(ROOT, "lm_eval_bio.py"), "--model", "wigglegpt",
                        "--model_args", f"ckpt={setup['ckpt']}", "--tasks", "wiggle_choice", "--include_path",
                        str(setup["tmp"]), "--batch_size", "2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wiggle_choice" in r.stdout and "acc" in r.stdout


def test_bad_model_args_are_user_errors(setup):
    import lm_eval_bio
    from wigglegpt.common import UserError
    with pytest.raises(UserError, match="checkpoint not found"):
        lm_eval_bio.make_lm(ckpt=str(setup["tmp"] / "missing.pt"), device="cpu")
    with pytest.raises(UserError, match="exactly one model"):
        lm_eval_bio.make_lm(device="cpu")
    with pytest.raises(UserError, match="batch_size"):
        lm_eval_bio.make_lm(ckpt=setup["ckpt"], device="cpu", batch_size="auto")
    # what the harness's own hf model takes but this one cannot use (the command line: test_bad_inputs.py)
    with pytest.raises(UserError, match=r"^--model_args pretrained=\.\.\.: the wigglegpt model takes ckpt, init_from"):
        lm_eval_bio.model_class().create_from_arg_string(f"ckpt={setup['ckpt']},pretrained=gpt2", {"device": "cpu"})


def lm_eval_command(setup, *extra):
    return subprocess.run([sys.executable, os.path.join(ROOT, "lm_eval_bio.py"), "--model", "wigglegpt",
                           "--tasks", "wiggle_choice", "--include_path", str(setup["tmp"]), "--limit", "2", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_device_may_come_from_model_args(setup):
    # the harness passes --device (default cuda:0) as well; device=cpu in --model_args wins, as for its hf model
    r = lm_eval_command(setup, "--model_args", f"ckpt={setup['ckpt']},device=cpu", "--batch_size", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wiggle_choice" in r.stdout and "Traceback" not in r.stderr
