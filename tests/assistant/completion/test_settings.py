import pytest

from assistant.completion.settings import CompletionSettings, load_settings


@pytest.mark.parametrize(
    "data, field, value, problems",
    [
        ({"maxTokens": 32}, "max_tokens", 32, 0),  # camelCase
        ({"max_tokens": 32}, "max_tokens", 32, 0),  # snake_case
        ({"mtpAssistant": {"multiline": "never"}}, "multiline", "never", 0),  # a section
        ({"maxTokens": -1}, "max_tokens", 48, 1),  # refused: the default stays
        ({"maxTokens": "many"}, "max_tokens", 48, 1),
        ({"maxTokens": True}, "max_tokens", 48, 1),  # a bool is no integer here
        ({"multiline": "sometimes"}, "multiline", "auto", 1),
        ({"engine": "gpu"}, "engine", "auto", 1),
        ({"suffixShare": float("nan")}, "suffix_share", 0.2, 1),
        ({"heads": None}, "heads", None, 0),
        ({"threads": 2}, "threads", 2, 0),
        ({"threads": 0}, "threads", None, 1),
        ({"batchThreads": 4}, "batch_threads", 4, 0),
        ({"batchThreads": "all"}, "batch_threads", None, 1),
        ({"model": ""}, "model", None, 1),
        ({"timeCapMs": 250, "bogus": 1}, "time_cap_ms", 250, 1),  # unknown keys are reported
        ({"suffixShare": 0.5, "snippetShare": 0.5}, "suffix_share", 0.2, 1),  # fine alone, not together
        (None, "max_tokens", 48, 0),
        ([1, 2], "max_tokens", 48, 1),
    ],
)
def test_load_settings(data, field, value, problems):
    settings, found = load_settings(data)
    assert getattr(settings, field) == value
    assert len(found) == problems


def test_loading_keeps_the_base():
    base = CompletionSettings(model="mine", max_tokens=10)
    settings, problems = load_settings({"maxLines": 3}, base)
    assert (settings.model, settings.max_tokens, settings.max_lines, problems) == ("mine", 10, 3, [])


def test_the_dataclass_refuses_bad_values():
    with pytest.raises(ValueError, match="max_lines"):
        CompletionSettings(max_lines=0)
