"""
Prepare a chat corpus for fine-tuning: chat-template tokens plus a loss mask per token.

    python prepare_smoltalk.py                                   # SmolTalk2, streamed from the Hub
    python prepare_smoltalk.py --data_files=chats.jsonl --out_dir=data/mychats

Writes train.bin / val.bin and train_mask.bin / val_mask.bin (1 on the tokens the loss is taken
on) through wigglegpt.dataprep, rendered with wigglegpt.tokenizer's template; the defaults
reproduce the published fine-tune's data. The row format, the template and the outputs:
README.md, "Prepare data" and "Fine-tune for chat".
"""

from wigglegpt import dataprep
from wigglegpt.common import UserError, run_main
from wigglegpt.settings import load_settings

SETTINGS = {
    **dataprep.source_settings("HuggingFaceTB/smoltalk2", "SFT", "smoltalk_smollm3_smol_magpie_ultra_no_think",
                                   ".jsonl/.json/.parquet"),
    "messages_field": ("messages", "row field holding the list of {role, content} messages"),
    "out_dir": ("data/smoltalk", "folder for the .bin files and meta.json"),
    "val_fraction": (0.05, "share of conversations that go to val (chosen by a hash of each one); "
                           "0.05 as the published fine-tune"),
    "max_tokens": (1024, "cut each conversation to this many tokens before its <|endoftext|> (0: no cut)"),
    "loss_on": ("assistant", "which tokens the loss is taken on: 'assistant' (replies and their closing "
                             "tags) or 'all' (every token, as the published fine-tune)"),
    "max_examples": (None, "stop after this many source rows (default: all)"),
    **dataprep.common_settings("conversations"),
}


def main(argv=None):
    cfg = load_settings(SETTINGS, argv, description=__doc__.strip().splitlines()[0], allow_config_file=False)
    if cfg.loss_on not in ("assistant", "all"):
        raise UserError(f"loss_on={cfg.loss_on!r} should be 'assistant' or 'all'")
    if cfg.max_tokens < 0:
        raise UserError(f"max_tokens={cfg.max_tokens} should be 0 (no cut) or positive")
    encoder = dataprep.ChatEncoder(cfg.messages_field, cfg.max_tokens, cfg.loss_on)
    recipe = {"kind": "chat", "messages_field": cfg.messages_field, "template": "whole-string",
              "max_tokens": cfg.max_tokens, "loss_on": cfg.loss_on}
    dataprep.prepare_from_settings(cfg, encoder, recipe, with_mask=True,
                                       max_rows=cfg.max_examples)


if __name__ == "__main__":
    run_main(main)
