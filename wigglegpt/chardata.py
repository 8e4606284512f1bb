"""
nanoGPT's character-level datasets: a folder of train.bin / val.bin (uint16 ids, one per
character) and meta.pkl, the pickle of {'vocab_size': int, 'stoi': {char: id}, 'itos': {id: char}}.

meta.pkl is read with an unpickler that refuses every global, so only dicts, lists, strings and
numbers come out of it and no code can run. CharVocab is the character codec (encode, decode,
stream decoding, UTF-8 byte lengths for bits per byte); a checkpoint keeps it as
ckpt['tokenizer'] = {'kind': 'char', 'itos': [...]}, which weights_only=True loads. Also here:
the character-level Shakespeare that prepare_shakespeare_char.py writes (and train_bio.py builds
on first use for dataset='shakespeare_char').
"""

import gzip
import io
import os
import pickle
import time

import numpy as np

from wigglegpt import dataprep
from wigglegpt.common import CheckpointError, UserError, remove_quietly, write_error
from wigglegpt.tokenizer import VOCAB_SIZE

META_NAME = "meta.pkl"
MAX_META_BYTES = 64 * 2**20  # a character vocabulary's meta.pkl is a few KB
MAX_ID = 2**16 - 1  # the bins are uint16
SPLITS = ("train", "val")
SHAKESPEARE_CHAR_DIR = os.path.join("data", "shakespeare_char")
TRAIN_FRACTION = 0.9  # the first 90 % of the characters train, the rest is val (nanoGPT's shakespeare_char)
PREPARE_HINT = "python prepare_shakespeare_char.py"


# ---------------------------------------------------------------------------------------
# the vocabulary

class CharVocab:
    """Characters and their ids: itos[i] is the character of id i (ids run 0 .. len - 1).
    vocab_size: meta.pkl's, at least len(itos) (larger: padding ids without a character)."""

    def __init__(self, itos, vocab_size=None):
        self.itos = list(itos)
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.vocab_size = len(self.itos) if vocab_size is None else vocab_size

    def __len__(self):
        return len(self.itos)

    def __eq__(self, other):
        return isinstance(other, CharVocab) and self.itos == other.itos

    def encode(self, text, what="the text", source="the vocabulary"):
        """Ids of text's characters; a character outside the vocabulary is one UserError naming it."""
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            c = e.args[0]
            raise UserError(f"{what} holds {c!r} (U+{ord(c):04X}), which is not among the {len(self):,} characters "
                            f"of {source}; leave it out") from None

    def decode(self, ids):
        return "".join(self.itos[i] if 0 <= i < len(self.itos) else "\ufffd" for i in ids)

    def stream_decoder(self):
        return CharDecoder(self)

    def byte_lengths(self):
        """The UTF-8 byte length of each id's character (for bits per byte)."""
        return [len(c.encode("utf-8")) for c in self.itos]

    def as_checkpoint(self):
        """What a checkpoint keeps: plain str and list, loadable with weights_only=True."""
        return {"kind": "char", "itos": list(self.itos)}


class CharDecoder:
    """The char codec's counterpart of tokenizer.StreamDecoder (push one id, get its text; flush):
    every id is a whole character, so nothing is ever held back."""

    def __init__(self, vocab):
        self.vocab = vocab

    def push(self, token_id):
        return self.vocab.decode([token_id])

    def flush(self):
        return ""


def _check_chars(chars, where, error):
    """chars: a list of distinct one-character strings that UTF-8 can write; else error(where ...)."""
    for i, c in enumerate(chars):
        if not isinstance(c, str) or len(c) != 1:
            raise error(f"{where}: id {i} is {c!r}, not one character")
        try:
            c.encode("utf-8")
        except UnicodeEncodeError:
            raise error(f"{where}: id {i} is {c!r}, which UTF-8 cannot write (a lone surrogate)") from None
    if len(set(chars)) != len(chars):
        raise error(f"{where}: a character has more than one id")


# ---------------------------------------------------------------------------------------
# meta.pkl, read safely

class _Refused(pickle.UnpicklingError):
    pass


class _PlainUnpickler(pickle.Unpickler):
    """Loads pickles of plain data only: every global (class, function) is refused, and without
    one no pickle opcode can call anything."""

    def find_class(self, module, name):
        raise _Refused(f"{module}.{name}")


def is_char_folder(folder):
    return os.path.isfile(os.path.join(folder, META_NAME))


def read_meta(path):
    """The CharVocab of a nanoGPT meta.pkl. Anything but plain data, a cut-off file, a missing
    key, stoi and itos that disagree, or a vocab_size below the ids is one UserError naming path."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_META_BYTES + 1)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) > MAX_META_BYTES:
        raise UserError(f"{path} is larger than {MAX_META_BYTES // 2**20} MB: not the meta.pkl of a character "
                        "vocabulary")
    try:
        meta = _PlainUnpickler(io.BytesIO(data)).load()
    except _Refused as e:
        raise UserError(f"{path} asks to load {e}, which is refused (a pickle can run code; meta.pkl holds only "
                        f"dicts, strings and numbers); write it again with {PREPARE_HINT} or nanoGPT's "
                        "prepare.py") from None
    except Exception as e:  # EOFError when cut off, UnpicklingError and others for another kind of file
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a readable meta.pkl: cut off, or another kind of file ({reason})") from None
    return vocab_from_meta(meta, path)


def vocab_from_meta(meta, path):
    """Check meta.pkl's dict (nanoGPT's keys) and turn it into a CharVocab."""
    if not isinstance(meta, dict):
        raise UserError(f"{path} holds a {type(meta).__name__}, not nanoGPT's dict of vocab_size, stoi and itos")
    missing = [key for key in ("vocab_size", "stoi", "itos") if key not in meta]
    if missing:
        raise UserError(f"{path} has no {', '.join(repr(k) for k in missing)}: a character-level meta.pkl needs "
                        "vocab_size, stoi and itos")
    vocab_size, stoi, itos = meta["vocab_size"], meta["stoi"], meta["itos"]
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size <= 0:
        raise UserError(f"{path}: vocab_size must be a positive whole number, got {vocab_size!r}")
    if not isinstance(stoi, dict) or not isinstance(itos, dict):
        raise UserError(f"{path}: stoi and itos must be dicts ({{char: id}} and {{id: char}})")
    if not itos:
        raise UserError(f"{path}: itos is empty: a vocabulary needs at least one character")
    if set(itos) != set(range(len(itos))):
        raise UserError(f"{path}: the ids of itos must run 0 .. {len(itos) - 1} (nanoGPT's layout)")
    chars = [itos[i] for i in range(len(itos))]
    _check_chars(chars, path, UserError)
    for c, i in stoi.items():
        if not isinstance(i, int) or isinstance(i, bool) or itos.get(i) != c:
            there = f"itos[{i}] is {itos.get(i)!r}" if isinstance(i, int) else "that is no id"
            raise UserError(f"{path}: stoi and itos disagree: stoi[{c!r}] is {i!r}, {there}")
    if len(stoi) != len(itos):
        missed = next(c for c in chars if c not in stoi)
        raise UserError(f"{path}: stoi and itos disagree: itos has {missed!r}, stoi does not")
    if vocab_size < len(chars):
        raise UserError(f"{path}: vocab_size {vocab_size} is smaller than its ids (0 .. {len(chars) - 1})")
    if vocab_size > MAX_ID + 1:
        raise UserError(f"{path}: vocab_size {vocab_size:,} is past what uint16 bins hold ({MAX_ID + 1:,} ids)")
    return CharVocab(chars, vocab_size)


def folder_vocab(folder):
    """The CharVocab of folder/meta.pkl, or None when there is none (the bins are GPT-2 tokens)."""
    return read_meta(os.path.join(folder, META_NAME)) if is_char_folder(folder) else None


def meta_bytes(vocab):
    """meta.pkl's bytes, as nanoGPT's prepare.py writes it."""
    meta = {"vocab_size": vocab.vocab_size, "itos": dict(enumerate(vocab.itos)), "stoi": dict(vocab.stoi)}
    return pickle.dumps(meta)


# ---------------------------------------------------------------------------------------
# the vocabulary a checkpoint carries, and where a model meets data

def checkpoint_vocab(ckpt, source):
    """The CharVocab a checkpoint carries (ckpt['tokenizer']), or None: GPT-2 BPE, as for every
    checkpoint without one (and for ckpt None: an export folder or GPT-2)."""
    entry = (ckpt or {}).get("tokenizer")
    if entry is None:
        return None
    if not isinstance(entry, dict) or entry.get("kind") != "char" or not isinstance(entry.get("itos"), list):
        raise CheckpointError(f"{source}: unknown 'tokenizer' entry (this project writes "
                              "{'kind': 'char', 'itos': [...]})")
    _check_chars(entry["itos"], f"{source}'s vocabulary", CheckpointError)
    if not entry["itos"]:
        raise CheckpointError(f"{source}'s vocabulary is empty")
    return CharVocab(entry["itos"])


def vocab_for(model_vocab, data_vocab, model_vocab_size, source, folder):
    """The vocabulary a model that exists (a checkpoint, GPT-2) meets a dataset folder with: the
    checkpoint's own and the folder's meta.pkl must agree. A checkpoint without a vocabulary whose
    vocab_size is below GPT-2's (nanoGPT's character-level runs) takes the folder's, as nanoGPT
    does. Returns a CharVocab, or None for GPT-2 tokens on both sides."""
    if data_vocab is None:
        if model_vocab is not None:
            raise UserError(f"{source} is a character-level model, but {folder} has no {META_NAME}: its bins are "
                            "GPT-2 tokens; use the character-level data it was trained on")
        return None
    if model_vocab is None and model_vocab_size >= VOCAB_SIZE:
        raise UserError(f"{folder} is character-level data ({META_NAME}), but {source} reads GPT-2 tokens: its ids "
                        "would mean other text; use a model trained on this data (--init_from=scratch trains one) "
                        "or GPT-2 token data")
    if model_vocab is not None and model_vocab != data_vocab:
        raise UserError(f"{source} was trained with another character vocabulary ({len(model_vocab):,} characters) "
                        f"than {os.path.join(folder, META_NAME)} ({len(data_vocab):,}); its ids would mean other "
                        "characters")
    if model_vocab_size < data_vocab.vocab_size:
        raise UserError(f"{source} has vocab_size {model_vocab_size:,}, smaller than the vocab_size "
                        f"{data_vocab.vocab_size:,} of {os.path.join(folder, META_NAME)}")
    return data_vocab


# ---------------------------------------------------------------------------------------
# the character-level Shakespeare (prepare_shakespeare_char.py)

def encode_array(text, vocab):
    """uint16 ids of text's characters, every one of them in vocab (numpy: a whole corpus in well
    under a second)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    table = np.zeros(max(map(ord, vocab.itos)) + 1, dtype=np.uint16)
    table[[ord(c) for c in vocab.itos]] = np.arange(len(vocab), dtype=np.uint16)
    return table[codes]


def _write_temp(path, data):
    """Write data to path.partial and fsync; returns that name (renamed to path once all are written)."""
    temp = f"{path}.partial"
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        remove_quietly(temp)
        raise write_error(path, e, "run again") from None
    return temp


def prepare_shakespeare_char(out_dir=SHAKESPEARE_CHAR_DIR, overwrite=False, corpus=dataprep.SHAKESPEARE_GZ):
    """The vendored Shakespeare as nanoGPT's shakespeare_char: meta.pkl of its sorted characters,
    then train.bin (the first 90 % of the characters) and val.bin (the rest), uint16. Offline, in
    about a second. The three files are written under temporary names and renamed at the end,
    meta.pkl first: a kill leaves the folder as it was, or with meta.pkl and no new bins (one
    line at the next run, or rebuilt on first use), never bins read as GPT-2 tokens.
    Returns {'chars', 'train_tokens', 'val_tokens', 'seconds'}."""
    started = time.time()
    names = [META_NAME] + [f"{split}.bin" for split in SPLITS]
    existing = [n for n in names if os.path.exists(os.path.join(out_dir, n))]
    if existing and not overwrite:
        raise UserError(f"{out_dir} already holds {', '.join(existing)}; use --overwrite to write it again")
    if not os.path.exists(corpus):
        raise UserError(f"the vendored Shakespeare is missing: {corpus}")
    with gzip.open(corpus, "rt", encoding="utf-8") as f:
        text = f.read()
    vocab = CharVocab(sorted(set(text)))
    ids = encode_array(text, vocab)
    cut = int(len(ids) * TRAIN_FRACTION)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise write_error(out_dir, e, "run again") from None
    contents = [meta_bytes(vocab), ids[:cut].tobytes(), ids[cut:].tobytes()]
    temps = []
    try:
        for name, data in zip(names, contents):
            temps.append(_write_temp(os.path.join(out_dir, name), data))
        for name, temp in zip(names, temps):
            os.replace(temp, os.path.join(out_dir, name))
    except OSError as e:
        raise write_error(out_dir, e, "run again") from None
    finally:
        for temp in temps:
            remove_quietly(temp)  # after Ctrl-C or a failed write; gone already after the renames
    return dict(chars=len(vocab), train_tokens=cut, val_tokens=len(ids) - cut, seconds=time.time() - started)


def ensure_shakespeare_char(folder):
    """Build the character-level Shakespeare in folder unless meta.pkl, train.bin and val.bin are there."""
    if all(os.path.exists(os.path.join(folder, n)) for n in [META_NAME] + [f"{s}.bin" for s in SPLITS]):
        return
    print(f"preparing the character-level Shakespeare in {folder} (once, a second or two)", flush=True)
    prepare_shakespeare_char(folder, overwrite=True)


def derived_vocab_size(vocab, vocab_size, explicit, folder):
    """{'vocab_size': meta.pkl's} for a new model on character-level data (vocab) unless vocab_size
    was given (in explicit), which must then hold meta.pkl's ids (larger pads on purpose); {} for
    GPT-2 tokens."""
    if vocab is None:
        return {}
    if "vocab_size" not in explicit:
        return {"vocab_size": vocab.vocab_size}
    if vocab_size < vocab.vocab_size:
        raise UserError(f"vocab_size={vocab_size} is smaller than the vocab_size {vocab.vocab_size} of "
                        f"{os.path.join(folder, META_NAME)}; leave vocab_size out to take meta.pkl's")
    return {}
