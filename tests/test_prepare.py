"""
Protects the data preparation (wigglegpt.dataprep and the two prepare scripts, run the way a user
runs them): token files that decode back to exactly the source documents with EOT between
them, a deterministic train/val split with no overlap, meta.json counts, resume after an
interruption ending byte-identical to an uninterrupted run, refusing to clobber output,
one-line errors for bad input, chat masks aligned with their tokens, malformed chat rows
counted by reason, and the offline Shakespeare demo data.
"""

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from wigglegpt import dataprep  # noqa: E402
import prepare_openwebtext_streaming  # noqa: E402
from wigglegpt.common import UserError  # noqa: E402
from wigglegpt.tokenizer import ASSISTANT_END, EOT, decode, render_conversation  # noqa: E402

PHRASES = ["the quick brown fox", "naïve café 😀", "日本語"]
DOCS = [f"Document {i}: " + " ".join(PHRASES[i % 3] for _ in range(i % 9 + 1)) for i in range(80)]
DOCS[7] = "A document that mentions <|endoftext|> as plain text."
EMPTY_ROWS = [{"text": ""}, {"text": "  \n\t"}, {"text": None}]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def text_corpus(tmp_path):
    rows = [{"text": d} for d in DOCS[:40]] + EMPTY_ROWS + [{"text": d} for d in DOCS[40:]]
    return write_jsonl(tmp_path / "corpus.jsonl", rows)


def run_script(script, *args, cwd):
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(result, *phrases):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in lines[0]


def read_docs(path):
    """Split a token file at EOT into per-document token lists (EOT dropped)."""
    tokens = np.fromfile(path, dtype=np.uint16).tolist()
    assert not tokens or tokens[-1] == EOT
    docs, start = [], 0
    for i, t in enumerate(tokens):
        if t == EOT:
            docs.append(tokens[start:i])
            start = i + 1
    return docs


def read_bins(out_dir):
    return {name: open(os.path.join(out_dir, name), "rb").read()
            for name in sorted(os.listdir(out_dir)) if name.endswith(".bin")}


def test_openwebtext_jsonl_decodes_back_with_disjoint_complete_split(tmp_path):
    corpus = text_corpus(tmp_path)
    result = run_script("prepare_openwebtext_streaming.py", f"--data_files={corpus}", "--out_dir=out",
                        "--val_fraction=0.2", "--batch_size=16", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["meta.json", "train.bin", "val.bin"]
    train = [decode(d) for d in read_docs(out / "train.bin")]
    val = [decode(d) for d in read_docs(out / "val.bin")]
    assert train and val and not set(train) & set(val)
    assert sorted(train + val) == sorted(DOCS)
    assert train == [d for d in DOCS if d in set(train)]  # source order kept within a split
    meta = json.loads((out / "meta.json").read_text())
    assert meta["vocab_size"] == 50257 and meta["tokenizer"] == "gpt2" and meta["dtype"] == "uint16"
    assert (meta["train_docs"], meta["val_docs"]) == (len(train), len(val))
    assert meta["train_tokens"] * 2 == os.path.getsize(out / "train.bin")
    assert meta["val_tokens"] * 2 == os.path.getsize(out / "val.bin")
    assert meta["skipped"] == {"empty text": 2, "non-string text": 1}
    assert meta["rows_read"] == len(DOCS) + len(EMPTY_ROWS)
    assert "corpus.jsonl" in meta["source"] and meta["created_utc"].endswith("Z")
    assert "skipped rows: 2 empty text, 1 non-string text" in result.stdout
    # the same run again, with other batch sizes, splits the same way
    again = run_script("prepare_openwebtext_streaming.py", f"--data_files={corpus}", "--out_dir=out2",
                       "--val_fraction=0.2", "--batch_size=3", "--num_threads=1", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert read_bins(out) == read_bins(tmp_path / "out2")


def test_txt_gz_files_are_one_document_each(tmp_path):
    texts = ["First file.\n\nIt has two paragraphs — and ünïcödé.\n", "Second file, one line\n"]
    for i, text in enumerate(texts):
        with gzip.open(tmp_path / f"part{i}.txt.gz", "wt", encoding="utf-8") as f:
            f.write(text)
    result = run_script("prepare_openwebtext_streaming.py", "--data_files=part*.txt.gz", "--out_dir=out",
                        "--val_fraction=0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [decode(d) for d in read_docs(tmp_path / "out" / "train.bin")] == texts
    assert os.path.getsize(tmp_path / "out" / "val.bin") == 0
    assert "val.bin is empty" in result.stderr  # a warning, not an error


def test_resume_after_interruption_is_byte_identical(tmp_path, monkeypatch):
    corpus = text_corpus(tmp_path)
    common = [f"--data_files={corpus}", "--val_fraction=0.2"]
    reference = run_script("prepare_openwebtext_streaming.py", *common, "--out_dir=ref", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr

    # first run: small chunks, then a Ctrl-C after 50 source rows
    real_stream_rows = dataprep.stream_rows

    def interrupted_stream(**kwargs):
        for i, row in enumerate(real_stream_rows(**kwargs)):
            if i == 50:
                raise KeyboardInterrupt
            yield row

    monkeypatch.setattr(dataprep, "stream_rows", interrupted_stream)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare_openwebtext_streaming.main(common + [f"--out_dir={out}", "--batch_size=4", "--flush_mb=0.0005"])
    progress = json.loads((out / dataprep.PROGRESS_NAME).read_text())
    assert 0 < progress["stats"]["rows_read"] < 50
    assert not (out / "train.bin").exists()
    # a crash can leave bytes written after the last progress record: resume must cut them off
    for name in ("train.partial.bin", "val.partial.bin"):
        with open(out / name, "ab") as f:
            f.write(b"\x01\x02" * 50_000)  # longer than what is left to write
    with pytest.raises(UserError, match="val_fraction changed"):
        prepare_openwebtext_streaming.main([f"--data_files={corpus}", "--val_fraction=0.3", f"--out_dir={out}",
                                            "--resume"])

    resumed = run_script("prepare_openwebtext_streaming.py", *common, "--out_dir=out", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after" in resumed.stdout
    assert read_bins(out) == read_bins(tmp_path / "ref")
    meta, ref_meta = (json.loads((d / "meta.json").read_text()) for d in (out, tmp_path / "ref"))
    for key in ("train_tokens", "val_tokens", "train_docs", "val_docs", "skipped", "rows_read"):
        assert meta[key] == ref_meta[key]
    assert sorted(os.listdir(out)) == ["meta.json", "train.bin", "val.bin"]


def test_resume_after_sigkill_is_byte_identical(tmp_path):
    rows = [{"text": f"{i}: {DOCS[i % len(DOCS)]}"} for i in range(3000)]
    corpus = write_jsonl(tmp_path / "big.jsonl", rows)
    common = [f"--data_files={corpus}", "--val_fraction=0.1"]
    reference = run_script("prepare_openwebtext_streaming.py", *common, "--out_dir=ref", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr

    env = {**os.environ, "PYTHONPATH": REPO}
    command = [sys.executable, os.path.join(REPO, "prepare_openwebtext_streaming.py"), *common, "--out_dir=out",
               "--batch_size=4", "--flush_mb=0.0001", "--num_threads=2"]
    victim = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress_path = tmp_path / "out" / dataprep.PROGRESS_NAME

    def rows_done():  # the progress file is replaced atomically, so any read sees a whole one
        return json.loads(progress_path.read_text())["stats"]["rows_read"] if progress_path.exists() else 0

    deadline = time.monotonic() + 120
    while rows_done() < 200 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    victim.kill()
    victim.communicate(timeout=30)  # returns only once the orphaned workers have exited too
    assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert 200 <= rows_done() < len(rows) and not (tmp_path / "out" / "train.bin").exists()

    resumed = run_script("prepare_openwebtext_streaming.py", *common, "--out_dir=out", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert read_bins(tmp_path / "out") == read_bins(tmp_path / "ref")


def test_refuses_to_overwrite_unless_asked(tmp_path):
    corpus = text_corpus(tmp_path)
    first = run_script("prepare_openwebtext_streaming.py", f"--data_files={corpus}", "--out_dir=out", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = read_bins(tmp_path / "out")
    refused = run_script("prepare_openwebtext_streaming.py", f"--data_files={corpus}", "--out_dir=out", cwd=tmp_path)
    assert_one_line_error(refused, "--overwrite", "--resume")
    assert read_bins(tmp_path / "out") == before
    nothing = run_script("prepare_openwebtext_streaming.py", f"--data_files={corpus}", "--out_dir=out", "--resume",
                         cwd=tmp_path)
    assert_one_line_error(nothing, "nothing to resume")
    again = run_script("prepare_openwebtext_streaming.py", f"--data_files={corpus}", "--out_dir=out",
                       "--val_fraction=0.5", "--overwrite", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["val_fraction"] == 0.5 and meta["val_docs"] > 0


def test_bad_input_is_one_clear_line(tmp_path):
    empty_only = write_jsonl(tmp_path / "empty.jsonl", EMPTY_ROWS)
    no_text = run_script("prepare_openwebtext_streaming.py", f"--data_files={empty_only}", "--out_dir=out",
                         cwd=tmp_path)
    assert_one_line_error(no_text, "no usable text", "2 empty text")
    assert not (tmp_path / "out").exists()  # nothing left behind that would need --overwrite
    missing = run_script("prepare_openwebtext_streaming.py", "--data_files=missing.jsonl", "--out_dir=bad",
                         cwd=tmp_path)
    assert_one_line_error(missing, "no file matches", "'missing.jsonl'")
    # the other checks raise the same UserError that run_main prints as one line
    (tmp_path / "notes.csv").write_text("a,b\n")
    one_doc = write_jsonl(tmp_path / "one.jsonl", [{"text": "x"}])
    for args, phrase in [
        ([f"--data_files={tmp_path / 'notes.csv'}"], "don't know how to read"),
        ([f"--data_files={one_doc}", "--text_field=body"], "no field 'body'"),
        (["--val_fraction=1.5"], "val_fraction"),
        (["--max_docs=lots"], "positive integer"),
        (["--text_sample_by=word"], "text_sample_by"),
        (["--resume", "--overwrite"], "choose one"),
        (["--bogus=1"], "unknown setting"),
    ]:
        with pytest.raises(UserError, match=phrase):
            prepare_openwebtext_streaming.main(args + [f"--out_dir={tmp_path / 'bad'}"])


def test_smoltalk_masks_align_and_bad_rows_are_counted(tmp_path):
    good = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
         {"role": "assistant", "content": "Hello."}],
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
         {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6, naturally 😀"}],
    ] + [[{"role": "system", "content": ""}, {"role": "user", "content": f"Question {i}?"},
          {"role": "assistant", "content": f"Answer number {i}."}] for i in range(30)]
    bad = [
        {"messages": None},
        {"messages": []},
        {"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": "anyone?"}]},
        {"messages": [{"role": "user", "content": "no reply either"}]},
    ]
    rows = [{"messages": m} for m in good[:2]] + bad + [{"messages": m} for m in good[2:]]
    corpus = write_jsonl(tmp_path / "chats.jsonl", rows)
    result = run_script("prepare_smoltalk.py", f"--data_files={corpus}", "--out_dir=chat", "--val_fraction=0.2",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    reasons = {"no messages": 2, "unknown role": 1, "non-string content": 1, "no assistant turn": 2}
    out = tmp_path / "chat"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["skipped"] == reasons and meta["mask_dtype"] == "uint8"
    assert "skipped rows: 2 no assistant turn, 2 no messages, 1 non-string content, 1 unknown role" in result.stdout

    expected = [render_conversation(m) for m in good]
    found, found_replies = [], []
    for split in ("train", "val"):
        ids = np.fromfile(out / f"{split}.bin", dtype=np.uint16)
        mask = np.fromfile(out / f"{split}_mask.bin", dtype=np.uint8)
        assert len(ids) == len(mask) == meta[f"{split}_tokens"]
        assert int(mask.sum()) == meta[f"{split}_masked_tokens"]
        ends = np.flatnonzero(ids == EOT).tolist()
        for start, end in zip([0] + [e + 1 for e in ends[:-1]], ends):
            doc_ids, doc_mask = ids[start:end + 1].tolist(), mask[start:end + 1].tolist()
            found.append((doc_ids, doc_mask))
            runs = np.flatnonzero(np.diff([0] + doc_mask + [0])).reshape(-1, 2)
            found_replies.append([decode(doc_ids[a:b]) for a, b in runs])
    assert meta["val_docs"] > 0 and sorted(found) == sorted(expected)
    # independent of the template code: the masked runs are exactly the replies plus closing tags
    assert sorted(found_replies) == sorted([m["content"] + "\n" + ASSISTANT_END for m in conversation
                                            if m["role"] == "assistant"] for conversation in good)


def test_ensure_demo_data_builds_shakespeare_once(tmp_path, capsys):
    data_dir = tmp_path / "shakespeare"
    dataprep.ensure_demo_data(str(data_dir))
    train = np.fromfile(data_dir / "train.bin", dtype=np.uint16)
    val = np.fromfile(data_dir / "val.bin", dtype=np.uint16)
    total = len(train) + len(val)
    assert 1_200_000 < total < 2_000_000
    assert 0.05 < len(val) / total < 0.10
    assert decode(train[:12].tolist()).startswith("ALL'S WELL THAT ENDS WELL")
    assert train[-1] == val[-1] == EOT
    built = os.path.getmtime(data_dir / "train.bin")
    capsys.readouterr()
    dataprep.ensure_demo_data(str(data_dir))  # already there: silent, untouched
    assert capsys.readouterr().out == "" and os.path.getmtime(data_dir / "train.bin") == built
    dataprep.prepare_shakespeare(str(tmp_path / "again"))
    assert read_bins(data_dir) == read_bins(tmp_path / "again")  # deterministic


def test_a_small_corpus_always_gets_a_usable_val_split(tmp_path):
    # a few hundred documents: the default 0.05% hash split puts none of them in val
    docs = [f"Small corpus document {i}. " + PHRASES[i % 3] * (i % 5 + 3) for i in range(300)]
    corpus = write_jsonl(tmp_path / "small.jsonl", [{"text": d} for d in docs])
    result = run_script("prepare_openwebtext_streaming.py", f"--data_files={corpus}", "--out_dir=small",
                        "--min_val_tokens=1500", "--num_threads=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "moved the last" in result.stdout and "val.bin is empty" not in result.stderr
    out = tmp_path / "small"
    meta = json.loads((out / "meta.json").read_text())
    train, val = read_docs(out / "train.bin"), read_docs(out / "val.bin")
    assert meta["val_docs"] == len(val) == meta["moved_to_val"] > 1 and meta["val_tokens"] >= 1500
    assert meta["val_tokens"] * 2 == os.path.getsize(out / "val.bin")
    assert meta["train_tokens"] * 2 == os.path.getsize(out / "train.bin")
    assert [decode(d) for d in train + val] == docs  # the last documents of train moved, nothing lost
    assert not os.path.exists(out / dataprep.PROGRESS_NAME)
    import train_bio  # and training runs on it (it stops when val is too small for a batch)
    summary = train_bio.train(dict(data_root=str(tmp_path), dataset="small", out_dir=str(tmp_path / "run"),
                                   n_layer=1, n_head=2, n_embd=16, block_size=32, batch_size=4,
                                   gradient_accumulation_steps=1, max_iters=2, eval_interval=2, eval_iters=1,
                                   warmup_iters=0, lr_decay_iters=2, device="cpu", compile=False))
    assert summary["reason"] == "max_iters" and np.isfinite(summary["last_val_loss"])


def chat_rows(n):
    return [{"messages": [{"role": "system", "content": "Be brief." if i % 3 else ""},
                          {"role": "user", "content": f"Question {i}: {DOCS[i % len(DOCS)]}?"},
                          {"role": "assistant", "content": f"Answer {i}. {DOCS[(i * 7) % len(DOCS)]}"}]}
            for i in range(n)]


@pytest.mark.parametrize("script, rows", [
    ("prepare_openwebtext_streaming.py", [{"text": f"{i}: {DOCS[i % len(DOCS)]}"} for i in range(3000)]),
    ("prepare_smoltalk.py", chat_rows(1500)),
], ids=["text", "chat"])
def test_killed_again_and_again_then_resumed_is_byte_identical(tmp_path, script, rows):
    """kill -9 at random points of several runs in a row (each resuming the last): the final bins
    (and masks) are byte for byte those of one uninterrupted run."""
    corpus = write_jsonl(tmp_path / "corpus.jsonl", rows)
    common = [f"--data_files={corpus}", "--val_fraction=0.1", "--batch_size=4", "--flush_mb=0.0001"]
    reference = run_script(script, *common, "--out_dir=ref", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    progress_path = tmp_path / "out" / dataprep.PROGRESS_NAME

    def rows_done():  # the progress file is replaced atomically, so any read sees a whole one
        return json.loads(progress_path.read_text())["stats"]["rows_read"] if progress_path.exists() else 0

    rng = random.Random(f"{script}-kills")
    env = {**os.environ, "PYTHONPATH": REPO}
    kills, finished = 0, False
    for attempt in range(4):
        done = rows_done()
        # a random point ahead: from just after the start to most of what is left
        target = done + rng.randint(1, max(2, (len(rows) - done) // 2))
        mode = ["--resume"] if progress_path.exists() else ["--overwrite"]
        victim = subprocess.Popen([sys.executable, os.path.join(REPO, script), *common, "--out_dir=out",
                                   "--num_threads=2", *mode], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while rows_done() < target and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.0005, 0.005))
        victim.kill()
        _, err = victim.communicate(timeout=30)  # returns only once the orphaned workers have exited too
        if victim.returncode == 0:
            finished = True  # it finished first: nothing left to kill
            break
        assert victim.returncode == -signal.SIGKILL, err.decode(errors="replace")[-2000:]
        kills += 1
    assert kills >= 2, "the runs ended before they could be killed"
    if not finished:
        resumed = run_script(script, *common, "--out_dir=out", "--resume" if progress_path.exists() else "--overwrite",
                             cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
    assert read_bins(tmp_path / "out") == read_bins(tmp_path / "ref")
    assert sorted(os.listdir(tmp_path / "out")) == sorted(os.listdir(tmp_path / "ref"))
