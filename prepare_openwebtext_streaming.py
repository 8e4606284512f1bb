"""
Prepare a plain-text corpus for pretraining: GPT-2 BPE tokens in train.bin / val.bin.

    python prepare_openwebtext_streaming.py                       # OpenWebText, streamed from the Hub
    python prepare_openwebtext_streaming.py --data_files=corpus.jsonl --out_dir=data/mycorpus
    python prepare_openwebtext_streaming.py --resume              # continue an interrupted run

Rows are streamed (the corpus never sits in memory or in the datasets cache) and encoded in
batches by worker processes (wigglegpt.dataprep); the output and resume rules: README.md, "Prepare data".
"""

from wigglegpt import dataprep
from wigglegpt.common import UserError, run_main
from wigglegpt.settings import load_settings

SETTINGS = {
    **dataprep.source_settings("Skylion007/openwebtext", None, "train", ".jsonl/.json/.parquet/.txt(.gz)"),
    "text_field": ("text", "row field holding the document text"),
    "text_sample_by": ("document", "for .txt files, one document per: document (whole file), paragraph, line"),
    "out_dir": ("data/openwebtext", "folder for train.bin, val.bin and meta.json"),
    "val_fraction": (0.0005, "share of documents that go to val.bin (chosen by a hash of each document)"),
    "max_docs": (None, "stop after this many source rows (default: all)"),
    **dataprep.common_settings("documents"),
}


def main(argv=None):
    cfg = load_settings(SETTINGS, argv, description=__doc__.strip().splitlines()[0], allow_config_file=False)
    if cfg.text_sample_by not in ("document", "paragraph", "line"):
        raise UserError(f"text_sample_by={cfg.text_sample_by!r} should be document, paragraph or line")
    dataprep.prepare_from_settings(cfg, dataprep.TextEncoder(cfg.text_field),
                                       {"kind": "text", "text_field": cfg.text_field}, with_mask=False,
                                       max_rows=cfg.max_docs, text_sample_by=cfg.text_sample_by)


if __name__ == "__main__":
    run_main(main)
