"""Protects wigglegpt/hf.py, GPT-2 as the reference model: a random GPT2LMHeadModel (built here from a
GPT2Config, saved with save_pretrained, nothing downloaded) converts to our GPT with the same
logits (tanh and exact GELU, full forward and KV-cache decoding); train_bio.py fine-tunes from
the folder through the real command line (config/finetune_shakespeare_gpt2.py) and its
checkpoint, loaded back, gives the same logits as those weights in transformers; sample_bio.py and chat_bio.py generate from the folder; a
missing transformers, an unreachable Hub name and unsupported GPT-2 variants are one clear line;
the shared init_from resolution; gelu_approximate defaults to 'none' for older checkpoints."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import wigglegpt.hf
from wigglegpt import checkpoint, loader
from conftest import ROOT, require_module
from model_bio import GPT
from wigglegpt.common import UserError

VOCAB = 50257  # GPT-2's own vocabulary, so the folder also samples with the real tokenizer


def random_gpt2(activation="gelu_new", seed=0, **config):
    """A small GPT2LMHeadModel with every weight (biases, LayerNorms too) away from its init."""
    transformers = require_module("transformers", "pip install -r requirements-optional.txt")
    settings = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=VOCAB, activation_function=activation)
    settings.update(config)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**settings)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2-tiny")
    random_gpt2().save_pretrained(str(folder))
    return str(folder)


def all_logits(model, idx):
    with torch.no_grad():
        logits, _ = model(idx, targets=idx)  # with targets our GPT returns every position's logits
    return logits


@pytest.mark.parametrize("activation, approximate", [("gelu_new", "tanh"), ("gelu", "none")])
def test_converted_logits_equal_transformers(activation, approximate):
    hf = random_gpt2(activation)
    ours = wigglegpt.hf.from_hf(hf)
    cfg = ours.config
    assert (cfg.gelu_approximate, cfg.bias, cfg.use_rope, cfg.use_rmsnorm, cfg.use_bio_mlp) == \
        (approximate, True, False, False, False)
    assert cfg.vocab_size == VOCAB and cfg.block_size == 64
    assert ours.lm_head.weight is ours.transformer.wte.weight  # still tied after loading
    idx = torch.randint(0, VOCAB, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = hf(idx).logits
    assert (all_logits(ours, idx) - reference).abs().max().item() <= 1e-4
    # decoding through the KV cache: positions continue after the cached prefix
    cache = ours.new_kv_cache()
    with torch.no_grad():
        ours(idx[:, :40], kv_cache=cache)
        step, _ = ours(idx[:, 40:41], kv_cache=cache)
    assert (step[:, 0] - reference[:, 40]).abs().max().item() <= 1e-4


def test_folder_loads_with_the_same_logits(gpt2_folder):
    transformers = require_module("transformers", "pip install -r requirements-optional.txt")
    assert wigglegpt.hf.is_gpt2_source(gpt2_folder) and wigglegpt.hf.is_gpt2_source("gpt2-xl")
    assert wigglegpt.hf.is_gpt2_source("openai-community/gpt2-medium")
    assert not wigglegpt.hf.is_gpt2_source("resume") and not wigglegpt.hf.is_gpt2_source(os.path.join(gpt2_folder, "x.pt"))
    assert not wigglegpt.hf.is_gpt2_source(os.path.dirname(gpt2_folder))  # a folder without config.json
    model, ckpt, source = loader.load_model_from(gpt2_folder, device="cpu", dropout=0.1)
    assert ckpt is None and source == gpt2_folder and model.config.dropout == 0.1
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_folder).eval()
    idx = torch.randint(0, VOCAB, (1, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = hf(idx).logits
    assert (all_logits(model.eval(), idx) - reference).abs().max().item() <= 1e-4


def test_unsupported_variants_are_clear_errors():
    transformers = require_module("transformers", "pip install -r requirements-optional.txt")
    small = dict(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=100)
    for change, words in [(dict(layer_norm_epsilon=1e-6), "layer_norm_epsilon"), (dict(n_inner=40), "n_inner"),
                          (dict(activation_function="relu"), "activation_function"),
                          (dict(scale_attn_by_inverse_layer_idx=True), "attention scaling")]:
        with pytest.raises(UserError, match=words):
            wigglegpt.hf.config_from_hf(transformers.GPT2Config(**small, **change))
    with pytest.raises(UserError, match="only GPT-2"):
        wigglegpt.hf.config_from_hf(transformers.LlamaConfig())


def test_resolution_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        loader.load_model_from("resume", str(tmp_path))
    with pytest.raises(UserError, match="no such checkpoint.*gpt2-medium"):
        loader.load_model_from(str(tmp_path / "gone.pt"))
    with pytest.raises(UserError, match="no weights"):
        loader.load_model_from("scratch")


def test_checkpoints_without_the_field_keep_exact_gelu(tmp_path):
    torch.manual_seed(0)
    ckpt = checkpoint.checkpoint_dict(GPT(wigglegpt.hf.config_from_hf(random_gpt2(n_layer=1, vocab_size=64).config)))
    assert ckpt["config"]["gelu_approximate"] == "tanh"  # stored with the model
    del ckpt["config"]["gelu_approximate"], ckpt["model_args"]["gelu_approximate"]  # as written before the field
    checkpoint.save_checkpoint(ckpt, str(tmp_path / "old.pt"))
    model, _ = checkpoint.load_model(str(tmp_path / "old.pt"))
    assert model.config.gelu_approximate == "none"
    assert model.transformer.h[0].mlp.activation.approximate == "none"


def script(*argv, env=None, timeout=300):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8", **(env or {})})


def test_fine_tune_from_gpt2_folder_round_trip(gpt2_folder, tmp_path):
    transformers = require_module("transformers", "pip install -r requirements-optional.txt")
    out = tmp_path / "out"
    # the GPT-2 fine-tuning config, on the tiny folder instead of the Hub's gpt2
    r = script("train_bio.py", "config/finetune_shakespeare_gpt2.py", f"--init_from={gpt2_folder}", f"--out_dir={out}",
               "--device=cpu", "--block_size=32", "--batch_size=2", "--gradient_accumulation_steps=1",
               "--max_iters=3", "--eval_interval=3", "--eval_iters=1", "--learning_rate=1e-3", "--min_lr=1e-3")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "fine-tuning from" in r.stdout and "GPT-2 weights" in r.stdout
    model, ckpt = checkpoint.load_model(str(out / "ckpt.pt"))
    cfg = ckpt["config"]
    assert (cfg["gelu_approximate"], cfg["bias"], cfg["use_rope"], cfg["vocab_size"], cfg["block_size"]) == \
        ("tanh", True, False, VOCAB, 64)
    assert ckpt["iter_num"] == 3 and ckpt["train_config"]["init_from"] == gpt2_folder
    # the fine-tuned weights, put back into transformers' GPT-2, give the loaded checkpoint's logits
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_folder).eval()
    start = {k: v.clone() for k, v in hf.state_dict().items()}
    trained = {k: (v.t() if k.endswith(wigglegpt.hf.CONV1D_WEIGHTS) else v) for k, v in ckpt["model"].items()}
    hf.load_state_dict(trained, strict=False)
    assert not torch.equal(hf.state_dict()["transformer.h.0.mlp.c_fc.weight"], start["transformer.h.0.mlp.c_fc.weight"])
    assert set(hf.state_dict()) <= set(trained) | {k for k in start if k.endswith((".attn.bias", ".attn.masked_bias"))}
    idx = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = hf(idx).logits
    assert (all_logits(model.eval(), idx) - reference).abs().max().item() <= 1e-4


def test_sample_chat_and_errors_through_the_command_line(gpt2_folder, tmp_path):
    require_module("transformers", "pip install -r requirements-optional.txt")
    no_transformers = ("import sys; sys.modules['transformers'] = None; sys.argv[1:] = ['--init_from=gpt2']; "
                       "import sample_bio, wigglegpt.common; wigglegpt.common.run_main(sample_bio.main)")
    runs = [("sample_bio.py", f"--init_from={gpt2_folder}", "--start=Hello", "--num_samples=1",
             "--max_new_tokens=6", "--device=cpu", "--seed=3"),
            ("chat_bio.py", f"--init_from={gpt2_folder}", "--prompt=Hi there", "--max_new_tokens=6", "--device=cpu",
             "--seed=3"),
            ("-c", no_transformers),
            ("sample_bio.py", "--init_from=gpt2", "--device=cpu"),  # a Hub name with no network and an empty cache
            ("chat_bio.py", "--ckpt=x.pt", f"--init_from={gpt2_folder}")]
    env = {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}
    with ThreadPoolExecutor(max_workers=3) as pool:
        sample, chat, missing, offline, both = pool.map(lambda argv: script(*argv, env=env), runs)
    assert sample.returncode == 0 and "Traceback" not in sample.stderr, sample.stderr[-2000:]
    assert sample.stdout.startswith("Hello") and len(sample.stdout.strip()) > len("Hello")
    assert chat.returncode == 0 and "Traceback" not in chat.stderr, chat.stderr[-2000:]
    assert chat.stdout.strip()
    for result, words in ((missing, "pip install transformers"), (offline, "could not load GPT-2 weights from 'gpt2'"),
                          (both, "give one")):
        assert result.returncode == 2, result.stderr[-2000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], result.stderr[-2000:]
        assert result.stdout == ""


def test_eval_script_scores_gpt2_like_a_direct_computation(gpt2_folder, tmp_path):
    """eval_bio.py --init_from=<save_pretrained folder>: HellaSwag from transformers' own logits."""
    transformers = require_module("transformers", "pip install -r requirements-optional.txt")
    import json
    from wigglegpt import tokenizer
    rows = [dict(ctx="The cat sat on the", endings=["mat.", "moon, far away from home.", "dog.", "roof"], label=0),
            dict(ctx="She opened the door and", endings=["left.", "smiled.", "ran", "closed it again slowly."], label=3)]
    (tmp_path / "hs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "results.jsonl"
    result = script("eval_bio.py", f"--init_from={gpt2_folder}", "--tasks=hellaswag", "--device=cpu",
                    f"--hellaswag_file={tmp_path / 'hs.jsonl'}", f"--out={out}")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    got = {r["metric"]: r["value"] for r in map(json.loads, out.read_text().splitlines())}
    reference = transformers.GPT2LMHeadModel.from_pretrained(gpt2_folder).eval()
    correct = correct_norm = 0
    for row in rows:
        ctx = tokenizer.encode(row["ctx"])
        sums, means = [], []
        for ending in row["endings"]:
            end = tokenizer.encode(" " + ending)
            ids = torch.tensor([ctx + end])
            with torch.no_grad():
                logp = torch.log_softmax(reference(ids).logits[0, :-1].double(), dim=-1)
            nll = -logp[torch.arange(len(ctx) - 1, ids.shape[1] - 1), ids[0, len(ctx):]]
            sums.append(nll.sum().item())
            means.append(nll.mean().item())
        correct += min(range(4), key=sums.__getitem__) == row["label"]
        correct_norm += min(range(4), key=means.__getitem__) == row["label"]
    assert got["acc"] == pytest.approx(correct / len(rows)) and got["acc_norm"] == pytest.approx(correct_norm / len(rows))
