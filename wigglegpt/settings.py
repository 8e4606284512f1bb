"""
Settings for every script: defaults, then a config file, then --key=value overrides.

Each script declares its settings as {name: (default, "one-line meaning")}, optionally followed
by literal values the setting also takes, and reads them with load_settings (--help lists them;
--help=json prints the table for other scripts, read back with settings_from_json).
Config files are checked like the overrides, so a typo is an error that names the closest key.
The one-line error for bad input and the choice of device and dtype are in wigglegpt/common.py.
"""

import ast
import difflib
import json
import os
import sys
import types

from wigglegpt.common import UserError


# ---------------------------------------------------------------------------------------
# reading settings

def closest(key, known):
    """'; did you mean ...?' naming the known settings nearest to key ('' when none is near)."""
    near = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(k) for k in near)}?" if near else ""


def check_type(key, value, default, where, also=()):
    """Return value converted to the default's type, or raise a UserError naming the key.
    also: literal values the setting takes besides its type (batch_size 'auto', top_k None)."""
    if any(value is a or (isinstance(a, str) and value == a) for a in also):
        return value
    if default is None:  # no type to hold it to (e.g. an optional path)
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, (tuple, list)):
        if isinstance(value, (tuple, list)) and len(value) == len(default):
            return type(default)(value)
    elif isinstance(default, type(value)):
        return value
    kind = type(default).__name__
    article = "an" if kind[0] in "aeiou" else "a"
    extra = "".join(f" or {a!r}" for a in also)
    raise UserError(f"{key}={value!r} {where} should be {article} {kind} like the default {default!r}{extra}")


def parse_value(text, default, also=()):
    """A command-line value is a Python literal (--betas=(0.9,0.95)), else a plain string.
    A text setting that also takes literals (compile: 'auto', True or False) reads those too."""
    for literal in also:
        if not isinstance(literal, str) and text == repr(literal):
            return literal
    if isinstance(default, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def read_config_file(path):
    """Execute a config file of plain assignments and return what it assigned."""
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    try:
        with open(path, "rb") as f:
            data = f.read()
        source = data.decode("utf-8")
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"config file {path} is not UTF-8 text "
                        f"(byte 0x{data[e.start]:02x} at offset {e.start})") from None
    namespace = {}
    try:
        exec(compile(source, path, "exec"), namespace)
    except SyntaxError as e:
        raise UserError(f"{path}, line {e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:  # a config file that raises is the user's bug, not ours
        raise UserError(f"{path} failed to run: {type(e).__name__}: {e}") from None
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and not isinstance(v, (types.ModuleType, types.FunctionType, type))}


def help_text(settings, description):
    width = max(len(k) for k in settings)
    lines = [description, "", "settings (config file assignments or --key=value):"]
    for key, (default, meaning, *_) in settings.items():
        shown = "" if "(default" in meaning else f" (default: {default!r})"
        lines.append(f"  --{key.ljust(width)}  {meaning}{shown}")
    return "\n".join(lines)


def settings_json(settings):
    """The table as JSON for another script (no script imports another): {name: [default, meaning,
    also...]} with the values as repr() text, so tuples and None survive; settings_from_json reads it."""
    return json.dumps({key: [repr(default), meaning, *map(repr, also)]
                       for key, (default, meaning, *also) in settings.items()})


def settings_from_json(text):
    """The {name: (default, meaning, *also)} table that settings_json wrote."""
    return {key: (ast.literal_eval(default), meaning, *map(ast.literal_eval, also))
            for key, (default, meaning, *also) in json.loads(text).items()}


def default_values(settings):
    return {key: entry[0] for key, entry in settings.items()}


def _unknown(key, settings, where, hints):
    """The error for a setting name that is not in settings; hints maps known foreign names
    (e.g. the original WiggleGPT's) to what to use instead."""
    if hints and key in hints:
        return UserError(f"setting {key!r} {where} is not used here: {hints[key]}")
    return UserError(f"unknown setting {key!r} {where}{closest(key, list(settings))}")


def apply_settings(settings, values, given, where, hints=None):
    """Check each of given {key: value} against settings (known name, default's type) and write
    it into values; where says where the values came from, for the error message."""
    for key, value in given.items():
        if key not in settings:
            raise _unknown(key, settings, where, hints)
        values[key] = check_type(key, value, settings[key][0], where, settings[key][2:])
    return values


class Settings(types.SimpleNamespace):
    """The settings' values as attributes; vars() of it is the plain dict that goes into
    checkpoints. explicit (kept outside vars()): the names a config file or the command line set,
    for the few choices that depend on whether a setting was given at all (wigglegpt.compat)."""
    __slots__ = ("explicit",)

    def __init__(self, values=None, explicit=()):
        super().__init__(**(values or {}))
        self.explicit = frozenset(explicit)

    def __reduce__(self):  # copies and pickles keep explicit too
        return type(self), (dict(vars(self)), self.explicit)


def load_settings(settings, argv=None, description="", allow_config_file=True, hints=None):
    """Defaults, then an optional config file (a positional path), then --key=value overrides.
    hints: {foreign setting name: what to use instead}, for a clearer error than "unknown".

    Returns Settings: vars() of it is the plain dict that goes into checkpoints.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(settings, description))
        sys.exit(0)
    if "--help=json" in argv:
        print(settings_json(settings))
        sys.exit(0)
    values, explicit = default_values(settings), set()
    for arg in argv:
        if not arg.startswith("--"):
            if not allow_config_file:
                raise UserError(f"unexpected argument {arg!r}; settings are given as --key=value")
            assigned = read_config_file(arg)
            apply_settings(settings, values, assigned, f"in {arg}", hints)
            explicit.update(assigned)
            continue
        key, eq, text = arg[2:].partition("=")
        if key not in values:
            if hints and key in hints:
                raise _unknown(key, settings, "on the command line", hints)
            raise UserError(f"unknown setting --{key}{closest(key, list(settings))}")
        default = settings[key][0]
        if not eq:
            if not isinstance(default, bool):
                raise UserError(f"--{key} needs a value: --{key}=...")
            value = True
        else:
            value = parse_value(text, default, settings[key][2:])
        values[key] = check_type(key, value, default, "on the command line", settings[key][2:])
        explicit.add(key)
    return Settings(values, explicit)
