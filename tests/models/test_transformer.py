import pytest
import torch

from models.config import ModelConfig
from models.transformer import MTPTransformer, linear_rows_invariant


def tiny(**overrides) -> MTPTransformer:
    torch.manual_seed(0)
    config = ModelConfig(dim=32, n_layers=4, n_heads=4, vocab_size=50, n_future_tokens=3, max_seq_len=64)
    return MTPTransformer(config.replace(**overrides)).eval()


def test_meta_layout_and_parameter_names():
    model = tiny()
    names = set(dict(model.named_parameters()))
    assert len(model.layers) == 2 and len(model.extra_heads) == 2  # 1 trunk + head 1, heads 2..3
    for name in ["tok_embeddings.weight", "norm.weight", "output.weight",
                 "layers.1.attention.wq.weight", "extra_heads.1.feed_forward.w3.weight",
                 "layers.0.attention_norm.weight", "extra_heads.0.ffn_norm.weight"]:
        assert name in names
    # Same parameter count as a next-token model with the same number of blocks.
    assert model.num_parameters() == tiny(n_future_tokens=1).num_parameters()


def test_every_head_reads_the_input_of_the_last_layer():
    model = tiny()
    tokens = torch.randint(0, 50, (2, 10))
    logits = model(tokens)  # (B, n, T, V)
    assert logits.shape == (2, 3, 10, 50)
    # Recompute by hand from z = input of layers[-1].
    z = model.tok_embeddings(tokens)
    rotation = model.rope(0, 10, z.dtype)
    for block in model.layers[:-1]:
        z = block(z, rotation)
    for head, block in enumerate([model.layers[-1], *model.extra_heads]):
        expected = model.output(model.norm(block(z, rotation)))
        torch.testing.assert_close(logits[:, head], expected)
    # The main path is a plain Llama: head 0 through all of `layers`.
    h = model.tok_embeddings(tokens)
    for block in model.layers:
        h = block(h, rotation)
    torch.testing.assert_close(logits[:, 0], model.output(model.norm(h)))


def test_causality():
    model = tiny()
    tokens = torch.randint(0, 50, (1, 12))
    changed = tokens.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 50
    a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :, :8], b[:, :, :8])
    assert not torch.allclose(a[:, :, 8:], b[:, :, 8:])


@pytest.mark.parametrize("n_kv_heads", [None, 2, 1])
def test_kv_cache_incremental_matches_full_forward(n_kv_heads):
    model = tiny(n_kv_heads=n_kv_heads)
    tokens = torch.randint(0, 50, (2, 20))
    full = model(tokens)  # (B, n, T, V)
    cache = model.new_cache(batch=2)
    heads = (0, 1, 2)
    # Prefill 7, then chunks of 1, 5 and 7 tokens (multi-token chunks need the offset mask).
    pieces, pos = [], 0
    for size in (7, 1, 5, 7):
        pieces.append(model.forward_cached(tokens[:, pos : pos + size], pos, cache, heads))
        pos += size
    torch.testing.assert_close(torch.cat(pieces, dim=2), full, atol=1e-5, rtol=1e-4)


def test_forward_cached_subset_of_heads_and_last_only():
    model = tiny()
    tokens = torch.randint(0, 50, (1, 9))
    full = model(tokens)
    cache = model.new_cache()
    out = model.forward_cached(tokens, 0, cache, heads=(0, 2), last_only=True)
    assert out.shape == (1, 2, 1, 50)
    torch.testing.assert_close(out[:, 0, 0], full[:, 0, -1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[:, 1, 0], full[:, 2, -1], atol=1e-5, rtol=1e-4)


def test_rewriting_cache_positions_is_a_rollback():
    """Writing new tokens over rejected positions gives the same result as a fresh prefill."""
    model = tiny()
    prefix = torch.randint(0, 50, (1, 6))
    rejected = torch.randint(0, 50, (1, 4))
    accepted = torch.randint(0, 50, (1, 2))
    cache = model.new_cache()
    model.forward_cached(torch.cat([prefix, rejected], 1), 0, cache, heads=(0, 1, 2))
    out = model.forward_cached(accepted, 6, cache, heads=(0, 1, 2))  # overwrite positions 6..7
    fresh = model.new_cache()
    expected = model.forward_cached(torch.cat([prefix, accepted], 1), 0, fresh, heads=(0, 1, 2))[:, :, 6:]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_too_long_sequence_is_an_error():
    model = tiny()
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_bad_head_index():
    model = tiny()
    with pytest.raises(ValueError, match="head 3 out of range"):
        model(torch.zeros(1, 4, dtype=torch.long), heads=(3,))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_step_equivalent_cache_gives_verified_tokens_the_bits_of_plain_steps(dtype):
    """With a step-equivalent cache, k tokens fed in one cached forward get bit for bit the
    hidden states (every head) that k 1-token forwards give them. Without it the fused masked
    attention kernel rounds differently: rows differ here in both dtypes on the dev machine.
    It rests on matmuls that keep a row's bits whatever the row count, which some CPUs' fp16
    kernels do not (the torch engine then runs a step's tokens one at a time)."""
    torch.manual_seed(3)
    config = ModelConfig(dim=64, n_layers=6, n_heads=4, vocab_size=261, n_future_tokens=4, max_seq_len=128)
    model = MTPTransformer(config).eval().to(dtype)
    if not linear_rows_invariant(model, dtype):
        pytest.skip(f"{dtype} matmuls on this CPU give a row other bits for other row counts")
    tokens = torch.randint(0, 261, (1, 60), generator=torch.Generator().manual_seed(0))
    heads = range(4)
    with torch.inference_mode():
        for start in range(30, 40):
            stepped = model.new_cache(step_equivalent=True)
            model.forward_hidden(tokens[:, :start], 0, stepped, heads)  # prefill
            steps = [model.forward_hidden(tokens[:, p : p + 1], p, stepped, heads)[0, :, 0] for p in range(start, start + 4)]
            verified = model.new_cache(step_equivalent=True)
            model.forward_hidden(tokens[:, :start], 0, verified, heads)
            block = model.forward_hidden(tokens[:, start : start + 4], start, verified, heads)[0]  # (heads, 4, D)
            for t in range(4):
                assert torch.equal(block[:, t], steps[t]), (start, t)
