"""
Loss curves from a plain-text training log: what a console run of the original WiggleGPT (or of
train_bio.py) printed, saved or pasted into a file.

The eval lines are read, in every form those scripts print them:

    step 600000: train loss 3.1749, val loss 3.1621                    original train_bio.py, finetune_native.py
    step 136000: train loss 3.5760, val loss 3.5547, sparsity 13.30%   original v1/v2 (the suffix is ignored)
    step 40: train loss 4.1002, val loss 4.2113, firing 12.5%          this project's train_bio.py

anywhere in a line (a pasted log's '> ' quotes, backticks or time stamps around it do not
matter), with a thousands separator in the step or not. Everything else (iteration lines, the
tqdm bars, warnings) is skipped. A resumed run starts again at its checkpoint's step: an eval
line at a step not after the previous one drops what the earlier process logged from that
step on, so the curve is the run as it finally went.
"""

import codecs
import re

from wigglegpt.common import UserError

_NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf)"
EVAL_LINE = re.compile(rf"\bstep\s+(\d[\d,]*):\s*train loss\s+({_NUMBER}),\s*val loss\s+({_NUMBER})", re.IGNORECASE)


def read_text(path):
    """The file's text. UTF-16 with a byte-order mark (what PowerShell's '>' writes) or UTF-8;
    bytes that decode as neither become U+FFFD: only the ASCII eval lines matter."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UserError(f"log not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder; give the training log file") from None
    except OSError as e:
        raise UserError(f"cannot read the log {path}: {e.strerror or e}") from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace")
    return data.decode("utf-8-sig", errors="replace")


def parse_evals(text):
    """[(step, train loss, val loss)] of the eval lines in text, in step order (see the module
    docstring for the forms read and how a resumed run is read)."""
    kept = {}
    last = None
    for line in text.splitlines():
        for match in EVAL_LINE.finditer(line):
            step = int(match.group(1).replace(",", ""))
            if last is not None and step <= last:  # a resumed run: its checkpoint's step again
                kept = {s: v for s, v in kept.items() if s < step}
            kept[step] = (float(match.group(2)), float(match.group(3)))
            last = step
    return [(step, train, val) for step, (train, val) in sorted(kept.items())]


def read_loss_log(path):
    """The eval points of a text log, [(step, train loss, val loss)]; a log without any eval line
    is a UserError."""
    evals = parse_evals(read_text(path))
    if not evals:
        raise UserError(f"{path} has no eval lines ('step N: train loss X, val loss Y', as train_bio.py "
                        "prints them); is it the training's console log?")
    return evals
