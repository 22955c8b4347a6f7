"""Models made in the tests."""

import torch

from models.config import ModelConfig
from models.transformer import MTPTransformer


def random_model(n_future=4, vocab_size=261, seed=0, dim=32, n_layers=6) -> MTPTransformer:
    torch.manual_seed(seed)
    config = ModelConfig(dim=dim, n_layers=n_layers, n_heads=4, vocab_size=vocab_size, n_future_tokens=n_future, max_seq_len=256)
    return MTPTransformer(config).eval()
