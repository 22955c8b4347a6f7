import pytest

from models.config import PRESETS, ConfigError, ModelConfig


def test_defaults_and_presets_are_valid():
    for config in [ModelConfig(), *PRESETS.values()]:
        assert config.n_trunk_layers == config.n_layers - config.n_future_tokens
        assert ModelConfig.from_dict(config.to_dict()) == config


def test_unknown_field_is_named():
    with pytest.raises(ConfigError, match="unknown model config field.*colour"):
        ModelConfig.from_dict({"dim": 64, "colour": "blue"})


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"dim": 0}, "dim must be a positive integer"),
        ({"dim": 65, "n_heads": 4}, "divisible by n_heads"),
        ({"dim": 12, "n_heads": 4}, "must be even for RoPE"),
        ({"n_heads": 8, "n_kv_heads": 3}, "divisible by n_kv_heads"),
        ({"n_layers": 2, "n_future_tokens": 4}, "cannot exceed n_layers"),
        ({"norm_eps": -1.0}, "norm_eps must be a finite positive number"),
        ({"vocab_size": "many"}, "vocab_size must be a positive integer"),
        ({"n_layers": True}, "n_layers must be a positive integer"),
        ({"max_seq_len": 0}, "max_seq_len must be a positive integer"),
        ({"max_seq_len": -512}, "max_seq_len must be a positive integer"),
        ({"max_seq_len": 512.0}, "max_seq_len must be a positive integer"),
        ({"dim": 64.5}, "dim must be a positive integer"),
        ({"dim": 1 << 20, "n_heads": 8}, "dim 1048576 is larger than any model"),
        ({"vocab_size": 10**9}, "vocab_size 1000000000 is larger than any model"),
        ({"n_kv_heads": True}, "n_kv_heads must be a positive integer or null"),
        ({"n_kv_heads": 0}, "n_kv_heads must be a positive integer or null"),
        ({"rope_theta": float("nan")}, "rope_theta must be a finite positive number, got nan"),
        ({"rope_theta": float("inf")}, "rope_theta must be a finite positive number, got inf"),
        ({"rope_theta": 0}, "rope_theta must be a finite positive number"),
        ({"rope_theta": -10000.0}, "rope_theta must be a finite positive number"),
        ({"norm_eps": float("nan")}, "norm_eps must be a finite positive number, got nan"),
        ({"ffn_dim_multiplier": float("nan")}, "ffn_dim_multiplier must be a finite positive number"),
    ],
)
def test_bad_values_get_clear_errors(fields, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(fields)


def test_not_an_object():
    with pytest.raises(ConfigError, match="JSON object"):
        ModelConfig.from_dict([1, 2])


def test_meta_layer_convention():
    # 7B_200B_1/4: 32 blocks in all, 4 heads -> 29 in `layers` (28 trunk + head 1), 3 extra.
    config = ModelConfig(dim=4096, n_layers=32, n_heads=32, n_future_tokens=4)
    assert config.n_trunk_layers == 28


def test_huge_context_is_refused_with_the_memory_it_would_take():
    """Nothing in the weights bounds max_seq_len (RoPE has no position table), and every
    engine allocates its KV cache for all of it: 10^12 positions grew a process to 24 GB."""
    config = ModelConfig(dim=256, n_layers=10, n_heads=8)
    with pytest.raises(ConfigError, match=r"max_seq_len 1000000000000 is beyond any usable context \(1048576 at most\): "
                       r"its KV cache alone would take 20.5 PB"):
        config.replace(max_seq_len=10**12)
    # 2 (K and V) * 10 blocks * 8 heads * 32 dims * 4 bytes per position
    assert config.kv_cache_bytes(1000) == 2 * 10 * 8 * 32 * 4 * 1000
