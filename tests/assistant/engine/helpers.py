"""Models made in the tests."""

import torch

from models.config import ModelConfig
from models.transformer import MTPTransformer


def random_model(n_future=4, vocab_size=261, seed=0, dim=32, n_layers=6) -> MTPTransformer:
    torch.manual_seed(seed)
    config = ModelConfig(dim=dim, n_layers=n_layers, n_heads=4, vocab_size=vocab_size, n_future_tokens=n_future, max_seq_len=256)
    return MTPTransformer(config).eval()


def repetitive_code(n: int = 40) -> str:
    """Python that repeats one pattern n times: a model trained on it for seconds has heads that agree often."""
    return "".join(
        f"def add_{i}(x, y):\n    return x + y + {i}\n\n\nclass Point{i}:\n    def __init__(self, x, y):\n"
        f"        self.x = x\n        self.y = y\n\n"
        for i in range(n)
    )
