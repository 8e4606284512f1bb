"""Protects wigglegpt/losslog.py, the reader of plain-text training logs for compare_bio.py
--chart: every form of the eval line the original WiggleGPT and train_bio.py print (v1/v2's
sparsity suffix, this project's firing suffix, a pasted log's quotes and backticks, a thousands
separator, a UTF-16 file as PowerShell writes it) read among noise lines (iteration lines, tqdm
bars, hellaswag lines, a skipped non-finite update); a resumed run read as it finally went; and
a missing or unreadable log or one without eval lines as one clear UserError."""

import os

import pytest

from wigglegpt import losslog
from wigglegpt.common import UserError

ORIGINAL_LOG = """\
tokens per iteration will be: 491,520
number of parameters: 124.44M
step 0: train loss 10.9410, val loss 10.9413
iter 0: loss 10.9432, time 21034.12ms, mfu -100.00%
iter 10: loss 9.8721, time 402.20ms, mfu 30.11%
eval train:  40%|####      | 80/200 [00:03<00:05, 24.1it/s]\reval train: 100%|##########| 200/200
step 1000: train loss 4.1000, val loss 4.2000, sparsity 13.30%
saving checkpoint to out-wigglegpt-pure-124m
> step 2,000: train loss 3.9000, val loss 3.8000
**12/11/2025 02:58AM** - Training finished! `step 3000: train loss 3.7000, val loss 3.7500`
step 3000: hellaswag acc 0.2900, acc_norm 0.3000 (100 examples)
iter 3001: loss is nan: update skipped (1/3 in a row)
step 4000: train loss 3.6000, val loss 3.6500, firing 12.5%
Step 5000: Train Loss 3.5000, Val Loss nan
"""


def test_reads_every_form_of_the_eval_line_among_noise(tmp_path):
    path = tmp_path / "trainlog.md"
    path.write_text(ORIGINAL_LOG, encoding="utf-8")
    evals = losslog.read_loss_log(str(path))
    assert [e[0] for e in evals] == [0, 1000, 2000, 3000, 4000, 5000]
    assert evals[0][1:] == (10.9410, 10.9413)
    assert evals[1][1:] == (4.1, 4.2)  # the v2 sparsity suffix is not part of the val loss
    assert evals[2][1:] == (3.9, 3.8)  # quoted, with a thousands separator
    assert evals[3][1:] == (3.7, 3.75)  # inside backticks after a time stamp
    assert evals[4][1:] == (3.6, 3.65)
    assert evals[5][1] == 3.5 and evals[5][2] != evals[5][2]  # nan stays nan

    utf16 = tmp_path / "powershell.log"
    utf16.write_bytes(ORIGINAL_LOG.encode("utf-16"))  # with a byte-order mark, as '>' in PowerShell writes
    assert losslog.read_loss_log(str(utf16))[:5] == evals[:5]


def test_a_resumed_run_keeps_what_it_finally_logged():
    text = "\n".join(["step 0: train loss 5.0, val loss 5.1",
                      "step 100: train loss 4.0, val loss 4.1",
                      "step 200: train loss 3.0, val loss 3.1",  # logged, then the run died before saving it
                      "step 300: train loss 2.0, val loss 2.1",
                      "step 100: train loss 4.0, val loss 4.1",  # resumed from the checkpoint at 100
                      "step 200: train loss 3.5, val loss 3.6"])
    assert losslog.parse_evals(text) == [(0, 5.0, 5.1), (100, 4.0, 4.1), (200, 3.5, 3.6)]


def test_missing_unreadable_and_empty_logs_are_user_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="log not found: .*missing.txt"):
        losslog.read_loss_log(str(tmp_path / "missing.txt"))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="cannot read the log .*afile/log.txt: Not a directory"):
        losslog.read_loss_log(str(tmp_path / "afile" / "log.txt"))
    noise = tmp_path / "noise.log"
    noise.write_bytes(b"iter 0: loss 10.9, time 1.0ms, mfu 1.00%\nsaving checkpoint\n\xff\xfe\x00binary\x80")
    with pytest.raises(UserError, match="noise.log has no eval lines"):
        losslog.read_loss_log(str(noise))

    locked = tmp_path / "locked.log"
    locked.write_text("step 0: train loss 1.0, val loss 1.0\n")
    real_open = open

    def refuse(path, *args, **kw):  # what chmod 000 does for any user but root
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return real_open(path, *args, **kw)

    monkeypatch.setattr("builtins.open", refuse)
    with pytest.raises(UserError, match="cannot read the log .*locked.log: Permission denied"):
        losslog.read_loss_log(str(locked))
