"""
Evaluation: the one module train_bio.py and eval_bio.py score models with.

Validation loss and bits per byte over seeded windows of a prepared val.bin (one loop,
loss_sums, for training's evals and eval_bio.py), and HellaSwag (Zellers et al. 2019) scored
completion style as llm.c does. The definitions: README.md, "Evaluation".
"""

import json
import math
import os
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from tqdm import tqdm

from wigglegpt import tokenizer
from wigglegpt.checkpoint import unwrap
from wigglegpt.common import UserError
from wigglegpt.data import open_split
from wigglegpt.distributed import all_reduce_mean

HELLASWAG_HUB = "Rowan/hellaswag"
N_ENDINGS = 4


# ---------------------------------------------------------------------------------------
# bytes per token

_BYTE_TABLES = {}


def token_byte_table(vocab_size, device="cpu", vocab=None):
    """int64 tensor (vocab_size,): the UTF-8 byte length of each token id's text; 0 for
    <|endoftext|> and for ids past the tokenizer's vocabulary (the model's padding ids). vocab: a
    character-level model's chardata.CharVocab (None: GPT-2 BPE), each id's text its character."""
    key = (vocab_size, str(device), tuple(vocab.itos) if vocab is not None else None)
    if key not in _BYTE_TABLES:
        if vocab is not None:
            lengths = (vocab.byte_lengths() + [0] * vocab_size)[:vocab_size]
        else:
            enc = tokenizer.get_tokenizer()
            lengths = [len(enc.decode_single_token_bytes(i)) if i < tokenizer.EOT else 0 for i in range(vocab_size)]
        _BYTE_TABLES[key] = torch.tensor(lengths, dtype=torch.long, device=device)
    return _BYTE_TABLES[key]


def target_bytes(targets, table):
    """Total bytes of the targets (ignored targets, -1, count 0) as a 0-dim tensor."""
    valid = targets >= 0
    return (table[targets.clamp(min=0)] * valid).sum()


def bits_per_byte(nats, n_bytes):
    return nats / math.log(2) / n_bytes if n_bytes > 0 else float("nan")


# ---------------------------------------------------------------------------------------
# validation loss and bits per byte over fixed windows

def val_windows(folder, n_windows, block_size, seed=0, split="val"):
    """(x, y) int64 tensors of n_windows windows at seeded random offsets of split.bin; where
    split_mask.bin exists (chat data), targets outside assistant replies become -1."""
    tokens = open_split(folder, split)
    if tokens.n_tokens < block_size + 1:
        raise UserError(f"{tokens.path} has {tokens.n_tokens:,} tokens, fewer than one window of block_size "
                        f"{block_size} + 1")
    generator = torch.Generator().manual_seed(seed)
    return tokens.windows(tokens.random_starts(n_windows, block_size, generator), block_size)


@torch.no_grad()
def loss_sums(model, batches, byte_table, autocast=None, progress=None):
    """The one evaluation loop (training's estimate and eval_bio's alike): over (x, y) batches on
    the model's device, sums [each batch's mean loss, nats, target tokens, target bytes] as a
    float64 tensor (float32 on MPS, which has no float64) on that device, with no GPU sync. A
    batch with no target that counts adds 0."""
    autocast = autocast if autocast is not None else nullcontext()
    sums = None
    for x, y in batches:
        with autocast:
            _, loss = model(x, y, return_logits=False)  # the loss alone: no full logits held
        dtype = torch.float32 if y.device.type == "mps" else torch.float64
        count = (y >= 0).sum().to(dtype)
        loss = loss.to(dtype)
        nats = torch.where(count > 0, loss * count, torch.zeros_like(loss))  # the batch's mean back to a sum
        step = torch.stack([loss, nats, count, target_bytes(y, byte_table).to(dtype)])
        sums = step if sums is None else sums + step
        if progress is not None:
            progress.update()
    return sums


def val_loss_bpb(model, folder, n_windows=100, batch_size=8, block_size=0, seed=0, device="cpu",
                 autocast=None, split="val", vocab=None):
    """Mean loss (nats per predicted token) and bits per byte of model over n_windows fixed
    windows of block_size tokens (0: the model's). vocab: the characters of a character-level
    model and folder (chardata.CharVocab; None: GPT-2 tokens), whose UTF-8 bytes the bpb counts.
    Returns dict(loss, bpb, n, tokens, bytes)."""
    config = unwrap(model).config
    block_size = block_size or config.block_size
    if block_size > config.block_size:
        raise UserError(f"block_size={block_size} is larger than the model's block_size {config.block_size}")
    x_all, y_all = val_windows(folder, n_windows, block_size, seed, split)
    top = int(max(x_all.max(), y_all.max()))
    if top >= config.vocab_size:
        raise UserError(f"{folder}/{split}.bin holds token id {top:,} but the model's vocab_size is "
                        f"{config.vocab_size:,}")
    if vocab is not None and top >= len(vocab):
        raise UserError(f"{folder}/{split}.bin holds token id {top:,} but the vocabulary has {len(vocab):,} "
                        "characters; prepare the data again")
    batches = ((x_all[i:i + batch_size].to(device), y_all[i:i + batch_size].to(device))
               for i in range(0, n_windows, batch_size))
    was_training = model.training
    model.eval()
    with tqdm(total=-(-n_windows // batch_size), desc=f"{split} loss", leave=False, disable=None) as progress:
        _, nats, tokens, n_bytes = loss_sums(model, batches, token_byte_table(config.vocab_size, device, vocab),
                                             autocast, progress).tolist()  # syncs the GPU
    model.train(was_training)
    tokens, n_bytes = round(tokens), round(n_bytes)
    return dict(loss=nats / tokens if tokens else float("nan"), bpb=bits_per_byte(nats, n_bytes), n=n_windows,
                tokens=tokens, bytes=n_bytes)


# ---------------------------------------------------------------------------------------
# HellaSwag

def check_hellaswag_row(row, where):
    """(ctx, endings, label) of one HellaSwag row, or a UserError saying what is wrong where."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: a HellaSwag row must be a JSON object, got {type(row).__name__}")
    ctx, endings, label = row.get("ctx"), row.get("endings"), row.get("label")
    if not isinstance(ctx, str) or not ctx.strip():
        raise UserError(f"{where}: 'ctx' must be a non-empty string")
    if (not isinstance(endings, list) or len(endings) != N_ENDINGS
            or not all(isinstance(e, str) and e.strip() for e in endings)):
        raise UserError(f"{where}: 'endings' must be a list of {N_ENDINGS} non-empty strings")
    if isinstance(label, str) and label.strip().isdigit():  # the Hub's copy stores "2"
        label = int(label)
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < N_ENDINGS:
        raise UserError(f"{where}: 'label' must be 0..{N_ENDINGS - 1} (or that digit as a string), got {label!r}")
    return dict(ctx=ctx, endings=endings, label=label)


def load_hellaswag(file="", limit=0, hub_name=HELLASWAG_HUB):
    """HellaSwag validation rows [{ctx, endings, label}] from a local .jsonl in HellaSwag's
    own format, or (file empty) from the Hub through `datasets`. limit > 0: the first limit rows.
    A malformed row is refused with its line number: a silently smaller set would not compare."""
    rows = []
    if file:
        if not os.path.isfile(file):
            raise UserError(f"hellaswag_file not found: {file}")
        try:
            f = open(file, "rb")
        except OSError as e:  # no permission
            raise UserError(f"cannot read hellaswag_file {file}: {e.strerror or e}") from None
        with f:
            for line_no, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise UserError(f"{file}, line {line_no}: not UTF-8 text") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{file}, line {line_no}: not valid JSON ({e.msg})") from None
                rows.append(check_hellaswag_row(row, f"{file}, line {line_no}"))
                if limit and len(rows) >= limit:
                    break
    else:
        try:
            import datasets
        except ImportError:
            raise UserError("HellaSwag from the Hub needs `datasets` (pip install -r requirements.txt), "
                            "or give a local --hellaswag_file") from None
        try:
            split = datasets.load_dataset(hub_name, split="validation")
        except Exception as e:  # offline, no such dataset, ...: many kinds
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise UserError(f"could not load HellaSwag from {hub_name} ({reason}); "
                            "download hellaswag_val.jsonl and pass --hellaswag_file") from None
        for i, row in enumerate(split):
            rows.append(check_hellaswag_row(row, f"{hub_name} validation row {i}"))
            if limit and len(rows) >= limit:
                break
    if not rows:
        raise UserError(f"no HellaSwag rows in {file or hub_name}")
    return rows


def render_example(row, block_size):
    """(tokens (4, T), scored (4, T), truncated): the 4 sequences ctx + " " + ending, right-
    padded with 0; scored[i, t] is True where token t belongs to ending i (and is predicted)."""
    ctx_ids = tokenizer.encode(row["ctx"])
    sequences, truncated = [], False
    for ending in row["endings"]:
        end_ids = tokenizer.encode(" " + ending)
        ids = ctx_ids + end_ids
        flags = [False] * len(ctx_ids) + [True] * len(end_ids)
        if len(ids) > block_size:  # keep the ending: cut the context from the left
            ids, flags, truncated = ids[-block_size:], flags[-block_size:], True
        flags[0] = False  # the first position has nothing before it to predict it from
        sequences.append((ids, flags))
    width = max(len(ids) for ids, _ in sequences)
    tokens = torch.zeros((N_ENDINGS, width), dtype=torch.long)
    scored = torch.zeros((N_ENDINGS, width), dtype=torch.bool)
    for i, (ids, flags) in enumerate(sequences):
        tokens[i, :len(ids)] = torch.tensor(ids)
        scored[i, :len(ids)] = torch.tensor(flags)
    return tokens, scored, truncated


@torch.no_grad()
def ending_losses(model, tokens, scored, autocast=None):
    """(summed loss, mean loss) per ending, each (4,), from one batched forward."""
    targets = torch.where(scored[:, 1:], tokens[:, 1:], torch.full_like(tokens[:, 1:], -1))
    targets = torch.cat([targets, torch.full_like(targets[:, :1], -1)], dim=1)  # no target after the last
    with autocast if autocast is not None else nullcontext():
        logits, _ = model(tokens, targets)  # targets only make the model return every position's logits
    per_token = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1,
                                reduction="none").view(targets.shape)
    n = (targets >= 0).sum(dim=1)
    total = per_token.sum(dim=1)
    return total, total / n.clamp(min=1)


@torch.no_grad()
def score_hellaswag(model, rows, device="cpu", autocast=None, desc="hellaswag", show_progress=True):
    """Score rows (from load_hellaswag). Returns dict(acc, acc_norm, correct, correct_norm, n,
    truncated, predictions) with predictions [(pred_sum, pred_norm)] per row. show_progress=False
    hides the bar (every process but the first under torchrun)."""
    config = unwrap(model).config
    if config.vocab_size < tokenizer.VOCAB_SIZE:
        raise UserError(f"HellaSwag needs GPT-2's {tokenizer.VOCAB_SIZE:,} token ids; this model's vocab_size "
                        f"is {config.vocab_size:,}")
    block_size = config.block_size
    was_training = model.training
    model.eval()
    correct = correct_norm = truncated = 0
    predictions = []
    for row in tqdm(rows, desc=desc, leave=False, disable=None if show_progress else True):
        tokens, scored, cut = render_example(row, block_size)
        total, mean = ending_losses(model, tokens.to(device), scored.to(device), autocast)
        pred, pred_norm = int(total.argmin()), int(mean.argmin())
        predictions.append((pred, pred_norm))
        correct += pred == row["label"]
        correct_norm += pred_norm == row["label"]
        truncated += cut
    model.train(was_training)
    n = len(rows)
    return dict(acc=correct / n if n else float("nan"), acc_norm=correct_norm / n if n else float("nan"),
                correct=correct, correct_norm=correct_norm, n=n, truncated=truncated, predictions=predictions)


def score_hellaswag_shared(model, rows, device, autocast, dist):
    """(acc, acc_norm, n) of HellaSwag over rows, each process scoring its share (a collective)."""
    r = score_hellaswag(model, rows[dist.rank::dist.world], device, autocast, show_progress=dist.master)
    counts = all_reduce_mean(torch.tensor([r["correct"], r["correct_norm"], r["n"]], dtype=torch.float32,
                                          device=device), dist)  # float32: MPS has no float64
    correct, correct_norm, n = (round(c * dist.world) for c in counts.tolist())
    return correct / n, correct_norm / n, n
