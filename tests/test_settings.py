"""Protects wigglegpt/settings.py: defaults < config file < --key=value, literal parsing, the
one-line errors for unknown keys (with the closest names), wrong types and missing files, and
--help=json, the table another script reads back exactly (tuples, None and the extra literals)."""

import subprocess
import sys

import pytest

from wigglegpt.common import UserError, pick_device, pick_dtype
from wigglegpt.settings import load_settings, settings_from_json

SETTINGS = {
    "learning_rate": (6e-4, "peak learning rate"),
    "batch_size": (12, "sequences per micro-batch"),
    "betas": ((0.9, 0.95), "AdamW betas"),
    "compile": (False, "torch.compile the model"),
    "out_dir": ("out", "where checkpoints go"),
    "init_from": ("scratch", "scratch, resume or a checkpoint path"),
    "wandb_run_name": (None, "optional run name"),
}


def test_precedence_and_parsing(tmp_path):
    config = tmp_path / "cfg.py"
    config.write_text("import math\nbatch_size = 4\nlearning_rate = 1e-3\n_private = 5\n")
    cfg = load_settings(SETTINGS, [str(config), "--learning_rate=3e-4", "--betas=(0.8,0.99)",
                                   "--compile", "--out_dir=out-x", "--init_from=1e-3"])
    assert cfg.batch_size == 4 and cfg.learning_rate == 3e-4 and cfg.betas == (0.8, 0.99)
    assert cfg.compile is True and cfg.out_dir == "out-x"
    assert cfg.init_from == "1e-3"  # a str setting keeps the text as typed
    assert load_settings(SETTINGS, ["--learning_rate=1"]).learning_rate == 1.0  # int is fine for float
    assert load_settings(SETTINGS, ["--wandb_run_name=run-1"]).wandb_run_name == "run-1"


@pytest.mark.parametrize("argv, message", [
    (["--learnig_rate=1e-3"], "unknown setting --learnig_rate; did you mean 'learning_rate'"),
    (["--batch_size=2.5"], "batch_size=2.5 on the command line should be an int"),
    (["--compile=yes"], "should be a bool"),
    (["--betas=(0.9,)"], "should be a tuple"),
    (["--batch_size"], "needs a value"),
    (["missing_config.py"], "config file not found: missing_config.py"),
])
def test_errors_name_the_problem(argv, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(SETTINGS, argv)


def test_typo_in_config_file_is_an_error_not_a_new_global(tmp_path):
    config = tmp_path / "cfg.py"
    config.write_text("batch_sise = 4\n")
    with pytest.raises(UserError, match=r"unknown setting 'batch_sise' in .*cfg.py; did you mean 'batch_size'"):
        load_settings(SETTINGS, [str(config)])
    config.write_text("batch_size = \n")
    with pytest.raises(UserError, match="syntax error"):
        load_settings(SETTINGS, [str(config)])


def test_help_lists_every_setting(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_settings(SETTINGS, ["--help"], description="demo")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for key in SETTINGS:
        assert f"--{key}" in out
    assert "(default: (0.9, 0.95))" in out


def test_device_and_dtype_choice():
    assert pick_device("auto") in ("cpu", "cuda", "mps")
    assert pick_dtype("auto", "cpu") == "float32"
    with pytest.raises(UserError, match="unknown dtype"):
        pick_dtype("float8", "cpu")
    with pytest.raises(UserError, match="unknown device"):
        pick_device("tpu")


def test_run_main_prints_one_line_and_exits_2(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("from wigglegpt.common import run_main, UserError\n"
                      "def main():\n    raise UserError('something is wrong')\nrun_main(main)\n")
    import os
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert result.stderr == "error: something is wrong\n"


def test_help_json_gives_the_table_back_exactly(capsys):
    table = {**SETTINGS, "top_k": (200, "sample from the k likeliest tokens", None),
             "compile_choice": ("auto", "'auto', True or False", True, False)}
    with pytest.raises(SystemExit) as exit_info:
        load_settings(table, ["missing_config.py", "--help=json"])  # listed before anything is read
    assert exit_info.value.code == 0
    read_back = settings_from_json(capsys.readouterr().out)
    assert read_back == table and list(read_back) == list(table)
    assert read_back["betas"][0] == (0.9, 0.95) and read_back["wandb_run_name"][0] is None
