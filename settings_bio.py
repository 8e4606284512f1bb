"""
Settings for every script: defaults, then a config file, then --key=value overrides.

Each script declares its settings as {name: (default, "one-line meaning")}, optionally followed
by literal values the setting also takes ('auto' for batch_size, None = off for top_k). Config files
stay plain Python assignments (users edit them per GPU) but are read into a dict and checked
like command-line overrides, so a typo is an error that names the key and the closest valid
ones, never a silently new global. Also here: the one-line error every script prints for bad
input, and the choice of device and dtype, shared by training, sampling and chat.
"""

import ast
import difflib
import os
import sys
import types
from contextlib import nullcontext


class UserError(Exception):
    """Bad input from the user: printed as one line on stderr, exit code 2, no traceback."""


def run_main(main):
    """Run a script's main(); user errors become one clear line and exit code 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # output piped into `head` and the reader left: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(0)


def write_error(path, error, advice):
    """The one-line UserError for a file that could not be written (disk full, no permission,
    read-only folder): names the file, the reason and what to do."""
    import errno
    reason = error.strerror or str(error) or type(error).__name__
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some disk space"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make the folder writable or choose another one"
    else:
        fix = "check the disk"
    return UserError(f"could not write {path}: {reason}; {fix}, then {advice}")


# ---------------------------------------------------------------------------------------
# reading settings

def _closest(key, known):
    near = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(k) for k in near)}?" if near else ""


def _check_type(key, value, default, where, also=()):
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


def _parse_value(text, default, also=()):
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
    with open(path, encoding="utf-8") as f:
        source = f.read()
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


def default_values(settings):
    return {key: entry[0] for key, entry in settings.items()}


def _unknown(key, settings, where, hints):
    """The error for a setting name that is not in settings; hints maps known foreign names
    (e.g. the original WiggleGPT's) to what to use instead."""
    if hints and key in hints:
        return UserError(f"setting {key!r} {where} is not used here: {hints[key]}")
    return UserError(f"unknown setting {key!r} {where}{_closest(key, list(settings))}")


def apply_settings(settings, values, given, where, hints=None):
    """Check each of given {key: value} against settings (known name, default's type) and write
    it into values; where says where the values came from, for the error message."""
    for key, value in given.items():
        if key not in settings:
            raise _unknown(key, settings, where, hints)
        values[key] = _check_type(key, value, settings[key][0], where, settings[key][2:])
    return values


def load_settings(settings, argv=None, description="", allow_config_file=True, hints=None):
    """Defaults, then an optional config file (a positional path), then --key=value overrides.
    hints: {foreign setting name: what to use instead}, for a clearer error than "unknown".

    Returns a SimpleNamespace; vars() of it is the plain dict that goes into checkpoints.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(settings, description))
        sys.exit(0)
    values = default_values(settings)
    for arg in argv:
        if not arg.startswith("--"):
            if not allow_config_file:
                raise UserError(f"unexpected argument {arg!r}; settings are given as --key=value")
            apply_settings(settings, values, read_config_file(arg), f"in {arg}", hints)
            continue
        key, eq, text = arg[2:].partition("=")
        if key not in values:
            if hints and key in hints:
                raise _unknown(key, settings, "on the command line", hints)
            raise UserError(f"unknown setting --{key}{_closest(key, list(settings))}")
        default = settings[key][0]
        if not eq:
            if not isinstance(default, bool):
                raise UserError(f"--{key} needs a value: --{key}=...")
            value = True
        else:
            value = _parse_value(text, default, settings[key][2:])
        values[key] = _check_type(key, value, default, "on the command line", settings[key][2:])
    return types.SimpleNamespace(**values)


# ---------------------------------------------------------------------------------------
# device and dtype

def pick_device(requested="auto"):
    """'auto' picks cuda > mps > cpu; asking for a device that is not there is a UserError."""
    import torch
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cuda" or requested.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"device={requested} asked for, but this machine has no CUDA GPU "
                            "(or torch is the CPU build); use --device=cpu or install the CUDA build")
        has_index, index = requested.startswith("cuda:"), requested.partition(":")[2]
        if has_index and not index.isdigit():
            raise UserError(f"device={requested}: the GPU number must be a whole number, as in cuda:0")
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            raise UserError(f"device={requested} asked for, but this machine has {count} GPU(s): "
                            f"cuda:0 to cuda:{count - 1}")
        return requested
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device=mps asked for, but MPS is not available here")
    if requested not in ("cpu", "mps"):
        raise UserError(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps")
    return requested


def pick_dtype(requested, device):
    """'auto' is bf16 on GPUs that compute it in hardware, fp16 on older GPUs, fp32 elsewhere.
    On the CPU bfloat16 and float16 run through CPU autocast when asked for (slow, but the
    same mixed-precision code path as a GPU, so it can be tested anywhere)."""
    if requested == "auto":
        if device.startswith("cuda"):
            import gpu_bio
            return "bfloat16" if gpu_bio.has_native_bf16(device) else "float16"
        return "float32"
    if requested not in ("float32", "bfloat16", "float16"):
        raise UserError(f"unknown dtype {requested!r}; use auto, float32, bfloat16 or float16")
    if requested == "bfloat16" and device.startswith("cuda"):
        import gpu_bio
        if not gpu_bio.has_native_bf16(device):
            import torch
            name = torch.cuda.get_device_name(gpu_bio.cuda_index(device))
            raise UserError(f"{name} has no hardware bfloat16 (compute capability below 8.0; torch would "
                            "emulate it, slowly); use --dtype=float16 or --dtype=auto")
    return requested


def autocast_for(device, dtype):
    """Mixed precision as torch.autocast on CUDA, MPS and the CPU alike; float32: no autocast."""
    import torch
    device_type = device.split(":")[0]
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=getattr(torch, dtype))
