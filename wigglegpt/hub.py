"""
Models on the Hugging Face Hub by name: hf://OWNER/REPO/FILE is that file, hf://OWNER/REPO the
repo's one checkpoint (*.pt) or export folder (config.json + model.safetensors). resolve() turns a
name into a local path through huggingface_hub, so its cache, progress bar, HF_HUB_OFFLINE=1 and
revisions all apply, and a download cut off (even by kill -9) is never taken for the file; every
failure is one UserError line.

    python sample_bio.py --init_from=hf://edeneldith/WiggleGPT/ckpt_pretrain.pt
"""

import os
import posixpath
import sys
import warnings

from wigglegpt.common import UserError, write_error

PREFIX = "hf://"
NAME_FORM = "hf://OWNER/REPO or hf://OWNER/REPO/FILE"
EXPORT_FILES = ("config.json", "model.safetensors")  # what makes a folder an export
INSTALL_HINT = "pip install huggingface_hub"


def is_hub_name(text):
    """Whether text names a model on the Hub (hf://...)."""
    return isinstance(text, str) and text.startswith(PREFIX)


def split_name(name):
    """(repo_id, path in the repo or None) of hf://OWNER/REPO[/PATH]; anything else is a UserError."""
    parts = name.removeprefix(PREFIX).strip("/").split("/") if is_hub_name(name) else []
    if len(parts) < 2 or not all(parts):
        raise UserError(f"{name!r} is not a Hub model name: write {NAME_FORM}, "
                        "e.g. hf://edeneldith/WiggleGPT/ckpt_pretrain.pt")
    return "/".join(parts[:2]), "/".join(parts[2:]) or None


def resolve(name, revision=None):
    """The local path of the model an hf:// name gives, downloaded into (or, offline, found in) the
    Hugging Face cache: a checkpoint file, or the folder of an export. revision is a branch, tag or
    commit hash (None or '': the repo's default branch)."""
    repo_id, path = split_name(name)
    revision = revision or None
    try:
        import huggingface_hub
    except ImportError:
        raise UserError(f"{name}: Hub models are downloaded through huggingface_hub, which is not installed: "
                        f"{INSTALL_HINT}") from None
    try:
        with warnings.catch_warnings():  # its guess that the disk is too small: a full disk is our one line
            warnings.filterwarnings("ignore", message="Not enough free disk space")
            local = download(huggingface_hub, name, repo_id, path, revision)
    except Exception as e:
        raise one_line(e, name, repo_id, revision) from None
    if local is None:
        raise not_cached(name, revision)
    return local


def download(huggingface_hub, name, repo_id, path, revision):
    """The local path of repo_id's path (None: the repo's one model) at revision, downloaded or
    found in the cache; None when offline and not cached."""
    files, cached_only = repo_files(huggingface_hub, repo_id, revision)
    if cached_only and not files:  # the snapshot folder of a download killed before its file was in place
        raise not_cached(name, revision)
    path = pick(name, repo_id, files) if path is None else path
    if posixpath.basename(path) == "model.safetensors" and is_export(posixpath.dirname(path), files):
        path = posixpath.dirname(path)  # an export is named by its folder or by its weights
    if is_export(path, files):
        return download_export(huggingface_hub, repo_id, path, revision)
    if path in files:
        return huggingface_hub.hf_hub_download(repo_id, path, revision=revision)
    if cached_only:  # what hf_hub_download would find offline, without its retries
        return None
    raise UserError(f"{name}: {repo_id} has no file {path!r}{at_revision(revision)}; its models: "
                    + (", ".join(f"{PREFIX}{repo_id}/{m}" for m in models(files)) or "none"))


def repo_files(huggingface_hub, repo_id, revision):
    """(the repo's files, whether they come from the cache): the Hub's list, or offline
    (HF_HUB_OFFLINE=1, no network) what the cache holds of that revision, so that a cached model
    also resolves on a plane."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    if not constants.HF_HUB_OFFLINE:
        try:  # model_info is one request; the tree listing would retry for ~20 s without a network
            info = huggingface_hub.HfApi().model_info(repo_id, revision=revision)
            return [s.rfilename for s in info.siblings or []], False
        except network_errors():
            pass
        except HfHubHTTPError as e:  # the Hub is down: the cache serves, as in hf_hub_download
            if getattr(e.response, "status_code", 0) < 500:
                raise
    try:
        folder = huggingface_hub.snapshot_download(repo_id, revision=revision, local_files_only=True)
    except LocalEntryNotFoundError as e:
        # IncompleteSnapshotError: the snapshot holds part of the repo (one file downloaded out of
        # several), which is just what the cache can serve
        folder = getattr(e, "snapshot_path", None)
        if not folder:
            raise
    files = [os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/")
             for root, _, names in os.walk(folder) for f in names]
    return files, True


def is_export(folder, files):
    """Whether the repo folder ('' for the root) holds an export."""
    return all(posixpath.join(folder, f) in files for f in EXPORT_FILES)


def models(files):
    """The repo paths that name a model: the checkpoints (*.pt), then the export folders (the
    root export, which has no folder name, by its model.safetensors)."""
    exports = sorted({posixpath.dirname(f) for f in files if posixpath.basename(f) == "model.safetensors"
                      and is_export(posixpath.dirname(f), files)})
    return sorted(f for f in files if f.endswith(".pt")) + [d or "model.safetensors" for d in exports]


def pick(name, repo_id, files):
    """The path hf://OWNER/REPO means: the repo's one model, else a UserError listing them."""
    choices = models(files)
    if len(choices) == 1:
        return choices[0]
    if not choices:
        shown = ", ".join(sorted(files)[:8]) + (", ..." if len(files) > 8 else "")
        raise UserError(f"{name} holds no checkpoint (*.pt) and no export (config.json + model.safetensors); "
                        f"its files: {shown or 'none'}")
    raise UserError(f"{name} holds {len(choices)} models, name one: "
                    + ", ".join(f"{PREFIX}{repo_id}/{c}" for c in choices))


def download_export(huggingface_hub, repo_id, folder, revision):
    """The local folder of an export, or None when offline and not all cached: only its config.json
    and model.safetensors are downloaded (a root export must not drag the repo's checkpoints along)."""
    prefix = f"{folder}/" if folder else ""
    root = huggingface_hub.snapshot_download(repo_id, revision=revision,
                                             allow_patterns=[prefix + f for f in EXPORT_FILES])
    local = os.path.join(root, *folder.split("/")) if folder else root
    # offline, a cached snapshot may hold only part of the folder: None, as for a file not cached
    return local if all(os.path.isfile(os.path.join(local, f)) for f in EXPORT_FILES) else None


def network_errors():
    """What a Hub call raises when the Hub cannot be reached: the offline-mode error and the
    connection errors of the HTTP client this huggingface_hub version uses (httpx2, httpx or
    requests, imported with it)."""
    from huggingface_hub.errors import OfflineModeIsEnabled
    errors = [OfflineModeIsEnabled]
    for module, names in (("httpx2", ["TransportError"]), ("httpx", ["TransportError"]),
                          ("requests", ["ConnectionError", "Timeout"])):
        if module in sys.modules:
            errors += [getattr(sys.modules[module], n) for n in names]
    return tuple(errors)


def one_line(e, name, repo_id, revision):
    """The UserError for an exception of huggingface_hub, naming the model and what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, HFValidationError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
    at, page = at_revision(revision), f"https://huggingface.co/{repo_id}"
    if isinstance(e, UserError):
        return e
    if isinstance(e, GatedRepoError):  # before RepositoryNotFoundError, its parent class
        return UserError(f"{name}: {repo_id} is gated: accept its terms on {page}, then log in with `hf auth login`")
    if isinstance(e, RepositoryNotFoundError):
        return UserError(f"{name}: no model repository {repo_id} on the Hub (a private one needs `hf auth login`); "
                         f"check the name at {page}")
    if isinstance(e, RevisionNotFoundError):
        return UserError(f"{name}: {repo_id} has no revision {revision!r}; give one of its branches, tags or "
                         f"commit hashes ({page}/commits/main)")
    if isinstance(e, (LocalEntryNotFoundError, *network_errors())):  # before EntryNotFoundError, its parent
        return not_cached(name, revision)
    if isinstance(e, EntryNotFoundError):
        return UserError(f"{name}: {repo_id} has no such file{at}; see {page}/tree/{revision or 'main'}")
    if isinstance(e, HfHubHTTPError):
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return UserError(f"{name}: the Hub refused it ({reason}); try again later, or `hf auth login` for a private repo")
    if isinstance(e, HFValidationError):
        return UserError(f"{name!r} is not a valid Hub name or revision ({str(e).splitlines()[0]}); write {NAME_FORM}")
    if isinstance(e, OSError):  # writing the cache: a full disk, a read-only folder
        return write_error(constants.HF_HUB_CACHE, e, f"run again to download {name}")
    return e


def not_cached(name, revision):
    """The UserError for a model neither in the cache nor downloadable now."""
    from huggingface_hub import constants
    where = f"the Hugging Face cache ({constants.HF_HUB_CACHE})"
    if constants.HF_HUB_OFFLINE:
        return UserError(f"{name}{at_revision(revision)} is not in {where} and HF_HUB_OFFLINE=1 forbids "
                         "downloading it: unset HF_HUB_OFFLINE to download it once")
    return UserError(f"{name}{at_revision(revision)} could not be downloaded (the Hub cannot be reached) and is "
                     f"not in {where}: check the connection and run again")


def at_revision(revision):
    return f" at revision {revision!r}" if revision else ""
