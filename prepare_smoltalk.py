"""
Prepare a chat corpus for fine-tuning: chat-template tokens plus a loss mask per token.

Writes train.bin / val.bin and train_mask.bin / val_mask.bin, the mask marking the assistant
tokens the loss is taken on.

    python prepare_smoltalk.py                                   # SmolTalk2, streamed from the Hub
    python prepare_smoltalk.py --data_files=chats.jsonl --out_dir=data/mychats

Each row holds "messages": a list of {"role": system|user|assistant, "content": str}. Malformed
rows are skipped and counted by reason (printed at the end and kept in meta.json). The
template is in tokenizer_bio.py; the output format and resume rules in dataprep_bio.py.
"""

import dataprep_bio
from settings_bio import load_settings, run_main

SETTINGS = {
    **dataprep_bio.source_settings("HuggingFaceTB/smoltalk2", "SFT", "smoltalk_smollm3_smol_magpie_ultra_no_think",
                                   ".jsonl/.json/.parquet"),
    "messages_field": ("messages", "row field holding the list of {role, content} messages"),
    "out_dir": ("data/smoltalk", "folder for the .bin files and meta.json"),
    "val_fraction": (0.01, "share of conversations that go to val (chosen by a hash of each one)"),
    "max_examples": (None, "stop after this many source rows (default: all)"),
    **dataprep_bio.common_settings("conversations"),
}


def main(argv=None):
    cfg = load_settings(SETTINGS, argv, description=__doc__.strip().splitlines()[0], allow_config_file=False)
    dataprep_bio.prepare_from_settings(cfg, dataprep_bio.ChatEncoder(cfg.messages_field),
                                       {"kind": "chat", "messages_field": cfg.messages_field}, with_mask=True,
                                       max_rows=cfg.max_examples)


if __name__ == "__main__":
    run_main(main)
