"""
Prepare the vendored Shakespeare as nanoGPT's character-level dataset: one id per character.

    python prepare_shakespeare_char.py                                  # data/shakespeare_char
    python prepare_shakespeare_char.py --out_dir=elsewhere/shakespeare_char --overwrite

Writes train.bin and val.bin (uint16 ids: the first 90 % of the characters, then the rest) and
meta.pkl ({'vocab_size', 'itos', 'stoi'} over the sorted set of characters), as nanoGPT's
data/shakespeare_char/prepare.py lays them out, offline and in about a second (wigglegpt/chardata.py).
train_bio.py builds the same folder on first use of dataset='shakespeare_char'.
"""

from wigglegpt import chardata
from wigglegpt.common import run_main
from wigglegpt.settings import load_settings

SETTINGS = {
    "out_dir": (chardata.SHAKESPEARE_CHAR_DIR, "folder for train.bin, val.bin and meta.pkl"),
    "overwrite": (False, "replace the files already in out_dir"),
}


def main(argv=None):
    cfg = load_settings(SETTINGS, argv, description=__doc__.strip().splitlines()[0], allow_config_file=False)
    done = chardata.prepare_shakespeare_char(cfg.out_dir, cfg.overwrite)
    print(f"wrote {cfg.out_dir}: {done['chars']:,} characters in meta.pkl, train {done['train_tokens']:,} tokens, "
          f"val {done['val_tokens']:,} tokens, in {done['seconds']:.1f} s", flush=True)


if __name__ == "__main__":
    run_main(main)
