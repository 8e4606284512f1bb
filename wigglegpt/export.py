"""
Hugging Face model folders: written from any model the project loads (export_bio.py), and read
back by every script (load_export) or by transformers (AutoModelForCausalLM, trust_remote_code).

A folder holds:
    model.safetensors        the weights only, GPT's own names (the tied lm_head once, as wte)
    config.json              the GPTConfig fields, model_type "wigglegpt", auto_map to the code below
    model_bio.py             a verbatim copy of this project's model, at export time
    modeling_wigglegpt.py    a verbatim copy of wigglegpt/hf_remote.py: the transformers wrapper
    tokenizer.json, vocab.json, merges.txt, tokenizer_config.json
                             GPT-2 BPE made from the vendored ranks, with the chat template
    generation_config.json   <|endoftext|> ends, the padded ids are never sampled, sample_bio's sampling
    README.md                the model card: front matter, architecture, training, metrics

safetensors and tokenizers (which comes with transformers) are needed to write a folder;
reading one needs safetensors only.
"""

import functools
import importlib
import json
import math
import os
import re
import shlex
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, fields

import torch
import torch.nn as nn

import model_bio
from model_bio import GPT, GPTConfig
from wigglegpt import hf
from wigglegpt.checkpoint import load_weights
from wigglegpt.common import CheckpointError, UserError, fsync, write_error
from wigglegpt.tokenizer import ASSISTANT_START, EOT, EOT_TEXT, VOCAB_SIZE, read_bpe_ranks

MODEL_TYPE = "wigglegpt"  # config.json's marker of a folder written here
WEIGHTS, CONFIG = "model.safetensors", "config.json"
REMOTE_CODE = "modeling_wigglegpt.py"
DTYPES = ("float32", "bfloat16", "float16")
# how one machine ran the model, not part of the weights (as checkpoint.model_config drops activation_kernel)
MACHINE_FIELDS = ("gradient_checkpointing", "activation_kernel")
TIED = ("lm_head.weight", "transformer.wte.weight")  # GPT ties the output layer to the token embedding
OPTIONAL_HINT = "or pip install -r requirements-optional.txt"
# the project's prepared datasets (train_config's dataset) and the Hub datasets they are made from
HUB_DATASETS = {"openwebtext": "Skylion007/openwebtext", "smoltalk": "HuggingFaceTB/smoltalk2"}
# sample_bio.py's defaults, so that generate() samples as this project does
SAMPLING = {"do_sample": True, "temperature": 0.8, "top_k": 200}

# The template of wigglegpt.tokenizer.render_prompt: each turn "<|role|>\n{content}\n<|/role|>\n",
# an empty system prompt left out, then "<|assistant|>\n" with add_generation_prompt. The same
# conversations it refuses raise here (raise_exception is transformers' own template function).
CHAT_TEMPLATE = (
    "{%- if not messages -%}{{- raise_exception('no messages') -}}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('unknown role: message ' ~ loop.index0 ~ ' has role ' ~ message['role']) -}}"
    "{%- elif message['content'] is not string -%}"
    "{{- raise_exception('non-string content: message ' ~ loop.index0) -}}"
    "{%- elif message['content'] | trim == '' -%}"
    "{%- if message['role'] != 'system' -%}"
    "{{- raise_exception('empty content: message ' ~ loop.index0 ~ ' (' ~ message['role'] ~ ') is empty') -}}"
    "{%- endif -%}"
    "{%- else -%}"
    "{{- '<|' ~ message['role'] ~ '|>\\n' ~ message['content'] ~ '\\n<|/' ~ message['role'] ~ '|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + ASSISTANT_START + "\\n' -}}{%- endif -%}"
)


def import_optional(module, package, purpose):
    """An optional package, or the one-line UserError that names its pip install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{purpose} needs {package}, which is not installed: pip install {package} "
                        f"({OPTIONAL_HINT})") from None


# ---------------------------------------------------------------------------------------
# reading a folder

def is_export_folder(path):
    """Whether path is a folder written by export: model.safetensors, and a config.json whose
    model_type is 'wigglegpt'. Never raises."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(os.path.join(path, WEIGHTS)):
        return False
    try:
        with open(os.path.join(path, CONFIG), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == MODEL_TYPE


def export_config(path):
    """The GPTConfig in path/config.json (the fields transformers adds are left aside)."""
    try:
        with open(os.path.join(path, CONFIG), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{os.path.join(path, CONFIG)} is not readable JSON ({e})") from None
    known = {f.name for f in fields(GPTConfig)}
    try:
        return GPTConfig(**{k: v for k, v in config.items() if k in known and k not in MACHINE_FIELDS})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad model config in config.json: {e}") from None


@contextmanager
def parameters_on_meta():
    """Modules built inside get their parameters on the meta device (no memory, initialization
    for free) while buffers stay real: the rotary tables GPT.__init__ computes are not in the
    weights file. Parameters already on meta pass through, so GPT's tied embedding stays tied."""
    register, normal = nn.Module.register_parameter, nn.init.normal_

    def on_meta(module, name, param):
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    def normal_unless_meta(tensor, *args, **kwargs):
        # nothing to draw on meta, and the first meta normal_ of a process costs seconds (torch
        # imports its compiler for that kernel)
        return tensor if tensor.is_meta else normal(tensor, *args, **kwargs)

    nn.Module.register_parameter, nn.init.normal_ = on_meta, normal_unless_meta
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.init.normal_ = register, normal


def load_export(path, device="cpu", dtype=torch.float32, **overrides):
    """The GPT an export folder holds, on device (train mode, like checkpoint.load_model).

    The weights are memory-mapped from model.safetensors and become the model's parameters as
    they are (no copy, no initialization): loading takes well under a second and memory grows
    only by the pages used. dtype: the parameters' dtype, float32 as every checkpoint's (a
    bfloat16 or float16 file is then converted, a copy); None keeps the file's. overrides
    replace config fields that do not change the weights (dropout, gradient_checkpointing,
    activation_kernel). A folder whose names or shapes do not fit its config is one
    CheckpointError, as a checkpoint is."""
    st = import_optional("safetensors.torch", "safetensors", f"loading {path}")
    config = export_config(path)
    try:
        config = GPTConfig(**{**asdict(config), **overrides})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    weights = os.path.join(path, WEIGHTS)
    try:
        state = st.load_file(weights, device=str(device))
    except Exception as e:  # safetensors raises its own error kinds for cut-off or foreign files
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{weights} is not a readable safetensors file ({reason})") from None
    if state and all(k.startswith("model.") for k in state):  # re-saved by transformers: its wrapper's prefix
        state = {k[len("model."):]: v for k, v in state.items()}
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}  # the same tensor when it has that dtype already
    if TIED[1] in state:
        state.setdefault(TIED[0], state[TIED[1]])
    with parameters_on_meta():
        model = GPT(config)
    load_weights(model, state, path, assign=True)
    model.transformer.wte.weight = model.lm_head.weight  # assign=True gave each name a Parameter of its own
    return model.to(device)  # the buffers; the parameters are there already


# ---------------------------------------------------------------------------------------
# the tokenizer files, from the vendored GPT-2 ranks

def byte_chars():
    """GPT-2's printable stand-in for each byte, in which tokenizer.json, vocab.json and
    merges.txt spell tokens: printable Latin-1 bytes stand for themselves, the others for
    chr(256 + n) in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@functools.lru_cache(maxsize=1)
def gpt2_bpe():
    """(vocab {spelled token: id}, merges [(left, right)] in priority order) of the ranks.

    tiktoken's file keeps only each token's rank; BPE needs the pair it is merged from. That
    pair is what BPE over the token's own bytes leaves when it may only use lower ranks (the
    tokens that existed before it), which is exactly how tiktoken encodes. Ranks are merge
    priorities, so the merges come in rank order."""
    ranks = read_bpe_ranks()
    chars = byte_chars()

    def spell(token):
        return "".join(chars[b] for b in token)

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:
            pair_ranks = [ranks.get(parts[i] + parts[i + 1], math.inf) for i in range(len(parts) - 1)]
            best = min(range(len(pair_ranks)), key=pair_ranks.__getitem__)
            if pair_ranks[best] >= rank:
                raise ValueError(f"rank {rank} cannot be built from lower ranks: the BPE file is damaged")
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        merges.append((spell(parts[0]), spell(parts[1])))
    vocab = {spell(token): rank for token, rank in ranks.items()}
    vocab[EOT_TEXT] = EOT
    return vocab, merges


def write_tokenizer(folder, block_size):
    """tokenizer.json (what AutoTokenizer loads), vocab.json and merges.txt (the classic GPT-2
    pair, for other tools) and tokenizer_config.json with the chat template."""
    tk = import_optional("tokenizers", "tokenizers", "writing the tokenizer")
    vocab, merges = gpt2_bpe()
    tokenizer = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=merges))
    # GPT-2's pre-tokenizer regex and byte mapping; no space added in front of the text
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    tokenizer.post_processor = tk.processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([tk.AddedToken(EOT_TEXT, special=True)])
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    write_json(os.path.join(folder, "vocab.json"), vocab)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in merges))
    write_json(os.path.join(folder, "tokenizer_config.json"), {
        "tokenizer_class": "GPT2Tokenizer", "bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT,
        "model_max_length": block_size, "add_prefix_space": False, "add_bos_token": False,
        "clean_up_tokenization_spaces": False, "errors": "replace",
        # "<|endoftext|>" typed in a text (or a chat message) stays text, as wigglegpt.tokenizer.encode
        # keeps it: only the id ends a document
        "split_special_tokens": True, "chat_template": CHAT_TEMPLATE})


# ---------------------------------------------------------------------------------------
# the model card

def read_metrics(path):
    """The records of a metrics.jsonl (see wigglegpt.metrics); lines that do not parse (a line
    cut off by a killed run) are skipped. No file: []."""
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
    except OSError:
        return []
    return records


def training_facts(ckpt, source):
    """What the model card tells of training: from the checkpoint dict (None for GPT-2) and the
    metrics.jsonl in the checkpoint's folder. The metrics are the last ones at or before the
    checkpoint's iteration (a run goes on after a best checkpoint was saved)."""
    # GPT-2's weights (a name or a save_pretrained folder) come without a checkpoint dict
    facts = {"source": source, "gpt2": ckpt is None and hf.is_gpt2_source(source) and not is_export_folder(source)}
    ckpt = ckpt if isinstance(ckpt, dict) else {}
    if isinstance(ckpt.get("train_config"), dict):
        facts["train_config"] = ckpt["train_config"]
    for key in ("iter_num", "tokens"):
        if is_count(ckpt.get(key)):
            facts[key] = ckpt[key]
    records = read_metrics(os.path.join(os.path.dirname(source), "metrics.jsonl")) if os.path.isfile(source) else []
    last_iter = facts.get("iter_num", math.inf)

    def last(kind, keys):
        found = [r for r in records if r.get("kind") == kind and is_count(r.get("iter")) and r["iter"] <= last_iter]
        return {k: found[-1][k] for k in keys if is_number(found[-1].get(k))} if found else None

    if (ev := last("eval", ("iter", "val_loss", "val_bpb"))) is not None:
        facts["eval"] = ev
    if (hs := last("hellaswag", ("iter", "acc", "acc_norm", "n"))) is not None:
        facts["hellaswag"] = hs
    if (end := last("end", ("iter", "tokens"))) is not None:
        for key, field in (("tokens", "tokens"), ("iter_num", "iter")):
            if is_count(end.get(field)):
                facts.setdefault(key, end[field])
    return facts


def is_count(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def train_command(train_config):
    """The train_bio.py command line that gives these settings, one --key=value a line."""
    def value(v):
        return shlex.quote(v if isinstance(v, str) else repr(v))
    return " \\\n    ".join(["python train_bio.py"] + [f"--{k}={value(v)}" for k, v in train_config.items()])


def architecture(cfg):
    """The switches of a GPTConfig, in words."""
    mlp = ("oscillating neurons, sin(omega*x + phi) * tanh(x) + baseline" if cfg.use_bio_mlp
           else f"GELU ({'tanh approximation' if cfg.gelu_approximate == 'tanh' else 'exact'})")
    if cfg.use_sparse_gate:
        mlp += f", {cfg.sparse_gate_kind} sparse gate (threshold {cfg.bio_threshold})"
    if not cfg.use_rope:
        positions = "a learned position table"
    elif cfg.legacy_rope:
        positions = "none (legacy_rope: the published checkpoints' rotation left q.k unchanged)"
    else:
        positions = "rotary (RoPE)"
    return [("MLP", mlp), ("normalization", "RMSNorm" if cfg.use_rmsnorm else "LayerNorm"),
            ("positions", positions), ("biases", "yes" if cfg.bias else "none"),
            ("layers, heads, width", f"{cfg.n_layer}, {cfg.n_head}, {cfg.n_embd}"),
            ("context", f"{cfg.block_size} tokens"),
            ("vocabulary", f"{cfg.vocab_size} ids" + (
                f" (GPT-2's {VOCAB_SIZE} tokens, padded for faster matmuls)" if cfg.vocab_size > VOCAB_SIZE else
                f" (GPT-2's {VOCAB_SIZE} tokens)" if cfg.vocab_size == VOCAB_SIZE else
                f" (fewer than the GPT-2 tokenizer's {VOCAB_SIZE}: its ids do not all fit)"))]


def model_card(model, dtype, facts, name):
    """README.md: front matter (license, datasets, tags) and the facts of the model."""
    cfg, facts = model.config, facts or {}
    source = str(facts.get("source", ""))
    train_config = facts.get("train_config") or {}
    from_gpt2 = bool(facts.get("gpt2"))
    dataset = train_config.get("dataset")
    hub = [HUB_DATASETS[dataset]] if dataset in HUB_DATASETS else []
    tags = ["wigglegpt", "text-generation", "custom_code", "safetensors",
            "oscillating-activation" if cfg.use_bio_mlp else "gpt2"]
    front = ["---", f"license: {'mit' if from_gpt2 else 'gpl-3.0'}", "library_name: transformers",
             "pipeline_tag: text-generation", "tags:", *[f"- {t}" for t in tags]]
    if hub:
        front += ["datasets:", *[f"- {d}" for d in hub]]
    front.append("---")
    switches = ", ".join(f"{f}={getattr(cfg, f)!r}" for f in ("use_bio_mlp", "use_rmsnorm", "use_rope", "legacy_rope",
                                                              "use_sparse_gate", "sparse_gate_kind", "bio_threshold",
                                                              "bias", "gelu_approximate"))
    rows = [("parameters", f"{model.get_num_params(non_embedding=False):,}"), *architecture(cfg),
            ("switches", f"`{switches}`"), ("weights", dtype)]
    if dataset:
        rows.append(("training data", hub[0] if hub else dataset))
    if facts.get("iter_num") is not None:
        rows.append(("training iterations", f"{facts['iter_num']:,}"))
    if facts.get("tokens") is not None:
        rows.append(("training tokens", f"{facts['tokens']:,}"))
    if ev := facts.get("eval"):
        if ev.get("val_loss") is not None:
            rows.append(("validation loss", f"{ev['val_loss']:.4f} (iteration {ev.get('iter')})"))
        if ev.get("val_bpb") is not None:
            rows.append(("validation bits per byte", f"{ev['val_bpb']:.4f}"))
    if (hs := facts.get("hellaswag")) and hs.get("acc_norm") is not None:
        acc = f", acc {hs['acc']:.4f}" if hs.get("acc") is not None else ""
        rows.append(("HellaSwag", f"acc_norm {hs['acc_norm']:.4f}{acc} ({hs.get('n')} examples, "
                                  f"iteration {hs.get('iter')})"))
    origin = ("OpenAI's GPT-2, converted to this project's model" if from_gpt2 else
              "a model trained with WiggleGPT's train_bio.py" if train_config else "a WiggleGPT checkpoint")
    body = [f"# {name}", "", f"WiggleGPT: a GPT whose MLP neurons can oscillate. This is {origin}, "
            f"exported with export_bio.py from `{os.path.basename(source) or source}`.", "",
            "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "",
            "## Use", "", "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "tokenizer = AutoTokenizer.from_pretrained(FOLDER, trust_remote_code=True)  # or answer its question",
            "model = AutoModelForCausalLM.from_pretrained(FOLDER, trust_remote_code=True)",
            "ids = tokenizer.apply_chat_template([{\"role\": \"user\", \"content\": \"Hello!\"}],",
            "                                    add_generation_prompt=True, return_tensors=\"pt\", return_dict=False)",
            "print(tokenizer.decode(model.generate(ids, max_new_tokens=50)[0]))",
            "```", "",
            "The model is `model_bio.py`, copied here as it was at export time; `modeling_wigglegpt.py` wraps it "
            "for transformers. In the WiggleGPT repository the folder loads as any checkpoint: "
            "`python sample_bio.py --init_from=FOLDER`.", "",
            "The model sees no attention mask: batch prompts of one length, or pad on the right. "
            "As in WiggleGPT, `<|endoftext|>` written in a text stays text (the tokenizer's "
            "split_special_tokens); only its id, 50256, ends a document."]
    if train_config:
        body += ["", "## Training command", "", "```", train_command(train_config), "```"]
    return "\n".join(front + [""] + body) + "\n"


# ---------------------------------------------------------------------------------------
# writing a folder

def write_json(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def hf_config(cfg, dtype):
    """config.json: the GPTConfig fields, the marker and what transformers needs to find the code."""
    model = {k: v for k, v in asdict(cfg).items() if k not in MACHINE_FIELDS}
    return {"architectures": ["WiggleGPTForCausalLM"], "model_type": MODEL_TYPE,
            "auto_map": {"AutoConfig": "modeling_wigglegpt.WiggleGPTConfig",
                         "AutoModelForCausalLM": "modeling_wigglegpt.WiggleGPTForCausalLM"},
            **model, "bos_token_id": EOT, "eos_token_id": EOT, "tie_word_embeddings": True, "use_cache": True,
            "dtype": dtype, "torch_dtype": dtype}  # torch_dtype: its name before transformers 5


def generation_config(cfg):
    return {"bos_token_id": EOT, "eos_token_id": EOT, "pad_token_id": EOT, **SAMPLING,
            # the ids past GPT-2's vocabulary pad the table; no text has them
            "suppress_tokens": list(range(VOCAB_SIZE, cfg.vocab_size))}


def write_folder(model, folder, dtype, facts, name):
    st = import_optional("safetensors.torch", "safetensors", "writing model.safetensors")
    if model.lm_head.weight is not model.transformer.wte.weight:
        raise UserError("the model's lm_head is not tied to its token embedding, as GPT ties them")
    state = {k: v.detach().to("cpu", getattr(torch, dtype)).contiguous()
             for k, v in model.state_dict().items() if k != TIED[0]}  # the tied lm_head is wte, saved once
    st.save_file(state, os.path.join(folder, WEIGHTS), metadata={"format": "pt"})
    write_json(os.path.join(folder, CONFIG), hf_config(model.config, dtype))
    shutil.copymode(os.path.join(folder, CONFIG), os.path.join(folder, WEIGHTS))  # safetensors makes it 0600
    write_json(os.path.join(folder, "generation_config.json"), generation_config(model.config))
    shutil.copyfile(model_bio.__file__, os.path.join(folder, "model_bio.py"))
    shutil.copyfile(os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_remote.py"),
                    os.path.join(folder, REMOTE_CODE))
    write_tokenizer(folder, model.config.block_size)
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(model, dtype, facts, name))


def alive(pid):
    """Whether process pid runs (on Windows, where os.kill would end it, assumed so)."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def tidy(out_dir):
    """Put right what an export of out_dir killed half way (kill -9, a power cut) left beside it:
    its temporary folder DIR.tmp<pid> goes, and the previous export it had set aside as
    DIR.old<pid> comes back when nothing stands at out_dir (killed between export's two renames).
    The folders of an export still running are left alone."""
    parent, base = os.path.split(os.path.abspath(out_dir))
    try:
        names = sorted(os.listdir(parent))
    except OSError:  # no parent yet: nothing left there
        return
    for name in names:
        found = re.fullmatch(re.escape(base) + r"\.(tmp|old)(\d+)", name)
        path = os.path.join(parent, name)
        if not found or not os.path.isdir(path) or alive(int(found[2])):
            continue
        if found[1] == "old" and not os.path.lexists(out_dir):
            try:
                os.replace(path, out_dir)
            except OSError as e:
                raise write_error(out_dir, e, "run again") from None
        else:
            shutil.rmtree(path, ignore_errors=True)


def check_out_dir(out_dir, overwrite):
    """An --out that may be written: new, an empty folder, or (overwrite) any folder. What a
    killed export of it left is put right first (tidy), so it is judged as that export left it."""
    if not out_dir:
        raise UserError("give the folder to write: --out=DIR")
    tidy(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out={out_dir} is a file; give a folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise UserError(f"--out={out_dir} exists and is not empty; choose another folder or add --overwrite")


def export(model, out_dir, dtype="float32", facts=None, overwrite=False):
    """Write the Hugging Face folder of model (a model_bio.GPT) at out_dir; returns its files.

    dtype: the weights' dtype in model.safetensors (float32, bfloat16, float16). facts: what the
    model card says of training (training_facts). Everything is written into a temporary sibling
    folder and renamed into place at the end, so an export killed half way leaves out_dir as it
    was (the next export of it tidies what was left). An existing non-empty out_dir is a
    UserError unless overwrite."""
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use {', '.join(DTYPES)}")
    check_out_dir(out_dir, overwrite)
    import_optional("safetensors.torch", "safetensors", "writing model.safetensors")  # before any work
    import_optional("tokenizers", "tokenizers", "writing the tokenizer")
    out_dir = os.path.abspath(out_dir)
    tmp, old = f"{out_dir}.tmp{os.getpid()}", f"{out_dir}.old{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        write_folder(model, tmp, dtype, facts, os.path.basename(out_dir))
        for entry in os.listdir(tmp):  # the bytes are on disk before the rename makes them count
            fsync(os.path.join(tmp, entry))
        if os.path.isdir(out_dir):  # set aside first: a rename cannot replace a folder that has files
            os.replace(out_dir, old)
            try:
                os.replace(tmp, out_dir)
            except OSError:
                os.replace(old, out_dir)
                raise
            # only now garbage: renamed to what tidy removes, so a .old is always a whole export
            os.replace(old, tmp)
        else:
            os.replace(tmp, out_dir)
        fsync(os.path.dirname(out_dir), directory=True)
    except Exception as e:  # noqa: BLE001  (a failed write, however the library reports it)
        error = e if isinstance(e, OSError) else os_error_in(e)
        if error is None:
            raise
        raise write_error(out_dir, error, "run again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted(os.listdir(out_dir))


def os_error_in(error):
    """The OSError that safetensors and tokenizers (Rust) report inside an exception of their own,
    as in '... No space left on device (os error 28)'; None when the error is not one."""
    found = re.search(r"\(os error (\d+)\)", str(error))
    return OSError(int(found.group(1)), os.strerror(int(found.group(1)))) if found else None


# ---------------------------------------------------------------------------------------
# the Hugging Face Hub

REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def hub_for_push(repo_id):
    """huggingface_hub, once it is clear an upload to repo_id can be tried: asked before the export,
    so that a typo or a missing login costs no time. Each problem is one UserError."""
    if not REPO_ID.fullmatch(repo_id):
        raise UserError(f"--push={repo_id}: give the repository as OWNER/NAME")
    hub = import_optional("huggingface_hub", "huggingface_hub", "--push")
    if hub.is_offline_mode():
        raise UserError(f"--push={repo_id}: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it, or "
                        "leave out --push and upload the folder later")
    if not hub.get_token():
        raise UserError(f"--push={repo_id}: no Hugging Face token; log in with `hf auth login` or set HF_TOKEN")
    return hub


def push(hub, folder, repo_id, public=False):
    """Upload folder as the model repository repo_id (private unless public); returns its URL."""
    started = time.time()
    try:
        hub.create_repo(repo_id, private=not public, exist_ok=True, repo_type="model")
        hub.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model",
                          commit_message="WiggleGPT export (export_bio.py)")
    except Exception as e:  # no network, a refused token, a name taken by someone else: each its own kind
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"could not upload {folder} to {repo_id} ({reason}); the folder is written, so run "
                        f"again with --push once that is fixed, or upload it with `hf upload {repo_id} {folder}`") from None
    print(f"uploaded to https://huggingface.co/{repo_id} in {time.time() - started:.1f} s")
    return f"https://huggingface.co/{repo_id}"
