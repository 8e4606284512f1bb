"""Protects export_bio.py and wigglegpt/export.py, the Hugging Face model folder: tiny checkpoints
(the oscillating MLP, the lightweight and event_layer sparse gates, legacy RoPE, the GPT-2
configuration) export through the real command line and in-process; load_export gives the very
logits of the checkpoint, memory-mapped (a 100 MB file loads in well under a second, touching no
memory until used); transformers' AutoModelForCausalLM (trust_remote_code) gives them too (fp32,
1e-5), through its KV cache as well, trains with our gradients, and its generate() picks the
greedy tokens of wigglegpt.engine.generate; OpenAI's GPT-2 exports to its own logits; a folder
re-saved by transformers loads back; AutoTokenizer encodes the Shakespeare corpus and unicode to
our ids and its chat template renders render_prompt's ids; lm-evaluation-harness's own `hf` model
scores the folder as a direct computation does; bfloat16 exports hold bfloat16; the model card
holds the run's facts from metrics.jsonl; --push without network or token, an existing --out, a
missing package and an interrupted (even kill -9) export are each one clear outcome; exports killed
at random points leave --out the old folder or the new one, byte for byte, and the next export tidies
what they left."""

import gzip
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, require_module, tiny_config
from model_bio import GPT
from wigglegpt import engine, export, loader, tokenizer
from wigglegpt.checkpoint import checkpoint_dict, load_model, save_checkpoint
from wigglegpt.common import CheckpointError, UserError

INSTALL = "pip install -r requirements-optional.txt"
VARIANTS = {
    "oscillating": {},
    "lightweight_gate": dict(use_sparse_gate=True, sparse_gate_kind="lightweight"),
    "event_layer_gate": dict(use_sparse_gate=True, sparse_gate_kind="event_layer"),
    "legacy_rope": dict(legacy_rope=True),
    "gpt2": dict(use_bio_mlp=False, use_rmsnorm=False, use_rope=False, bias=True, gelu_approximate="tanh"),
}
TRAIN_CONFIG = {"dataset": "openwebtext", "max_iters": 40, "betas": (0.9, 0.95), "out_dir": "out bio"}
METRICS = [{"kind": "start", "iter": 0, "params": 1},
           {"kind": "eval", "iter": 20, "val_loss": 4.5, "val_bpb": 1.9},
           {"kind": "hellaswag", "iter": 20, "acc": 0.26, "acc_norm": 0.27, "n": 100},
           {"kind": "eval", "iter": 40, "val_loss": 3.25, "val_bpb": 1.375},
           {"kind": "hellaswag", "iter": 40, "acc": 0.28, "acc_norm": 0.3125, "n": 100},
           {"kind": "eval", "iter": 60, "val_loss": 3.0, "val_bpb": 1.25},  # after the checkpoint: not its
           {"kind": "end", "iter": 60, "tokens": 999}]


def run_export(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "export_bio.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def one_line_error(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Per variant: a saved checkpoint (weights moved well away from their init, so that every
    part of the model matters and greedy tokens vary), it loaded back, and its export folder."""
    require_module("safetensors", INSTALL)
    require_module("tokenizers", INSTALL)
    tmp = tmp_path_factory.mktemp("export")
    out = {}
    for i, (name, switches) in enumerate(VARIANTS.items()):
        torch.manual_seed(i)
        model = GPT(tiny_config(vocab_size=50304, **switches))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        run_dir = tmp / f"run_{name}"
        ckpt = str(run_dir / "ckpt.pt")
        save_checkpoint(checkpoint_dict(model, iter_num=40, tokens=40 * 512, train_config=TRAIN_CONFIG), ckpt)
        loaded, saved = load_model(ckpt)
        folder = str(tmp / f"wigglegpt_{name}")
        export.export(loaded.eval(), folder, facts=export.training_facts(saved, ckpt))
        out[name] = dict(ckpt=ckpt, model=loaded.eval(), folder=folder)
    return out


def all_logits(model, idx):
    with torch.no_grad():
        return model(idx, targets=idx)[0]  # with targets our GPT gives every position's logits


def sample_ids(n=2, length=24, seed=1):
    return torch.randint(0, tokenizer.VOCAB_SIZE, (n, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def hf_models(built):
    transformers = require_module("transformers", INSTALL)
    models = {}
    for name, b in built.items():
        models[name] = transformers.AutoModelForCausalLM.from_pretrained(
            b["folder"], trust_remote_code=True, dtype=torch.float32).eval()
    return models


# ---------------------------------------------------------------------------------------
# the folder, written by the command line

def test_command_line_writes_the_folder_and_its_model_card(built, tmp_path):
    b = built["oscillating"]
    run_dir = os.path.dirname(b["ckpt"])
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in METRICS) + '{"kind": "eval", "iter"')  # a cut-off last line
    out = str(tmp_path / "wigglegpt-tiny")
    r = run_export(f"--ckpt={b['ckpt']}", f"--out={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wrote" in r.stdout
    assert sorted(os.listdir(out)) == sorted([
        "README.md", "config.json", "generation_config.json", "merges.txt", "model.safetensors", "model_bio.py",
        "modeling_wigglegpt.py", "tokenizer.json", "tokenizer_config.json", "vocab.json"])
    assert os.listdir(tmp_path) == ["wigglegpt-tiny"]  # no temporary folder left beside it
    assert export.is_export_folder(out)
    # the remote code is this repository's, verbatim: no second model to keep in step
    for copy, original in (("model_bio.py", "model_bio.py"), ("modeling_wigglegpt.py", "wigglegpt/hf_remote.py")):
        with open(os.path.join(out, copy)) as f, open(os.path.join(ROOT, original)) as g:
            assert f.read() == g.read()
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["model_type"] == "wigglegpt" and config["architectures"] == ["WiggleGPTForCausalLM"]
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_wigglegpt.WiggleGPTForCausalLM"
    assert config["use_bio_mlp"] is True and config["n_layer"] == 2 and "activation_kernel" not in config
    with open(os.path.join(out, "README.md")) as f:
        card = f.read()
    front = card.split("---")[1]
    assert "license: gpl-3.0" in front and "- Skylion007/openwebtext" in front and "- wigglegpt" in front
    for fact in (f"{b['model'].get_num_params(non_embedding=False):,}", "oscillating neurons", "RMSNorm",
                 "rotary (RoPE)", "training iterations | 40", "training tokens | 20,480",
                 "validation loss | 3.2500 (iteration 40)", "validation bits per byte | 1.3750",
                 "HellaSwag | acc_norm 0.3125, acc 0.2800 (100 examples, iteration 40)",
                 "python train_bio.py \\\n    --dataset=openwebtext", "--betas='(0.9, 0.95)'", "--out_dir='out bio'"):
        assert fact in card, fact
    # a model with no run behind it (an export exported again): the card still says what it is
    plain = export.model_card(b["model"], "float32", None, "x")
    assert "license: gpl-3.0" in plain and "training iterations" not in plain


def test_weights_are_the_models_once(built):
    from safetensors import safe_open
    b = built["gpt2"]
    with safe_open(os.path.join(b["folder"], export.WEIGHTS), framework="pt") as f:
        keys = set(f.keys())
        assert f.metadata() == {"format": "pt"}
        wte = f.get_tensor("transformer.wte.weight")
    assert keys == set(b["model"].state_dict()) - {"lm_head.weight"}  # the tied output layer once
    assert torch.equal(wte, b["model"].lm_head.weight)


# ---------------------------------------------------------------------------------------
# back into this project

@pytest.mark.parametrize("name", VARIANTS)
def test_load_export_gives_identical_logits(built, name):
    b = built[name]
    started = time.perf_counter()
    model = export.load_export(b["folder"]).eval()
    took = time.perf_counter() - started
    assert took < 2.0, took
    assert model.config == b["model"].config
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied: one parameter
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in b["model"].parameters())
    idx = sample_ids()
    assert torch.equal(all_logits(model, idx), all_logits(b["model"], idx))
    assert torch.equal(cached_logits(model, idx, 10), cached_logits(b["model"], idx, 10))  # the rebuilt buffers


def cached_logits(model, idx, split):
    """Every position's logits, the first split positions prefilled into a KV cache, then the rest one by one."""
    cache, steps = model.new_kv_cache(), []
    with torch.no_grad():
        steps.append(model(idx[:, :split], targets=idx[:, :split].contiguous(), kv_cache=cache)[0])
        for t in range(split, idx.shape[1]):
            steps.append(model(idx[:, t:t + 1], kv_cache=cache)[0])
    return torch.cat(steps, dim=1)


def test_load_export_maps_the_file_instead_of_reading_it(tmp_path):
    """A model of about 100 MB: loading it costs time and memory only for the pages it touches."""
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("the resident memory is read from /proc (Linux)")
    torch.manual_seed(0)
    folder = str(tmp_path / "mid")
    export.export(GPT(tiny_config(vocab_size=50304, n_embd=384, n_head=6, n_layer=4, block_size=64)).eval(), folder)
    size = os.path.getsize(os.path.join(folder, export.WEIGHTS))
    probe = (f"import os, sys, time, torch; sys.path.insert(0, {ROOT!r}); from wigglegpt import export\n"
             "def rss(): return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
             f"before = rss(); started = time.perf_counter(); model = export.load_export({folder!r})\n"
             "took = time.perf_counter() - started; loaded = rss()\n"
             "with torch.no_grad(): model(torch.zeros(1, 8, dtype=torch.long))\n"
             "print(took, loaded - before, rss() - before)")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    took, at_load, after_forward = map(float, r.stdout.split())
    assert size > 90e6 and took < 1.0, (size, took)
    assert at_load < 0.25 * size, at_load / size  # mapped, not read
    assert 0.75 * size < after_forward < 1.5 * size, after_forward / size  # a forward reads each weight: the file


def test_load_export_takes_overrides_and_a_device(built):
    model = export.load_export(built["oscillating"]["folder"], device="cpu", dropout=0.1, gradient_checkpointing=True,
                               activation_kernel="torch")
    assert (model.config.dropout, model.config.gradient_checkpointing, model.config.activation_kernel) == \
        (0.1, True, "torch")
    assert next(model.parameters()).device.type == "cpu" and model.rope_cos.device.type == "cpu"
    assert export.load_export(built["oscillating"]["folder"], dtype=torch.float16).lm_head.weight.dtype == torch.float16


def test_is_export_folder(built, tmp_path):
    assert export.is_export_folder(built["gpt2"]["folder"])
    assert not export.is_export_folder(str(tmp_path)) and not export.is_export_folder(built["gpt2"]["ckpt"])
    assert not export.is_export_folder(str(tmp_path / "missing")) and not export.is_export_folder(None)
    (tmp_path / "model.safetensors").write_bytes(b"")
    for config in ('{"model_type": "gpt2"}', "[1, 2]", "not json"):
        (tmp_path / "config.json").write_text(config)
        assert not export.is_export_folder(str(tmp_path))


def test_a_folder_that_does_not_fit_is_one_error(built, tmp_path):
    import shutil
    folder = tmp_path / "broken"
    shutil.copytree(built["oscillating"]["folder"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    with pytest.raises(CheckpointError, match="do not fit its config: missing transformer.h.2"):
        export.load_export(str(folder))
    (folder / "config.json").write_text(json.dumps({**config, "n_embd": 64, "n_head": 4}))
    with pytest.raises(CheckpointError, match="size mismatch"):
        export.load_export(str(folder))
    (folder / "config.json").write_text(json.dumps({**config, "n_head": 5}))
    with pytest.raises(CheckpointError, match="bad model config.*divisible"):
        export.load_export(str(folder))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        export.load_export(str(folder))


def test_scripts_load_the_folder(built):
    b = built["oscillating"]
    model, _, _ = loader.load_model_from(b["folder"], device="cpu", dropout=0.0)
    assert torch.equal(all_logits(model.eval(), sample_ids()), all_logits(b["model"], sample_ids()))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "sample_bio.py"), f"--init_from={b['folder']}",
                        "--start=Hello", "--num_samples=1", "--max_new_tokens=5", "--device=cpu"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("Hello"), r.stderr[-2000:]


# ---------------------------------------------------------------------------------------
# transformers

@pytest.mark.parametrize("name", VARIANTS)
def test_transformers_gives_our_logits(built, hf_models, name):
    hf, ours = hf_models[name], built[name]["model"]
    assert type(hf).__name__ == "WiggleGPTForCausalLM"
    idx = sample_ids()
    with torch.no_grad():
        out = hf(idx, labels=idx)
    want = all_logits(ours, idx)
    assert out.logits.dtype == torch.float32
    assert (out.logits - want).abs().max().item() <= 1e-5
    # labels are the inputs, shifted inside as transformers' causal LMs do
    loss = F.cross_entropy(want[:, :-1].reshape(-1, want.size(-1)), idx[:, 1:].reshape(-1))
    assert out.loss.item() == pytest.approx(loss.item(), abs=1e-5)
    # through transformers' KV cache: a prefix, then one token at a time, as our own cache does it
    steps = []
    with torch.no_grad():
        out = hf(idx[:, :10], use_cache=True)
        steps.append(out.logits)
        for t in range(10, idx.shape[1]):
            out = hf(idx[:, t:t + 1], cache=out["cache" if "cache" in out else "past_key_values"], use_cache=True)
            steps.append(out.logits)
    assert (torch.cat(steps, dim=1) - cached_logits(ours, idx, 10)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["oscillating", "event_layer_gate", "gpt2"])
def test_generate_takes_engines_greedy_tokens(built, hf_models, name):
    hf, ours = hf_models[name], built[name]["model"]
    for seed, length in ((3, 4), (4, 9)):
        prompt = sample_ids(1, length, seed)[0].tolist()
        want = list(engine.generate(ours, prompt, max_new_tokens=12, temperature=0, vocab_size=tokenizer.VOCAB_SIZE,
                                    stop_tokens=(tokenizer.EOT,)))
        with torch.no_grad():  # <|endoftext|> ends both (and the padded ids past GPT-2's are never picked)
            cached = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)
            plain = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, use_cache=False)
        assert cached[0, length:].tolist() == plain[0, length:].tolist() == want
        assert len(set(want)) > 2  # the tokens vary, so the cache's positions are really tested


def test_openai_gpt2_exports_to_the_same_logits(tmp_path):
    transformers = require_module("transformers", INSTALL)
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32,
                                                                vocab_size=tokenizer.VOCAB_SIZE)).eval()
    with torch.no_grad():
        for p in gpt2.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    gpt2.save_pretrained(str(tmp_path / "gpt2"))
    model, ckpt, source = loader.load_model_from(str(tmp_path / "gpt2"), device="cpu", dropout=0.0)
    folder = str(tmp_path / "exported")
    export.export(model.eval(), folder, facts=export.training_facts(ckpt, source))
    card = open(os.path.join(folder, "README.md")).read()
    assert "license: mit" in card and "OpenAI's GPT-2" in card and "LayerNorm" in card  # OpenAI's license, not ours
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
    idx = sample_ids(2, 20)
    with torch.no_grad():
        assert (hf(idx).logits - gpt2(idx).logits).abs().max().item() <= 1e-4


def test_transformers_trains_it_as_we_do(built):
    transformers = require_module("transformers", INSTALL)
    b = built["lightweight_gate"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(b["folder"], trust_remote_code=True, dtype=torch.float32)
    ours = export.load_export(b["folder"])
    idx = sample_ids()
    hf.train()(idx, labels=idx).loss.backward()
    ours.train()(idx, torch.cat([idx[:, 1:], torch.full((2, 1), -1)], dim=1))[1].backward()
    theirs = dict(hf.model.named_parameters())
    for name, p in ours.named_parameters():
        assert (theirs[name].grad - p.grad).abs().max().item() <= 1e-6, name


def test_a_folder_saved_by_transformers_loads_back(built, hf_models, tmp_path):
    # e.g. after fine-tuning with transformers: its save_pretrained puts the wrapper's "model." before each name
    folder = str(tmp_path / "resaved")
    hf_models["gpt2"].save_pretrained(folder)
    assert export.is_export_folder(folder)
    idx = sample_ids()
    assert torch.equal(all_logits(export.load_export(folder).eval(), idx), all_logits(built["gpt2"]["model"], idx))


def test_left_padding_is_refused(hf_models):
    hf = hf_models["oscillating"]
    with pytest.raises(ValueError, match="right padding"):
        hf(torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))
    with torch.no_grad():  # right padding: the real tokens never see it
        hf(torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]))


def test_tokenizer_gives_our_ids(built):
    transformers = require_module("transformers", INSTALL)
    # as plain as it gets: transformers 5 asks whether to run the folder's code for its config (stdin
    # answers no here) and loads the tokenizer all the same
    tok = transformers.AutoTokenizer.from_pretrained(built["oscillating"]["folder"])
    with gzip.open(os.path.join(ROOT, "data", "shakespeare", "shakespeare_complete.txt.gz"), "rt",
                   encoding="utf-8") as f:
        corpus = f.read()
    for text in (corpus, "naïve café, Ünïcödé, 日本語のテキスト, Ελληνικά, עברית, emoji 😀👍🏽 👨‍👩‍👧 🇺🇳",
                 "tabs\t\tand  spaces   \n\n\nnew lines\r\n 'll 've 're 's 't 'd 123456 ½ ﬁ \u200b",
                 "<|endoftext|> typed in a text stays text<|endoftext|>"):
        ids = tokenizer.encode(text)
        assert tok(text, add_special_tokens=True)["input_ids"] == ids
        assert tok.decode(ids) == text
    assert tok.eos_token == tok.bos_token == "<|endoftext|>" and tok.eos_token_id == tokenizer.EOT
    assert tok.model_max_length == built["oscillating"]["model"].config.block_size


CONVERSATIONS = [
    [{"role": "user", "content": "Hi there!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "system", "content": "  "}, {"role": "user", "content": "An empty system prompt is left out"}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Hi! How can I help?"}, {"role": "user", "content": "\n\nStarts with newlines  "}],
    [{"role": "user", "content": "Ünïcödé 日本語 😀👍🏽"}, {"role": "assistant", "content": " leading space"},
     {"role": "user", "content": "<|user|> tags typed\nby the user, and <|endoftext|>"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_template_renders_render_prompt(built, messages):
    transformers = require_module("transformers", INSTALL)
    tok = transformers.AutoTokenizer.from_pretrained(built["oscillating"]["folder"], trust_remote_code=True)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert list(ids) == tokenizer.render_prompt(messages)
    text = tok.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    assert text + tokenizer.ASSISTANT_START + "\n" == tokenizer.decode(tokenizer.render_prompt(messages))


def test_chat_template_refuses_what_render_prompt_refuses(built):
    transformers = require_module("transformers", INSTALL)
    import jinja2
    tok = transformers.AutoTokenizer.from_pretrained(built["oscillating"]["folder"], trust_remote_code=True)
    for messages, reason in (([], "no messages"), ([{"role": "robot", "content": "x"}], "unknown role"),
                             ([{"role": "user", "content": "  "}], "empty content"),
                             ([{"role": "user", "content": 3}], "non-string content")):
        with pytest.raises(tokenizer.InvalidConversation, match=reason):
            tokenizer.render_prompt(messages)
        # transformers 5 refuses an empty conversation itself (ValueError) before the template does
        with pytest.raises((jinja2.TemplateError, ValueError), match=reason if messages else "empty conversation"):
            tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


# ---------------------------------------------------------------------------------------
# dtype

def test_bfloat16_export_holds_bfloat16(built, tmp_path):
    from safetensors import safe_open
    b = built["lightweight_gate"]
    folder = str(tmp_path / "bf16")
    export.export(b["model"], folder, dtype="bfloat16")
    with safe_open(os.path.join(folder, export.WEIGHTS), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert json.loads(open(os.path.join(folder, "config.json")).read())["dtype"] == "bfloat16"
    assert export.load_export(folder).lm_head.weight.dtype == torch.float32  # as every checkpoint's
    model = export.load_export(folder, dtype=None).eval()  # as the file has them
    assert model.lm_head.weight.dtype == torch.bfloat16 and model.lm_head.weight is model.transformer.wte.weight
    idx = sample_ids()
    assert (all_logits(model, idx).float() - all_logits(b["model"], idx)).abs().max().item() < 0.5
    transformers = require_module("transformers", INSTALL)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    assert hf.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(hf(idx).logits, all_logits(model, idx))
    with pytest.raises(UserError, match="unknown dtype"):
        export.export(b["model"], str(tmp_path / "x"), dtype="int8")


# ---------------------------------------------------------------------------------------
# lm-evaluation-harness's own hf model

def test_lm_eval_hf_model_scores_the_folder(built, tmp_path):
    require_module("lm_eval", INSTALL)
    require_module("accelerate", INSTALL)
    import lm_eval
    from lm_eval.tasks import TaskManager
    rows = [dict(ctx="The cat sat on the", endings=["mat.", "moon, far away.", "dog", "roof"], label=0),
            dict(ctx="She opened the door and ", endings=["left.", "smiled at the visitor.", "ran", "shut it."],
                 label=1)]
    (tmp_path / "choice.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "export_choice.yaml").write_text(
        f"task: export_choice\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path / 'choice.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{ctx}}\"\ndoc_to_choice: \"{{endings}}\"\n"
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    b = built["oscillating"]
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={b['folder']},trust_remote_code=True,dtype=float32",
                                  tasks=["export_choice"], device="cpu", batch_size=3, log_samples=True,
                                  task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False))
    samples = out["samples"]["export_choice"]
    assert len(samples) == 2 and "acc,none" in out["results"]["export_choice"]
    for sample in samples:
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"]):
            # as the harness splits the text: trailing spaces go with the continuation, encoded as a whole
            ctx_ids = tokenizer.encode(context.rstrip())
            cont_ids = tokenizer.encode(context + continuation)[len(ctx_ids):]
            ids = torch.tensor([ctx_ids + cont_ids])
            logp = F.log_softmax(all_logits(b["model"], ids)[0].double(), dim=-1)
            want = sum(float(logp[len(ctx_ids) - 1 + j, t]) for j, t in enumerate(cont_ids))
            assert resp[0][0] == pytest.approx(want, abs=1e-4)


# ---------------------------------------------------------------------------------------
# what goes wrong

def test_existing_out_is_refused_unless_overwrite(built, tmp_path):
    b = built["legacy_rope"]
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = one_line_error(run_export(f"--ckpt={b['ckpt']}", f"--out={out}"))
    assert "exists and is not empty" in line and "--overwrite" in line
    assert os.listdir(out) == ["notes.txt"]
    assert "is a file" in one_line_error(run_export(f"--ckpt={b['ckpt']}", f"--out={out / 'notes.txt'}"))
    export.export(b["model"], str(out), overwrite=True)
    assert export.is_export_folder(str(out)) and "notes.txt" not in os.listdir(out)
    (tmp_path / "empty").mkdir()  # an empty folder is fine to write into
    export.export(b["model"], str(tmp_path / "empty"))
    assert export.is_export_folder(str(tmp_path / "empty"))


def test_an_interrupted_export_leaves_no_folder_that_looks_finished(built, tmp_path, monkeypatch):
    b = built["oscillating"]

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "write_tokenizer", killed)  # after the weights and config.json are written
    with pytest.raises(KeyboardInterrupt):
        export.export(b["model"], str(tmp_path / "new"))
    assert os.listdir(tmp_path) == []
    previous = tmp_path / "previous"
    monkeypatch.undo()
    export.export(b["model"], str(previous))
    monkeypatch.setattr(export, "write_tokenizer", killed)
    with pytest.raises(KeyboardInterrupt):
        export.export(b["model"], str(previous), dtype="float16", overwrite=True)
    assert os.listdir(tmp_path) == ["previous"] and export.is_export_folder(str(previous))
    assert json.loads((previous / "config.json").read_text())["dtype"] == "float32"  # the old one, whole

    def killed_export(out, kill, overwrite=False):
        script = (f"import os, signal, sys; sys.path.insert(0, {ROOT!r})\n"
                  "from wigglegpt import checkpoint, export\n"
                  "die = lambda *args: os.kill(os.getpid(), signal.SIGKILL)\n"
                  f"model, _ = checkpoint.load_model({b['ckpt']!r})\n{kill}\n"
                  f"export.export(model.eval(), {str(out)!r}, overwrite={overwrite})")
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert r.returncode == -9, r.stderr[-2000:]

    # kill -9 half way: nothing cleans up, and still nothing stands at --out
    out = tmp_path / "killed"
    killed_export(out, "export.write_tokenizer = die")
    assert not out.exists() and [n for n in os.listdir(tmp_path) if n.startswith("killed.tmp")]
    export.check_out_dir(str(out), overwrite=False)  # as the next export of it starts: the dead run's folder goes
    assert sorted(os.listdir(tmp_path)) == ["previous"]
    # between the two renames: the previous export waits whole beside --out, and the next export puts it back
    killed_export(previous, "replace = os.replace\n"
                            "os.replace = lambda src, dst: (replace(src, dst), '.old' in dst and die())", True)
    assert not previous.exists() and len(os.listdir(tmp_path)) == 2
    with pytest.raises(UserError, match="exists and is not empty"):  # judged as if that export had never run
        export.check_out_dir(str(previous), overwrite=False)
    assert os.listdir(tmp_path) == ["previous"] and export.is_export_folder(str(previous))
    assert json.loads((previous / "config.json").read_text())["dtype"] == "float32"


def hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_exports_killed_at_random_points_leave_the_old_folder_or_the_new(built, tmp_path):
    """kill -9 at random points of several exports over a finished one (--overwrite, the other dtype
    each time): after each kill --out holds the old export or the new one, byte for byte, never part
    of one, and beside it only what the killed run itself left, which the next run tidies away."""
    b = built["event_layer_gate"]
    model, saved = load_model(b["ckpt"])
    refs = {}
    for dtype in ("float32", "bfloat16"):  # what an uninterrupted export writes (the card names the folder)
        export.export(model.eval(), str(tmp_path / dtype / "wigglegpt"), dtype, export.training_facts(saved, b["ckpt"]))
        refs[dtype] = hashes(tmp_path / dtype / "wigglegpt")
    parent = tmp_path / "kills"
    out = parent / "wigglegpt"

    def start(dtype):
        """export_bio.py over out, returned once it writes (its temporary folder is there) or has ended."""
        victim = subprocess.Popen([sys.executable, os.path.join(ROOT, "export_bio.py"), f"--ckpt={b['ckpt']}",
                                   f"--out={out}", f"--dtype={dtype}", "--overwrite=True"], cwd=ROOT,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not (parent / f"wigglegpt.tmp{victim.pid}").exists() and victim.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.001)
        return victim

    victim = start("float32")
    began = time.monotonic()
    _, err = victim.communicate(timeout=120)
    writing = time.monotonic() - began  # from its temporary folder to its end
    assert victim.returncode == 0 and hashes(out) == refs["float32"], err.decode(errors="replace")[-2000:]
    rng = random.Random("export-kills")
    current, kills, mid_write = "float32", 5, 0
    for _ in range(kills):
        new = "bfloat16" if current == "float32" else "float32"
        victim = start(new)
        time.sleep(rng.uniform(0, writing))
        victim.kill()
        _, err = victim.communicate(timeout=30)
        assert victim.returncode in (0, -signal.SIGKILL), err.decode(errors="replace")[-2000:]  # 0: it finished first
        left = set(os.listdir(parent)) - {"wigglegpt"}
        assert left <= {f"wigglegpt.tmp{victim.pid}", f"wigglegpt.old{victim.pid}"}, left  # the earlier runs' went
        mid_write += f"wigglegpt.tmp{victim.pid}" in left
        # killed between the two renames: the previous export waits beside --out, whole, for the next run
        state = hashes(out if out.exists() else parent / f"wigglegpt.old{victim.pid}")
        assert state in (refs[current], refs[new]), "a partial folder"
        current = new if state == refs[new] else current
    assert mid_write >= kills // 2, f"only {mid_write} of {kills} kills came while the export was writing"
    new = "bfloat16" if current == "float32" else "float32"
    r = run_export(f"--ckpt={b['ckpt']}", f"--out={out}", f"--dtype={new}", "--overwrite=True")
    assert r.returncode == 0, r.stderr[-2000:]
    assert hashes(out) == refs[new] and os.listdir(parent) == ["wigglegpt"]


def test_push_without_network_or_token_is_one_line(built, tmp_path):
    require_module("huggingface_hub", INSTALL)
    import export_bio
    b = built["gpt2"]
    out = tmp_path / "pushed"
    line = one_line_error(run_export(f"--ckpt={b['ckpt']}", f"--out={out}", "--push=me/wigglegpt-tiny",
                                     env={"HF_HUB_OFFLINE": "1"}))
    assert line.startswith("error: --push=me/wigglegpt-tiny: HF_HUB_OFFLINE is set")
    no_token = {"HF_HUB_OFFLINE": "0", "HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf_home")}  # none stored there
    line = one_line_error(run_export(f"--ckpt={b['ckpt']}", f"--out={out}", "--push=me/wigglegpt-tiny", env=no_token))
    assert "no Hugging Face token" in line and "hf auth login" in line
    for argv, message in ((["--push=just-a-name"], "give the repository as OWNER/NAME"),
                          (["--public"], "--public is for --push")):
        with pytest.raises(UserError, match=message):
            export_bio.main([f"--ckpt={b['ckpt']}", f"--out={out}", *argv])
    assert not out.exists()  # asked before the export: nothing written


def test_bad_command_lines_are_one_line(built, tmp_path):
    import export_bio
    assert "exactly one model" in one_line_error(run_export(f"--out={tmp_path / 'x'}"))
    for argv, message in (([f"--ckpt={built['gpt2']['ckpt']}"], "--out=DIR"),
                          ([f"--ckpt={tmp_path / 'no.pt'}", f"--out={tmp_path / 'x'}"], "checkpoint not found"),
                          ([f"--ckpt={built['gpt2']['ckpt']}", f"--out={tmp_path / 'x'}", "--dtype=int8"],
                           "unknown dtype"),
                          ([f"--ckpt={built['gpt2']['ckpt']}", f"--init_from={built['gpt2']['ckpt']}",
                            f"--out={tmp_path / 'x'}"], "both name the model")):
        with pytest.raises(UserError, match=message):
            export_bio.main(argv)
    assert not (tmp_path / "x").exists()


def test_a_missing_package_is_one_line_naming_its_install(built, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"needs safetensors, which is not installed: pip install safetensors"):
        export.load_export(built["oscillating"]["folder"])
    with pytest.raises(UserError, match="pip install safetensors"):
        export.export(built["oscillating"]["model"], str(tmp_path / "x"))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(UserError, match="pip install huggingface_hub"):
        export.hub_for_push("me/model")
    assert not (tmp_path / "x").exists()
