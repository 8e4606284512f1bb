"""Protects wigglegpt/evaluate.py: bits per byte and val loss equal a direct token-by-token computation
(multi-byte tokens, <|endoftext|> and padding ids counting 0 bytes, masked chat targets), the
windows are the same on every call; HellaSwag ending scores from the padded batch of 4 equal
one-ending-at-a-time log-probabilities (endings of different token lengths), acc / acc_norm
follow the summed / mean losses, over-long examples keep their last block_size tokens; rows
load from a local .jsonl or through `datasets` (string labels), malformed rows are refused
with their line number."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wigglegpt import evaluate, tokenizer
from conftest import tiny_config
from model_bio import GPT
from wigglegpt.common import UserError

VOCAB = 50304  # GPT-2's ids plus the padding ids past 50256


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(tiny_config(vocab_size=VOCAB, block_size=64)).eval()


def direct_logprob(model, ids, first_scored):
    """Sum of log p(ids[t] | ids[:t]) for t >= first_scored, from one unpadded forward."""
    x = torch.tensor([ids])
    with torch.no_grad():
        logits, _ = model(x, torch.zeros_like(x))
    logp = F.log_softmax(logits[0].double(), dim=-1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(first_scored, len(ids))), len(ids) - first_scored


def test_byte_table_counts_text_bytes_only():
    table = evaluate.token_byte_table(VOCAB)
    text = "Caf\u00e9 \u65e5\u672c \U0001f600 plain words"
    ids = tokenizer.encode(text)
    assert int(table[ids].sum()) == len(text.encode("utf-8"))  # tokens split characters, bytes add up
    assert int(table[ord("a")]) == 1
    assert int(table[tokenizer.EOT]) == 0
    assert int(table[50257:].sum()) == 0  # padding ids
    word = tokenizer.encode(" hello")[0]
    y = torch.tensor([[word, -1, tokenizer.EOT, 50300]])
    assert int(evaluate.target_bytes(y, table)) == len(b" hello")


def test_val_loss_and_bpb_match_direct_computation(model, tmp_path):
    text = "Caf\u00e9 na\u00efve \u2014 r\u00e9sum\u00e9s of \u65e5\u672c. " * 20
    ids = tokenizer.encode(text) + [tokenizer.EOT, 50280] + tokenizer.encode(text)
    np.array(ids, dtype=np.uint16).tofile(tmp_path / "val.bin")
    got = evaluate.val_loss_bpb(model, str(tmp_path), n_windows=5, batch_size=2, block_size=24, seed=3)
    again = evaluate.val_loss_bpb(model, str(tmp_path), n_windows=5, batch_size=5, block_size=24, seed=3)
    assert again["loss"] == pytest.approx(got["loss"], rel=1e-5)  # same windows, any batch size

    # the same windows, scored one token at a time
    x, y = evaluate.val_windows(str(tmp_path), 5, 24, seed=3)
    nats, n_bytes, tokens = 0.0, 0, 0
    enc = tokenizer.get_tokenizer()
    for row in range(5):
        window = x[row].tolist() + [int(y[row, -1])]
        logprob, count = direct_logprob(model, window, 1)
        nats -= logprob
        tokens += count
        n_bytes += sum(len(enc.decode_single_token_bytes(t)) for t in y[row].tolist() if t < tokenizer.EOT)
    assert got["tokens"] == tokens == 5 * 24
    assert got["bytes"] == n_bytes
    assert got["loss"] == pytest.approx(nats / tokens, rel=1e-4)
    assert got["bpb"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-4)
    assert n_bytes > tokens  # the text's multi-byte tokens made it in


def test_masked_targets_are_left_out(model, tmp_path):
    ids = tokenizer.encode("The user asked. The assistant answered at length. " * 10)
    np.array(ids, dtype=np.uint16).tofile(tmp_path / "val.bin")
    mask = np.zeros(len(ids), dtype=np.uint8)
    mask[::2] = 1
    mask.tofile(tmp_path / "val_mask.bin")
    got = evaluate.val_loss_bpb(model, str(tmp_path), n_windows=3, batch_size=3, block_size=16, seed=1)
    x, y = evaluate.val_windows(str(tmp_path), 3, 16, seed=1)
    assert got["tokens"] == int((y >= 0).sum()) < 3 * 16
    nats = 0.0
    for row in range(3):
        with torch.no_grad():
            logits, _ = model(x[row:row + 1], y[row:row + 1])
        logp = F.log_softmax(logits[0].double(), dim=-1)
        nats -= sum(float(logp[t, y[row, t]]) for t in range(16) if y[row, t] >= 0)
    assert got["loss"] == pytest.approx(nats / got["tokens"], rel=1e-4)


def test_missing_val_bin_is_a_user_error(model, tmp_path):
    with pytest.raises(UserError, match="val.bin is missing"):
        evaluate.val_loss_bpb(model, str(tmp_path))


ROWS = [
    # endings of clearly different token lengths: the padding of the short ones must not count
    dict(ctx="A man is sitting on a roof. He", label=2,
         endings=["starts pulling up roofing on a roof.", "is using wrap to wrap a pair of skis.",
                  "is ripping level tiles off.", "is holding a rubik's cube, turning it slowly in his hands "
                                                 "while the crowd around him cheers and claps loudly."]),
    dict(ctx="A woman is outside with a bucket and a dog. The dog", label=0,
         endings=["runs.", "is running around trying to avoid a bath.", "gets into the bath tub.",
                  "gets the dog wet, then it runs away again."]),
    dict(ctx="Then, the man writes over the snow covering the window of a car, and a woman", label="3",
         endings=["walks.", "drives away.", "puts on gloves.", "wearing winter clothes smiles."]),
]


def test_hellaswag_scores_match_direct_computation(model):
    rows = [evaluate.check_hellaswag_row(r, f"row {i}") for i, r in enumerate(ROWS)]
    lengths = {len(tokenizer.encode(" " + e)) for e in rows[0]["endings"]}
    assert len(lengths) == 4  # padding really happens
    want_sum, want_norm = [], []
    for row in rows:
        tokens, scored, truncated = evaluate.render_example(row, 64)
        assert not truncated
        total, mean = evaluate.ending_losses(model, tokens, scored)
        ctx = tokenizer.encode(row["ctx"])
        direct = [direct_logprob(model, ctx + tokenizer.encode(" " + e), len(ctx)) for e in row["endings"]]
        assert total.tolist() == pytest.approx([-lp for lp, _ in direct], rel=1e-4)
        assert mean.tolist() == pytest.approx([-lp / n for lp, n in direct], rel=1e-4)
        want_sum.append(min(range(4), key=lambda i: -direct[i][0]))
        want_norm.append(min(range(4), key=lambda i: -direct[i][0] / direct[i][1]))
    result = evaluate.score_hellaswag(model, rows)
    assert result["predictions"] == list(zip(want_sum, want_norm))
    assert result["n"] == 3 and result["truncated"] == 0
    assert result["correct"] == sum(p == r["label"] for p, r in zip(want_sum, rows))
    assert result["acc_norm"] == pytest.approx(sum(p == r["label"] for p, r in zip(want_norm, rows)) / 3)
    assert rows[2]["label"] == 3  # the string label was read as a number


def test_long_examples_keep_their_last_block_size_tokens():
    torch.manual_seed(1)
    short = GPT(tiny_config(vocab_size=VOCAB, block_size=16)).eval()
    row = evaluate.check_hellaswag_row(ROWS[0], "row")
    tokens, scored, truncated = evaluate.render_example(row, 16)
    assert truncated and tokens.shape[1] == 16
    total, _ = evaluate.ending_losses(short, tokens, scored)
    ctx = tokenizer.encode(row["ctx"])
    for i, ending in enumerate(row["endings"]):
        end = tokenizer.encode(" " + ending)
        ids = (ctx + end)[-16:]
        first = max(1, len(ids) - len(end))
        assert float(total[i]) == pytest.approx(-direct_logprob(short, ids, first)[0], rel=1e-4)
    assert evaluate.score_hellaswag(short, [row])["truncated"] == 1


def test_hellaswag_rows_from_file_and_through_datasets(tmp_path):
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text("".join(json.dumps({**r, "ind": i, "activity_label": "x"}) + "\n" for i, r in enumerate(ROWS)))
    rows = evaluate.load_hellaswag(str(path))
    assert [r["label"] for r in rows] == [2, 0, 3]
    assert len(evaluate.load_hellaswag(str(path), limit=2)) == 2

    pytest.importorskip("datasets")  # a requirement; the Hub path, read from a local folder
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "validation.jsonl").write_text("".join(json.dumps({**r, "label": str(r["label"])}) + "\n" for r in ROWS))
    rows = evaluate.load_hellaswag("", limit=0, hub_name=str(hub))
    assert [r["label"] for r in rows] == [2, 0, 3]
    assert rows[1]["endings"] == ROWS[1]["endings"]


@pytest.mark.parametrize("bad, message", [
    ('{"ctx": "x", "endings": ["a", "b", "c"], "label": 0}', "line 2: 'endings' must be a list of 4"),
    ('{"ctx": "x", "endings": ["a", "b", "c", "d"], "label": 4}', "line 2: 'label' must be 0..3"),
    ('{"ctx": "", "endings": ["a", "b", "c", "d"], "label": 1}', "line 2: 'ctx' must be a non-empty"),
    ('{"ctx": "x", "endings": ["a", "b"', "line 2: not valid JSON"),
])
def test_malformed_rows_are_refused_with_their_line(tmp_path, bad, message):
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + bad + "\n")
    with pytest.raises(UserError, match=message):
        evaluate.load_hellaswag(str(path))
