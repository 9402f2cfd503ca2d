"""Shared fixtures: the character tokenizer and a small untrained policy."""

from __future__ import annotations

import pytest
import torch

from taskgrad.config import TinyModelConfig
from taskgrad.policy import build_char_tokenizer, build_tiny_model


@pytest.fixture(scope="session")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture
def small_model(tokenizer):
    cfg = TinyModelConfig(
        hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64
    )
    model = build_tiny_model(tokenizer, cfg, seed=0)
    return model.double()  # float64: identities can then be checked to 1e-10


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA; elsewhere they are skipped, with the reason shown."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
