from assistant.engine.adaptive import AdaptiveHeads
from assistant.engine.base import DecodeStats


def stats(new_tokens: int, decode_s: float) -> DecodeStats:
    return DecodeStats(new_tokens=new_tokens, decode_s=decode_s)


def test_measures_each_k_then_uses_the_cheapest_and_re_measures_the_stalest():
    heads = AdaptiveHeads(n_future=3, explore_every=4)
    cost_per_token = {1: 0.002, 2: 0.001, 3: 0.003}
    chosen = []
    for _ in range(12):
        k = heads.choose()
        chosen.append(k)
        heads.record(k, stats(11, 10 * cost_per_token[k]))
    assert chosen[:3] == [1, 2, 3]
    assert heads.best() == 2
    exploring = [k for i, k in enumerate(chosen, 1) if i % 4 == 0]
    assert all(k != 2 for k in exploring)  # every 4th choice re-measures another k
    assert chosen.count(2) >= 7


def test_calls_without_decoded_tokens_teach_nothing():
    heads = AdaptiveHeads(n_future=2)
    heads.record(1, stats(1, 0.5))  # the only token came from the prefill
    heads.record(2, stats(0, 0.0))
    assert heads.cost == {} and heads.choose() == 1


def test_a_k_that_becomes_slow_is_left():
    heads = AdaptiveHeads(n_future=2, explore_every=1000, smoothing=0.5)
    heads.record(1, stats(5, 0.4))  # 0.1 s a token
    heads.record(2, stats(5, 0.2))  # 0.05
    heads.choices = 2
    for _ in range(3):
        heads.record(heads.choose(), stats(5, 2.0))  # k=2 turns slow (0.5 s a token)
    assert heads.best() == 1
