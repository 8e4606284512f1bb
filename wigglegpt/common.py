"""
What every script shares: the one-line error for bad input (UserError, run_main, write_error)
and the choice of device and dtype.
"""

import errno
import os
import signal
import sys
import threading
from contextlib import nullcontext


class UserError(Exception):
    """Bad input from the user: printed as one line on stderr, exit code 2, no traceback."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable or does not fit its own config."""


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


def remove_quietly(path):
    """Remove a file if it is there: a temporary file after a failed write, say."""
    try:
        os.remove(path)
    except OSError:  # not there (the usual case), or the disk is gone: the error that matters is on its way
        pass


def fsync(path, directory=False):
    """Flush a written file, or (directory) a folder's entries after a rename, to the disk; a
    folder is skipped on Windows, where it cannot be opened."""
    if directory and not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_error(path, error, advice):
    """The one-line UserError for a file that could not be written (disk full, no permission,
    read-only folder): names the file, the reason and what to do."""
    reason = error.strerror or str(error) or type(error).__name__
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some disk space"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make the folder writable or choose another one"
    elif error.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        fix = "a file stands where a folder should be, or a folder where the file should be; choose another path"
    else:
        fix = "check the disk"
    return UserError(f"could not write {path}: {reason}; {fix}, then {advice}")


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
            return "bfloat16" if has_native_bf16(device) else "float16"
        return "float32"
    if requested not in ("float32", "bfloat16", "float16"):
        raise UserError(f"unknown dtype {requested!r}; use auto, float32, bfloat16 or float16")
    if requested == "bfloat16" and device.startswith("cuda"):
        if not has_native_bf16(device):
            import torch
            name = torch.cuda.get_device_name(cuda_index(device))
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



def cuda_index(device):
    """'cuda' -> the current device, 'cuda:N' -> N."""
    import torch
    _, _, index = device.partition(":")
    return int(index) if index else torch.cuda.current_device()


def has_native_bf16(device):
    """True when the GPU computes bf16 in hardware (compute capability 8.0+: Ampere and newer).
    torch.cuda.is_bf16_supported() also says True on Turing/Volta (T4, V100, RTX 20xx, GTX 16xx),
    where bf16 is emulated and far slower than fp16."""
    import torch
    return torch.cuda.get_device_capability(cuda_index(device)) >= (8, 0)


# ---------------------------------------------------------------------------------------
# standard output of the scripts that stream text

def prepare_stdout():
    """Characters the terminal cannot show become '?' instead of an exception."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")


def write_stdout(text):
    sys.stdout.write(text)
    sys.stdout.flush()  # show each piece as it is made


# ---------------------------------------------------------------------------------------
# stopping cleanly

class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM set a flag that the loop checks between iterations, so the
    current step finishes and a checkpoint is saved; a second Ctrl-C aborts at once."""

    def __init__(self):
        self.requested = False
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False
