import pytest

from assistant.completion.cache import PREFIX_TAIL, CompletionCache, context_key

CTX = context_key("suffix", "snippets")


def test_exact_hit_and_miss():
    cache = CompletionCache()
    cache.put(CTX, "def f(", "x, y):")
    assert cache.get(CTX, "def f(") == "x, y):"
    assert cache.get(CTX, "def g(") is None
    assert cache.get(context_key("other suffix", "snippets"), "def f(") is None


@pytest.mark.parametrize(
    "typed, expected",
    [
        ("x", ", y):"),
        ("x, y", "):"),
        ("x, y):", None),  # typed it all: nothing left to suggest
        ("z", None),  # typed something else
        ("", "x, y):"),  # the exact entry
    ],
)
def test_typed_ahead(typed, expected):
    cache = CompletionCache()
    cache.put(CTX, "def f(", "x, y):")
    assert cache.get(CTX, "def f(" + typed) == expected


def test_typed_ahead_on_a_long_prefix():
    cache = CompletionCache()
    prefix = "a = 1\n" * 2000  # longer than the kept tail
    cache.put(CTX, prefix, "b = 2")
    assert cache.get(CTX, prefix + "b =") == " 2"
    # Same length and tail-end but different text inside the kept tail: a miss.
    changed = prefix[: -PREFIX_TAIL] + "c" + prefix[-PREFIX_TAIL + 1 :]
    assert cache.get(CTX, changed + "b =") is None


def test_lru_evicts_the_oldest():
    cache = CompletionCache(capacity=2)
    cache.put(CTX, "a", "1")
    cache.put(CTX, "b", "2")
    assert cache.get(CTX, "a") == "1"  # a is now the newest
    cache.put(CTX, "c", "3")
    assert cache.get(CTX, "b") is None and cache.get(CTX, "a") == "1" and len(cache) == 2
