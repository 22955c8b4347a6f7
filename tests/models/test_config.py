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
        ({"norm_eps": -1.0}, "norm_eps must be a positive number"),
        ({"vocab_size": "many"}, "vocab_size must be a positive integer"),
        ({"n_layers": True}, "n_layers must be a positive integer"),
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
