"""Shared test setup: the repo root on sys.path, hermetic environment, tiny-model helpers."""

import os
import sys
import types

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


class ScriptedModel(torch.nn.Module):
    """Writes the given tokens after the prompt whatever it is fed (through the KV cache)."""

    def __init__(self, prompt_len, script, block_size=256):
        super().__init__()
        self.config = types.SimpleNamespace(block_size=block_size, vocab_size=50304)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # the engine finds the device here
        self.prompt_len, self.script = prompt_len, list(script)

    def new_kv_cache(self):
        from model_bio import KVCache
        return KVCache(1, self.config.block_size)

    def forward(self, idx, targets=None, kv_cache=None):
        length = idx.shape[1] + (kv_cache.pos if kv_cache is not None else 0)
        if kv_cache is not None:
            kv_cache.advance(idx.shape[1])
        logits = torch.zeros(1, 1, self.config.vocab_size)
        logits[0, 0, self.script[min(length - self.prompt_len, len(self.script) - 1)]] = 1.0
        return logits, None


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """data/shakespeare built once for this module (train_bio builds it on first use)."""
    root = tmp_path_factory.mktemp("root")
    from wigglegpt import dataprep
    dataprep.ensure_demo_data(str(root / "data" / "shakespeare"))
    return root
