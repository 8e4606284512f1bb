"""Shared test setup: the repo root on sys.path, hermetic environment, tiny-model helpers."""

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# nothing in the tests may reach the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def repo_root():
    return ROOT


def tiny_config(**overrides):
    from model_bio import GPTConfig
    settings = dict(block_size=32, vocab_size=96, n_layer=2, n_head=4, n_embd=32)
    settings.update(overrides)
    return GPTConfig(**settings)


def require_module(name, install):
    """Import an optional package for a test. Missing: skip on a user's machine, but fail
    under CI (CI=true installs requirements-optional.txt, so there the test must really run)."""
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing under CI ({install})")
        pytest.skip(f"{name} is not installed ({install})")
