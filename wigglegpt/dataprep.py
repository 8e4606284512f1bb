"""
The preparation engine behind every prepare script: stream rows from a dataset, turn each
row into tokens (and, for chat, a loss mask), and append them to train.bin / val.bin.

Made for corpora far bigger than memory: rows are read lazily and encoded in batches by worker
processes, a document's split follows from a hash of its tokens, and the files grow as
*.partial.bin beside a progress file, so --resume continues exactly. The files it writes and
its rules: README.md, "Prepare data".
"""

import glob
import hashlib
import itertools
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone

import numpy as np
from tqdm import tqdm

from wigglegpt.common import UserError, remove_quietly, write_error
from wigglegpt.tokenizer import EOT, VOCAB_SIZE, get_tokenizer, InvalidConversation, render_conversation

SPLITS = ("train", "val")
PROGRESS_NAME = "prepare.progress"
FLUSH_BYTES = 4 * 2**20  # buffered token bytes before a write: small enough to stay flat in memory
SHAKESPEARE_GZ = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "data", "shakespeare", "shakespeare_complete.txt.gz")
SHAKESPEARE_CHUNK_LINES = 100  # a demo "document" is ~100 lines, cut at the next blank line
SHAKESPEARE_VAL_FRACTION = 0.08


# ---------------------------------------------------------------------------------------
# sources

def builder_for(path):
    """The datasets builder that reads a local file, picked from its extension."""
    name = path.lower()
    for suffix in (".gz", ".bz2", ".xz", ".zst"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if name.endswith((".jsonl", ".json")):
        return "json"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".txt"):
        return "text"
    raise UserError(f"don't know how to read {path}: use .jsonl, .json, .parquet or .txt (optionally .gz)")


def expand_data_files(data_files):
    """'a.jsonl,dir/*.parquet' to a sorted list of existing files; a pattern matching nothing is an error."""
    files = []
    for pattern in (p.strip() for p in data_files.split(",")):
        if not pattern:
            continue
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise UserError(f"no file matches data_files entry {pattern!r}")
        files.extend(matches)
    if not files:
        raise UserError("data_files is empty")
    return files


def describe_source(dataset=None, config=None, split="train", data_files=None, text_sample_by=None):
    """One line naming where rows come from; resume refuses to continue if it changed."""
    if data_files is not None:
        extra = f", one {text_sample_by} per row" if text_sample_by and ".txt" in data_files.lower() else ""
        return f"local files {data_files}{extra}"
    return f"{dataset}" + (f" ({config})" if config else "") + f", split {split}"


def _one_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def stream_rows(dataset=None, config=None, split="train", data_files=None, text_sample_by="document"):
    """Yield dict rows from a hub dataset or from local files, streamed through datasets.

    Nothing happens until the first row is asked for. For .txt files, text_sample_by picks
    what a row is: "document" (a whole file), "paragraph" (blank-line separated) or "line".
    Read errors become one UserError line.
    """
    import datasets  # heavy: only when rows are really wanted
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # failures reach the user as one UserError line
    datasets.disable_progress_bars()
    if "torch" not in sys.modules:  # rows are all we need: importing torch would cost seconds and ~200 MB
        datasets.config.TORCH_AVAILABLE = False
    if data_files is not None:
        files = expand_data_files(data_files)
        builders = {builder_for(f) for f in files}
        if len(builders) > 1:
            raise UserError(f"data_files mixes kinds of files ({', '.join(sorted(builders))}); give one kind")
        builder = builders.pop()
        if all(os.path.getsize(f) == 0 for f in files):  # datasets cannot infer a schema from nothing
            return
        # json is read in 1 MB chunks (the default 10 MB makes the peak memory grow with the corpus)
        options = {"text": {"sample_by": text_sample_by}, "json": {"chunksize": 2**20}}.get(builder, {})
        what, offline_hint = f"data_files {data_files}", ""
        try:
            stream = datasets.load_dataset(builder, data_files=files, split="train", streaming=True, **options)
        except Exception as e:  # whatever the library raises, the user gets one line
            raise UserError(f"could not read {what}: {_one_line(e)}") from None
    else:
        what, offline_hint = f"dataset {dataset}", " (no internet? use --data_files)"
        try:
            stream = datasets.load_dataset(dataset, config, split=split, streaming=True)
        except Exception as e:
            raise UserError(f"could not load {what}: {_one_line(e)}{offline_hint}") from None
    rows = iter(stream)
    for count in itertools.count():
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as e:  # a broken file or a dropped connection in the middle of the stream
            hint = "; rerun with --resume to continue" if count else offline_hint
            raise UserError(f"reading {what} failed after {count} rows: {_one_line(e)}{hint}") from None
        yield row


# ---------------------------------------------------------------------------------------
# rows to tokens. An encoder maps a list of rows to one result per row: (tokens, mask or None)
# as numpy arrays, or a skip reason (str). Encoders are small picklable objects so that the
# engine can run them in worker processes (tiktoken's threads scale poorly: measured ~1.2-1.4x
# on 2 cores, against ~1.7x for 2 processes).

def with_eot(ids):
    """uint16 array of ids then EOT."""
    tokens = np.empty(len(ids) + 1, dtype=np.uint16)
    tokens[:-1] = ids
    tokens[-1] = EOT
    return tokens


def _require_field(row, field, setting):
    if field not in row:  # datasets give every row the same fields: this is a wrong setting
        raise UserError(f"rows have no field {field!r} (fields: {', '.join(map(str, row))}); set --{setting}")


class TextEncoder:
    """Plain text rows: GPT-2 BPE (special-token text stays text), then EOT after each document."""

    def __init__(self, text_field="text"):
        self.text_field = text_field

    def __call__(self, rows):
        encode, results = get_tokenizer().encode_ordinary, []
        for row in rows:
            _require_field(row, self.text_field, "text_field")
            text = row[self.text_field]
            if not isinstance(text, str):
                results.append("non-string text")
            elif not text.strip():
                results.append("empty text")
            else:
                results.append((with_eot(encode(text)), None))
        return results


class ChatEncoder:
    """Conversation rows: the chat template and its loss mask; malformed rows become skip reasons.
    max_tokens and loss_on as in tokenizer.render_conversation."""

    def __init__(self, messages_field="messages", max_tokens=1024, loss_on="assistant"):
        self.messages_field, self.max_tokens, self.loss_on = messages_field, max_tokens, loss_on

    def __call__(self, rows):
        results = []
        for row in rows:
            _require_field(row, self.messages_field, "messages_field")
            try:
                ids, mask = render_conversation(row[self.messages_field], self.max_tokens, self.loss_on)
            except InvalidConversation as e:
                results.append(e.reason)
                continue
            results.append((np.array(ids, dtype=np.uint16), np.array(mask, dtype=np.uint8)))
        return results


# ---------------------------------------------------------------------------------------
# output files

def goes_to_val(tokens, val_fraction):
    """Deterministic split from the document's own tokens (see the module docstring)."""
    digest = hashlib.blake2b(tokens.tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") < val_fraction * 2**64


def output_names(with_mask):
    names = [f"{split}.bin" for split in SPLITS]
    if with_mask:
        names += [f"{split}_mask.bin" for split in SPLITS]
    return names


def partial_name(name):
    """train.bin -> train.partial.bin (still matched by the .gitignore's data/*/*.bin)."""
    return name[: -len(".bin")] + ".partial.bin"


def write_json_atomically(path, data, advice="run again"):
    """Write temp, fsync, replace: a crash leaves either the old file or the new one, never half.
    A full disk or a missing permission is one UserError naming the file, advice saying what to
    do next; the old file stays and the temporary one is removed."""
    temp = path + ".tmp"
    try:
        with open(temp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except OSError as e:
        if os.path.exists(temp):
            os.remove(temp)
        raise write_error(path, e, advice) from None


class TokenWriter:
    """Buffers documents per split and appends them to the partial files in chunks."""

    def __init__(self, out_dir, with_mask, sizes=None):
        self.out_dir, self.with_mask = out_dir, with_mask
        self.files, self.buffers = {}, {}
        for name in output_names(with_mask):
            path = os.path.join(out_dir, partial_name(name))
            try:
                if sizes is None:
                    f = open(path, "wb")
                else:  # resume: cut back whatever was written after the last recorded chunk
                    f = open(path, "r+b")
                    f.truncate(sizes[name])
                    f.seek(sizes[name])
            except OSError as e:
                self.close()
                raise write_error(path, e, "run again") from None
            self.files[name], self.buffers[name] = f, []
        self.buffered_bytes = 0

    def add(self, split, tokens, mask):
        self.buffers[f"{split}.bin"].append(tokens)
        self.buffered_bytes += tokens.nbytes
        if self.with_mask:
            self.buffers[f"{split}_mask.bin"].append(mask)

    def flush(self, advice="run again"):
        """Append the buffers to disk for good; return the byte size of every file. A failed
        write (disk full) is a UserError; the bytes after the last recorded size are cut
        back on --resume, so a partly written chunk does no harm."""
        for name, f in self.files.items():
            try:
                if self.buffers[name]:
                    f.write(np.concatenate(self.buffers[name]).tobytes())
                    self.buffers[name] = []
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:
                raise write_error(f.name, e, advice) from None
        self.buffered_bytes = 0
        return {name: f.tell() for name, f in self.files.items()}

    def close(self):
        for f in self.files.values():
            try:
                f.close()  # flushes what is still buffered: fails again on a full disk
            except OSError:
                pass  # the error that matters was reported already


def check_output_dir(out_dir, resume, overwrite):
    """Refuse to clobber earlier output unless asked; return the progress record when resuming."""
    if resume and overwrite:
        raise UserError("choose one of --resume and --overwrite")
    progress_path = os.path.join(out_dir, PROGRESS_NAME)
    names = output_names(True)
    partials = [partial_name(n) for n in names]
    if resume:
        if not os.path.exists(progress_path):
            raise UserError(f"nothing to resume in {out_dir} (no {PROGRESS_NAME}); run without --resume")
        try:
            with open(progress_path, encoding="utf-8") as f:
                progress = json.load(f)
            recorded = progress["bytes"].items()
        except (ValueError, KeyError, AttributeError):
            raise UserError(f"{progress_path} is unreadable; start again with --overwrite") from None
        for name, size in recorded:
            path = os.path.join(out_dir, partial_name(name))
            if not os.path.exists(path) or os.path.getsize(path) < size:
                raise UserError(f"{path} is missing or shorter than its progress record; "
                                "start again with --overwrite")
        return progress
    existing = [n for n in names + partials + [PROGRESS_NAME] if os.path.exists(os.path.join(out_dir, n))]
    if existing and not overwrite:
        raise UserError(f"{out_dir} already holds {', '.join(existing)}; use --resume to continue an "
                        "interrupted run or --overwrite to start again")
    for name in partials + [PROGRESS_NAME]:  # finished files stay until the new ones replace them
        if os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    return None


# ---------------------------------------------------------------------------------------
# the engine

def batches_of(rows, size):
    rows = iter(rows)
    while batch := list(itertools.islice(rows, size)):
        yield batch


def _start_worker(parent_pid):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process to handle
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()


def _exit_with_parent(parent_pid):
    """A worker whose main process was killed outright (kill -9) would otherwise wait forever."""
    while os.getppid() == parent_pid:
        time.sleep(1)
    os._exit(1)


@contextmanager
def worker_pool(num_workers):
    """Processes that run the encoder, or None (num_workers=1) to encode in this process.

    On Linux the workers are forked, which is instant and inherits the tokenizer; they are
    started right away, before this process reads rows (datasets starts threads of its own), as
    forking a process with threads running is unsafe. Elsewhere they are spawned.
    """
    if num_workers <= 1:
        yield None
        return
    get_tokenizer()  # built once, here, for the forked workers to inherit
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    try:
        pool = ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context(method),
                                   initializer=_start_worker, initargs=(os.getpid(),))
        pool.submit(int).result()  # starts the workers now
    except (OSError, RuntimeError) as e:  # e.g. no POSIX semaphores in some sandboxes (a RuntimeError subclass)
        print(f"warning: no worker processes ({e}); encoding in this process", file=sys.stderr)
        yield None
        return
    try:
        yield pool
    finally:  # on an error or Ctrl-C, drop the queued batches instead of encoding them
        pool.shutdown(wait=True, cancel_futures=True)


def encoded_batches(rows, encode_rows, batch_size, pool, num_workers, ahead=2):
    """(batch, results) pairs in source order.

    With workers, each batch is cut into parts for the pool, and `ahead` more batches are
    queued while this process handles one, so the workers never wait for it.
    """
    if pool is None:
        for batch in batches_of(rows, batch_size):
            yield batch, encode_rows(batch)
        return
    pending = deque()
    for batch in batches_of(rows, batch_size):
        size = -(-len(batch) // (2 * num_workers))  # a few parts per worker evens out long documents
        parts = [pool.submit(encode_rows, batch[i:i + size]) for i in range(0, len(batch), size)]
        pending.append((batch, parts))
        if len(pending) > ahead:
            done, parts = pending.popleft()
            yield done, [result for part in parts for result in part.result()]
    while pending:
        done, parts = pending.popleft()
        yield done, [result for part in parts for result in part.result()]


def new_stats():
    return {"rows_read": 0, "docs": {s: 0 for s in SPLITS}, "tokens": {s: 0 for s in SPLITS},
            "masked_tokens": {s: 0 for s in SPLITS}, "skipped": {}}


def prepare(rows, encode_rows, out_dir, *, source, recipe, with_mask=False, val_fraction=0.0005,
            num_workers=1, batch_size=256, max_rows=None, resume=False, overwrite=False,
            flush_bytes=FLUSH_BYTES, min_val_tokens=0):
    """Stream rows through encode_rows into out_dir/{train,val}.bin (+ masks); return meta.

    rows: iterable of source rows (read lazily). encode_rows: a picklable callable, list of
    rows -> per row (tokens, mask) or a skip reason (see TextEncoder, ChatEncoder), run in
    num_workers processes. source: one line for meta.json. recipe: a dict of everything that
    decides the tokens; --resume refuses to continue a run made with another recipe.
    min_val_tokens: with val_fraction > 0, val gets at least one document and this many tokens
    (see top_up_val), so that a small corpus still has a usable validation split.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction={val_fraction} should be in [0, 1)")
    if not isinstance(num_workers, int) or num_workers < 1:
        raise UserError(f"num_workers={num_workers!r} should be a positive integer")
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size} should be at least 1")
    if max_rows is not None and (not isinstance(max_rows, int) or max_rows < 1):
        raise UserError(f"the row limit {max_rows!r} should be a positive integer")
    created = not os.path.isdir(out_dir)  # a failed first run takes away the folder it made
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise write_error(out_dir, e, "run again") from None
    recipe = {**recipe, "source": source, "val_fraction": val_fraction, "with_mask": with_mask}
    if min_val_tokens:  # only when set, so that older progress records still resume
        recipe["min_val_tokens"] = min_val_tokens
    progress = check_output_dir(out_dir, resume, overwrite)
    if progress is not None and progress["recipe"] != recipe:
        old = progress["recipe"]
        changed = sorted(k for k in set(recipe) | set(old) if recipe.get(k) != old.get(k))
        raise UserError(f"cannot resume: {', '.join(changed)} changed since the interrupted run; "
                        "use the same settings or --overwrite")
    stats = progress["stats"] if progress else new_stats()
    skipped = Counter(stats["skipped"])
    writer = TokenWriter(out_dir, with_mask, sizes=progress["bytes"] if progress else None)
    progress_path = os.path.join(out_dir, PROGRESS_NAME)

    def save_progress():
        advice = ("continue with --resume after the last saved chunk" if os.path.exists(progress_path)
                  else "run again with --overwrite")
        sizes = writer.flush(advice)
        stats["skipped"] = dict(skipped)
        write_json_atomically(progress_path, {"recipe": recipe, "stats": stats, "bytes": sizes}, advice)

    def add(results):
        for result in results:
            if isinstance(result, str):
                skipped[result] += 1
                continue
            tokens, mask = result
            split = "val" if goes_to_val(tokens, val_fraction) else "train"
            writer.add(split, tokens, mask)
            stats["docs"][split] += 1
            stats["tokens"][split] += len(tokens)
            if with_mask:
                stats["masked_tokens"][split] += int(mask.sum())

    if progress:
        print(f"resuming after {stats['rows_read']} rows (skipping them in the source)", flush=True)
    rows = itertools.islice(rows, stats["rows_read"], max_rows)
    start, tokens_at_start = time.perf_counter(), sum(stats["tokens"].values())
    try:
        # the workers start first, while this process runs no other thread (see worker_pool)
        with worker_pool(num_workers) as pool, tqdm(
                desc=f"preparing {os.path.basename(os.path.normpath(out_dir))}", unit=" docs",
                initial=stats["rows_read"], total=max_rows, disable=None, dynamic_ncols=True) as bar:
            for batch, results in encoded_batches(rows, encode_rows, batch_size, pool, num_workers):
                add(results)
                stats["rows_read"] += len(batch)
                if writer.buffered_bytes >= flush_bytes:
                    save_progress()
                rate = (sum(stats["tokens"].values()) - tokens_at_start) / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"{rate / 1e6:.2f}M tok/s", refresh=False)
                bar.update(len(batch))
            save_progress()
    except BaseException:
        writer.close()
        if not os.path.exists(progress_path):  # failed before its first chunk: nothing worth resuming
            for f in writer.files.values():
                remove_quietly(f.name)
            remove_if_empty(out_dir, created)
        raise
    finally:
        writer.close()
    stats["skipped"] = dict(skipped)
    if val_fraction > 0 and stats["docs"]["train"] > 1:
        top_up_val(out_dir, with_mask, stats, min_val_tokens,
                   lambda sizes: write_json_atomically(progress_path,
                                                       {"recipe": recipe, "stats": stats, "bytes": sizes}))
    if sum(stats["docs"].values()) == 0:  # nothing to keep: leave the folder as it was
        for name in [partial_name(n) for n in output_names(with_mask)] + [PROGRESS_NAME]:
            os.remove(os.path.join(out_dir, name))
        remove_if_empty(out_dir, created)
        reasons = ", ".join(f"{n} {r}" for r, n in skipped.items()) or "no rows at all"
        raise UserError(f"{source} gave no usable text ({stats['rows_read']} rows read: {reasons})")
    return finish(out_dir, with_mask, stats, source, recipe, val_fraction)


def remove_if_empty(out_dir, created):
    """Take away out_dir when this run made it and left nothing in it."""
    if created:
        try:
            os.rmdir(out_dir)  # only an empty folder goes
        except OSError:
            pass


def last_documents(path, want_docs, want_tokens, most_docs):
    """Start offsets (in tokens) of the last documents of a token file, newest first: as many as
    it takes to reach want_docs and want_tokens, but at most most_docs. Reads backwards in
    chunks, so a large file is not read whole."""
    data = np.memmap(path, dtype=np.uint16, mode="r")
    n, starts = len(data), []
    chunk, stop = 1 << 16, n - 1  # the last token is the last document's own EOT
    while stop > 0:
        lo = max(0, stop - chunk)
        for end in np.flatnonzero(data[lo:stop] == EOT)[::-1] + lo:  # each EOT ends the document before
            starts.append(int(end) + 1)
            if len(starts) >= most_docs or (len(starts) >= want_docs and n - starts[-1] >= want_tokens):
                return starts
        stop, chunk = lo, chunk * 2
    return starts


def top_up_val(out_dir, with_mask, stats, min_val_tokens, save_progress):
    """A hash split of a small corpus can leave val empty (0.05% of a few hundred documents),
    and training then stops. Move the last documents of train to val until val holds at least
    one document and min_val_tokens tokens, never more than half of train's documents, and
    say so. Runs on the partial files: val is appended to and the progress record updated
    before train is cut, so an interruption here still resumes to the same result."""
    need_docs = 1 if stats["docs"]["val"] == 0 else 0
    need_tokens = max(0, min_val_tokens - stats["tokens"]["val"])
    if "moved_to_val" in stats or not (need_docs or need_tokens):  # done already (a resumed run)
        return
    train_path = os.path.join(out_dir, partial_name("train.bin"))
    starts = last_documents(train_path, need_docs, need_tokens, stats["docs"]["train"] // 2)
    if not starts:
        return
    cut = starts[-1]
    names = [("train.bin", "val.bin", 2)] + ([("train_mask.bin", "val_mask.bin", 1)] if with_mask else [])
    for src, dst, width in names:
        with open(os.path.join(out_dir, partial_name(src)), "rb") as f:
            f.seek(cut * width)
            moved = f.read()
        path = os.path.join(out_dir, partial_name(dst))
        try:  # a full disk here: --resume cuts val back to its recorded size and moves again
            with open(path, "ab") as f:
                f.write(moved)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise write_error(path, e, "free some space, then run again with --resume") from None
    tokens = os.path.getsize(train_path) // 2 - cut
    stats["moved_to_val"] = len(starts)
    stats["docs"]["train"] -= len(starts)
    stats["docs"]["val"] += len(starts)
    stats["tokens"]["train"] -= tokens
    stats["tokens"]["val"] += tokens
    if with_mask:
        learned = int(np.fromfile(os.path.join(out_dir, partial_name("train_mask.bin")), dtype=np.uint8,
                                  offset=cut).sum())
        stats["masked_tokens"]["train"] -= learned
        stats["masked_tokens"]["val"] += learned
    save_progress({dst: os.path.getsize(os.path.join(out_dir, partial_name(dst))) for _, dst, _ in names}
                  | {src: cut * width for src, _, width in names})
    for src, _, width in names:
        with open(os.path.join(out_dir, partial_name(src)), "r+b") as f:
            f.truncate(cut * width)
    print(f"val split: the hash split gave val {stats['docs']['val'] - len(starts):,} documents; moved the last "
          f"{len(starts):,} documents of train ({tokens:,} tokens) to val (at least 1 document and "
          f"min_val_tokens={min_val_tokens:,})", flush=True)


def finish(out_dir, with_mask, stats, source, recipe, val_fraction):
    """Write meta.json, then rename the partial files to their final names and drop the
    progress file. meta.json first: it is the only step that needs disk space, and when it
    fails the partial files and the progress record are still there for --resume."""
    meta = {
        "vocab_size": VOCAB_SIZE, "tokenizer": "gpt2", "dtype": "uint16", "eot_token": EOT,
        "train_tokens": stats["tokens"]["train"], "val_tokens": stats["tokens"]["val"],
        "train_docs": stats["docs"]["train"], "val_docs": stats["docs"]["val"],
        "rows_read": stats["rows_read"], "skipped": stats["skipped"],
        "source": source, "recipe": recipe, "val_fraction": val_fraction,
        "split_rule": "val when blake2b-64 of the document's uint16 tokens < val_fraction * 2**64; "
                      "moved_to_val: that many last documents of train moved to val (too small a val)",
        "moved_to_val": stats.get("moved_to_val", 0),
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if with_mask:
        meta.update(mask_dtype="uint8", train_masked_tokens=stats["masked_tokens"]["train"],
                    val_masked_tokens=stats["masked_tokens"]["val"])
    write_json_atomically(os.path.join(out_dir, "meta.json"), meta, "continue with --resume")
    for name in output_names(with_mask):
        os.replace(os.path.join(out_dir, partial_name(name)), os.path.join(out_dir, name))
    if not with_mask:  # masks left by an earlier chat run in this folder no longer match
        for name in set(output_names(True)) - set(output_names(False)):
            if os.path.exists(os.path.join(out_dir, name)):
                os.remove(os.path.join(out_dir, name))
    os.remove(os.path.join(out_dir, PROGRESS_NAME))
    print_summary(out_dir, meta)
    return meta


def print_summary(out_dir, meta):
    print(f"wrote {out_dir}: train {meta['train_docs']:,} docs {meta['train_tokens']:,} tokens, "
          f"val {meta['val_docs']:,} docs {meta['val_tokens']:,} tokens", flush=True)
    if meta["skipped"]:
        print("skipped rows: " + ", ".join(f"{n:,} {reason}" for reason, n in sorted(meta["skipped"].items())))
    if meta["val_tokens"] == 0:
        print("warning: val.bin is empty; use a larger --val_fraction or more data", file=sys.stderr)


def source_settings(dataset, dataset_config, split, file_kinds):
    """Where the rows come from: a Hub dataset, or local files read through the same API."""
    return {
        "dataset": (dataset, "Hugging Face dataset name (streamed); ignored with --data_files"),
        "dataset_config": (dataset_config, "dataset configuration name, if the dataset has several"),
        "split": (split, "dataset split to read"),
        "data_files": (None, f"local {file_kinds} files instead: comma-separated paths or globs"),
    }


def common_settings(unit):
    """The settings both prepare scripts share (wigglegpt.settings format), unit naming what a row is."""
    return {
        "num_threads": (os.cpu_count() or 1, "parallel encoders; worker processes, which scale better "
                                             "than tiktoken's threads (1: encode in this process)"),
        "batch_size": (256, f"{unit} per encode batch"),
        "flush_mb": (4.0, "MB of tokens buffered before they are appended to disk and progress is saved"),
        "min_val_tokens": (16384, f"when the hash split leaves val fewer {unit} than 1 or fewer tokens than this, the "
                                  "last ones of train move to val (at most half of train)"),
        "resume": (False, "continue an interrupted run in out_dir"),
        "overwrite": (False, "replace existing output in out_dir"),
    }


def prepare_from_settings(cfg, encoder, recipe, *, with_mask, max_rows, text_sample_by=None):
    """Stream the source the settings name and prepare it with encoder (see prepare)."""
    if cfg.flush_mb <= 0:
        raise UserError(f"flush_mb={cfg.flush_mb} should be positive")
    if cfg.data_files is not None and not isinstance(cfg.data_files, str):
        raise UserError(f"data_files={cfg.data_files!r} should be paths or globs, comma-separated")
    where = dict(dataset=cfg.dataset, config=cfg.dataset_config, split=cfg.split, data_files=cfg.data_files)
    rows = stream_rows(**where, text_sample_by=text_sample_by or "document")
    source = describe_source(**where, text_sample_by=text_sample_by if cfg.data_files else None)
    prepare(rows, encoder, cfg.out_dir, source=source, recipe=recipe, with_mask=with_mask,
            val_fraction=cfg.val_fraction, num_workers=cfg.num_threads, batch_size=cfg.batch_size,
            max_rows=max_rows, resume=cfg.resume, overwrite=cfg.overwrite, flush_bytes=int(cfg.flush_mb * 2**20),
            min_val_tokens=cfg.min_val_tokens)


# ---------------------------------------------------------------------------------------
# the offline demo corpus

def shakespeare_documents(path=SHAKESPEARE_GZ, chunk_lines=SHAKESPEARE_CHUNK_LINES):
    """The vendored Shakespeare as rows of ~chunk_lines lines, each cut at a blank line."""
    import gzip
    if not os.path.exists(path):
        raise UserError(f"the vendored Shakespeare is missing: {path}")
    lines = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            lines.append(line)
            if len(lines) >= chunk_lines and not line.strip():
                yield {"text": "".join(lines)}
                lines = []
    if lines:
        yield {"text": "".join(lines)}


def prepare_shakespeare(out_dir="data/shakespeare", overwrite=False, num_workers=1):
    """Vendored Shakespeare -> out_dir/train.bin, val.bin (GPT-2 BPE), offline, in about a second.

    One process by default: the corpus is small, and callers such as train_bio.py hold torch
    and threads that worker processes would not want to inherit.
    """
    chunk_lines = SHAKESPEARE_CHUNK_LINES
    return prepare(shakespeare_documents(chunk_lines=chunk_lines), TextEncoder("text"), out_dir,
                   source=f"vendored data/shakespeare/shakespeare_complete.txt.gz in ~{chunk_lines}-line chunks",
                   recipe={"kind": "text", "chunk_lines": chunk_lines},
                   val_fraction=SHAKESPEARE_VAL_FRACTION, overwrite=overwrite, num_workers=num_workers)


def ensure_demo_data(data_dir):
    """Build the Shakespeare demo bins in data_dir unless train.bin and val.bin are already there."""
    if all(os.path.exists(os.path.join(data_dir, f"{split}.bin")) for split in SPLITS):
        return
    print(f"preparing the Shakespeare demo data in {data_dir} (once, a few seconds)", flush=True)
    prepare_shakespeare(out_dir=data_dir, overwrite=True)
