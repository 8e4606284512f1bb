"""
Token windows from the prepared uint16 bins, for training and evaluation alike: `split`.bin of
GPT-2 token ids, plus `split`_mask.bin (uint8, 1 = an assistant token) for chat data, whose
targets outside the assistant's replies become -1 (ignored by the loss). A folder with nanoGPT's
meta.pkl holds character ids instead (wigglegpt/chardata.py).
"""

import os

import numpy as np
import torch

from wigglegpt import chardata, dataprep
from wigglegpt.common import UserError
from wigglegpt.distributed import barrier

SPLITS = ("train", "val")
PREPARE = "prepare_openwebtext_streaming.py, prepare_smoltalk.py or prepare_shakespeare_char.py"
# the offline demo corpora, built on first use in seconds: Shakespeare as GPT-2 tokens and as characters
DEMOS = {"shakespeare": dataprep.ensure_demo_data, "shakespeare_char": chardata.ensure_shakespeare_char}


class TokenSplit:
    """One split: `name`.bin of uint16 token ids, plus `name`_mask.bin (uint8) when masked."""

    def __init__(self, folder, name, masked):
        self.path = os.path.join(folder, f"{name}.bin")
        self.mask_path = os.path.join(folder, f"{name}_mask.bin") if masked else None
        try:
            with open(self.path, "rb"):  # readable at all: np.memmap would fail later, mid-run
                pass
            if masked:
                with open(self.mask_path, "rb"):
                    pass
        except OSError as e:
            raise UserError(f"cannot read {e.filename}: {e.strerror}; check its permissions") from None
        size = os.path.getsize(self.path)
        if size % 2:
            raise UserError(f"{self.path} has an odd number of bytes ({size:,}) for uint16 tokens: it looks truncated "
                            "(a cut-off copy?); copy it again whole or prepare the data again")
        self.n_tokens = size // 2
        if masked and os.path.getsize(self.mask_path) != self.n_tokens:
            raise UserError(f"{self.mask_path} has {os.path.getsize(self.mask_path):,} entries but "
                            f"{self.path} has {self.n_tokens:,} tokens: one of them looks truncated; prepare the "
                            "data again")

    def windows(self, starts, block_size):
        """(x, y) int64 CPU tensors of shape (len(starts), block_size): x the tokens from each start,
        y the same shifted by one. With a mask, a target's own entry (mask[i + 1] for data[i + 1])
        decides whether it counts; those that do not become -1."""
        # opened per call: a long-lived np.memmap keeps every page it touched (RSS only grows)
        data = np.memmap(self.path, dtype=np.uint16, mode="r")
        x = np.stack([data[i:i + block_size] for i in starts]).astype(np.int64)
        y = np.stack([data[i + 1:i + 1 + block_size] for i in starts]).astype(np.int64)
        if self.mask_path is not None:
            mask = np.memmap(self.mask_path, dtype=np.uint8, mode="r")
            y[np.stack([mask[i + 1:i + 1 + block_size] for i in starts]) == 0] = -1
        return torch.from_numpy(x), torch.from_numpy(y)

    def random_starts(self, n, block_size, generator):
        return torch.randint(self.n_tokens - block_size, (n,), generator=generator).tolist()

    def sample(self, batch_size, block_size, generator):
        """windows() at random starts; with a mask, each window holds at least one target that
        counts (a window with nothing to learn would give a 0/0 loss)."""
        starts = self.random_starts(batch_size, block_size, generator)
        if self.mask_path is not None:
            mask = np.memmap(self.mask_path, dtype=np.uint8, mode="r")
            for row, i in enumerate(starts):
                tries = 0
                while not mask[i + 1:i + 1 + block_size].any():
                    tries += 1
                    if tries > 1000:
                        raise UserError(f"{self.mask_path}: 1,000 random windows of {block_size} tokens held no "
                                        "assistant token; check the mask or use a larger block_size")
                    i = int(torch.randint(self.n_tokens - block_size, (1,), generator=generator))
                starts[row] = i
        return self.windows(starts, block_size)


def open_split(folder, split="val"):
    """One split of a dataset folder, masked when its split_mask.bin exists (evaluation)."""
    path = os.path.join(folder, f"{split}.bin")
    if not os.path.isfile(path):
        raise UserError(f"{path} is missing; prepare the data with {PREPARE} (or set --data_root/--dataset)")
    return TokenSplit(folder, split, os.path.isfile(os.path.join(folder, f"{split}_mask.bin")))


class Data:
    """Both splits of a dataset folder and the batch shapes drawn from them (training). vocab:
    the folder's character vocabulary (chardata.CharVocab of its meta.pkl), None for GPT-2 tokens."""

    def __init__(self, folder, batch_size, block_size, vocab_size, device, vocab=None):
        self.folder, self.vocab = folder, vocab
        masks = [os.path.exists(os.path.join(folder, f"{split}_mask.bin")) for split in SPLITS]
        if any(masks) and not all(masks):
            raise UserError(f"{folder} has only one of train_mask.bin / val_mask.bin; prepare the data again")
        self.masked = all(masks)
        self.splits = {split: TokenSplit(folder, split, self.masked) for split in SPLITS}
        self.batch_size, self.block_size, self.vocab_size, self.device = batch_size, block_size, vocab_size, device
        for split, part in self.splits.items():
            need = batch_size * block_size + 1
            if part.n_tokens < need:
                raise UserError(f"{part.path} has {part.n_tokens:,} tokens, fewer than one batch needs "
                                f"(batch_size {batch_size} x block_size {block_size} + 1 = {need:,}); "
                                "lower batch_size/block_size or use more data")
        # the ids a batch may hold: the characters of meta.pkl, or the model's vocabulary
        self.id_limit = len(vocab) if vocab is not None else vocab_size
        if vocab is not None:  # a character corpus is small: every id is checked now (milliseconds)
            for part in self.splits.values():
                top = int(np.memmap(part.path, dtype=np.uint16, mode="r").max())
                if top >= self.id_limit:
                    raise self.id_error(part.path, top)

    def id_error(self, path, top):
        if self.vocab is not None:
            return UserError(f"{path} holds token id {top:,} but {os.path.join(self.folder, chardata.META_NAME)} has "
                             f"{len(self.vocab):,} characters (ids 0 .. {len(self.vocab) - 1:,}): its vocabulary does "
                             "not cover the bins; prepare the data again")
        return UserError(f"{path} holds token id {top:,} but the model's vocab_size is {self.vocab_size:,}; use a "
                         "larger vocab_size")

    def check_vocab(self):
        """One batch of each split drawn with a generator of its own (the runs' streams untouched):
        token ids past vocab_size are found before anything is written."""
        for split in SPLITS:
            self.batch(split, torch.Generator().manual_seed(0))

    def batch(self, split, generator):
        x, y = self.splits[split].sample(self.batch_size, self.block_size, generator)
        top = max(int(x.max()), int(y.max()))
        if top >= self.id_limit:
            raise self.id_error(self.splits[split].path, top)
        if self.device.startswith("cuda"):
            # pinned memory lets the copy run asynchronously while the GPU works
            return (x.pin_memory().to(self.device, non_blocking=True),
                    y.pin_memory().to(self.device, non_blocking=True))
        return x.to(self.device), y.to(self.device)


def ensure_demo(folder, dataset):
    """Build the offline demo corpus dataset names in folder on first use (seconds); others: nothing."""
    if dataset in DEMOS:
        DEMOS[dataset](folder)


def dataset_folder(data_root, dataset, dist):
    """data_root/dataset, holding train.bin and val.bin; a demo corpus is built on first use (by
    rank 0, the others waiting)."""
    folder = os.path.join(data_root, dataset)
    if dist.master:
        ensure_demo(folder, dataset)
    barrier(dist)  # the others wait until rank 0 has the files
    if not os.path.isdir(folder):
        raise UserError(f"data folder not found: {folder} (prepare it with {PREPARE}, or set --data_root / --dataset)")
    for split in SPLITS:
        if not os.path.isfile(os.path.join(folder, f"{split}.bin")):
            raise UserError(f"{os.path.join(folder, split + '.bin')} is missing; prepare the data with {PREPARE}")
    return folder


def sampler_seed(seed, rank):
    return seed + 100_003 * (rank + 1)  # its own stream per process, apart from the model's


def eval_seed(seed, rank, split):
    # every eval draws the same batches: curves (and bio vs GELU runs) compare on equal terms
    return seed + 200_003 * (rank + 1) + SPLITS.index(split)
