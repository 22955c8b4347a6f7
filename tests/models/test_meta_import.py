"""Importing Meta's released MTP checkpoints, tested on a tiny checkpoint written in exactly
their layout (see meta_release.py), and the SentencePiece tokenizer they come with."""

import json
import os
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.checkpoint import ModelFileError, load_model, read_config
from models.meta_import import DEFAULT_MAX_SEQ_LEN, MetaImportConfig, import_meta_checkpoint
from models.tokenizer import SentencePieceTokenizer, TokenizerError, load_tokenizer

from .meta_release import PARAMS, meta_state_dict, reference_logits, train_sentencepiece, write_release


@pytest.fixture(scope="module")
def sp_model() -> bytes:
    return train_sentencepiece()


@pytest.fixture(scope="module")
def sp(sp_model) -> SentencePieceTokenizer:
    return SentencePieceTokenizer(sp_model)


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return meta_state_dict(PARAMS)


@pytest.fixture(scope="module")
def imported(tmp_path_factory, sp_model, state):
    """The tiny release, tokenizer one level up as in Meta's repository, imported once."""
    root = tmp_path_factory.mktemp("meta")
    source = write_release(root / "7B_tiny", PARAMS, state, sp_model, tokenizer_in_parent=True)
    return import_meta_checkpoint(source, root / "imported")


# --- the import ------------------------------------------------------------------------


def test_import_writes_our_model_directory(imported):
    assert sorted(p.name for p in imported.iterdir()) == ["config.json", "model.safetensors", "tokenizer.model"]
    config, tokenizer, provenance = read_config(imported)
    # Meta's n_layers counts every block, heads included, and so does ours.
    assert (config.n_layers, config.n_future_tokens, config.n_trunk_layers) == (6, 3, 3)
    assert (config.n_kv_heads, config.ffn_dim_multiplier, config.rope_theta) == (2, 1.3, 500000.0)
    assert config.max_seq_len == DEFAULT_MAX_SEQ_LEN
    assert tokenizer["kind"] == "sentencepiece"
    assert tokenizer["special_tokens"]["eot"] == 2 and tokenizer["special_tokens"]["bos"] == 1
    assert provenance["source"] == "meta-release" and provenance["params"] == PARAMS
    assert provenance["dtype"] == "float16"


def test_imported_weights_are_the_checkpoint_s_in_fp16(imported, state):
    loaded = load_model(imported, dtype=torch.float16)
    ours = loaded.model.state_dict()
    assert set(ours) == set(state)
    for name, tensor in state.items():
        assert torch.equal(ours[name], tensor), name


def test_imported_logits_equal_reference_forward_on_raw_state_dict(imported, state, sp):
    loaded = load_model(imported, dtype=torch.float64)
    tokens = sp.encode("def naïve(x):\n    return x * 2  # 日本 🐍")
    with torch.no_grad():
        ours = loaded.model(torch.tensor([tokens]))[0]  # (n_future, T, V)
    expected = reference_logits(state, PARAMS, tokens)
    assert ours.shape == expected.shape == (3, len(tokens), PARAMS["vocab_size"])
    # Not bit-equal in float64: our RoPE tables are stored in float32.
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)
    # The heads really differ (a mapping that fed every head the same block would not).
    assert not torch.allclose(ours[0], ours[1]) and not torch.allclose(ours[1], ours[2])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_import_converts_dtype(tmp_path, sp_model, state, dtype):
    source = write_release(tmp_path / "src", PARAMS, state, sp_model)
    out = import_meta_checkpoint(source, tmp_path / "out", MetaImportConfig(dtype=dtype))
    loaded = load_model(out, dtype=getattr(torch, dtype))
    assert torch.equal(loaded.model.output.weight, state["output.weight"].to(getattr(torch, dtype)))
    assert read_config(out)[2]["dtype"] == dtype


def test_vocab_size_minus_one_means_the_tokenizer_s_and_baseline_has_one_head(tmp_path, sp_model):
    # Llama's params.json writes vocab_size -1; Meta's n=1 baselines have no n_future_tokens.
    params = {k: v for k, v in PARAMS.items() if k != "n_future_tokens"} | {"vocab_size": -1, "rope_theta": None}
    state = meta_state_dict(PARAMS | {"n_future_tokens": 1})
    source = write_release(tmp_path / "src", params, state, sp_model)
    out = import_meta_checkpoint(source, tmp_path / "out", MetaImportConfig(max_seq_len=128))
    config = read_config(out)[0]
    assert (config.vocab_size, config.n_future_tokens, config.max_seq_len) == (512, 1, 128)
    assert config.rope_theta == 10000.0  # null means Meta's default


# --- errors: one line that names the file ------------------------------------------------


def _release(tmp_path, sp_model, state, params=PARAMS):
    return write_release(tmp_path / "rel" / "7B", params, state, sp_model)


def _import_error(source, tmp_path) -> ModelFileError:
    with pytest.raises(ModelFileError) as err:
        import_meta_checkpoint(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*")), "a failed import left a partial directory"
    assert "\n" not in str(err.value)
    return err.value


def test_missing_params_json(tmp_path, sp_model, state):
    source = _release(tmp_path, sp_model, state)
    (source / "params.json").unlink()
    err = _import_error(source, tmp_path)
    assert err.path.name == "params.json" and "missing" in err.problem


def test_missing_tokenizer_model(tmp_path, state):
    source = write_release(tmp_path / "rel" / "7B", PARAMS, state, tokenizer=None)
    err = _import_error(source, tmp_path)
    assert err.path.name == "tokenizer.model" and "missing" in err.problem and "--tokenizer" in err.problem


def test_missing_consolidated_pth(tmp_path, sp_model, state):
    source = _release(tmp_path, sp_model, state)
    (source / "consolidated.pth").unlink()
    err = _import_error(source, tmp_path)
    assert err.path.name == "consolidated.pth" and "missing" in err.problem


def test_unknown_and_missing_tensors(tmp_path, sp_model, state):
    extra = dict(state) | {"extra_heads.7.attention.wq.weight": torch.zeros(4, 4, dtype=torch.float16)}
    err = _import_error(_release(tmp_path / "a", sp_model, extra), tmp_path / "a")
    assert err.path.name == "consolidated.pth" and "unexpected tensors ['extra_heads.7.attention.wq.weight']" in err.problem

    fewer = {k: v for k, v in state.items() if k != "extra_heads.1.ffn_norm.weight"}
    err = _import_error(_release(tmp_path / "b", sp_model, fewer), tmp_path / "b")
    assert "missing tensors ['extra_heads.1.ffn_norm.weight']" in err.problem


def test_params_that_disagree_with_the_weights(tmp_path, sp_model, state):
    # One more future head than the checkpoint has: layers shrinks, extra_heads grows.
    err = _import_error(_release(tmp_path / "a", sp_model, state, PARAMS | {"n_future_tokens": 4}), tmp_path / "a")
    assert "does not match params.json" in err.problem and "layers.3" in err.problem

    # A different FFN rounding: the shapes no longer agree, and the message says which tensor.
    err = _import_error(_release(tmp_path / "b", sp_model, state, PARAMS | {"multiple_of": 256}), tmp_path / "b")
    assert err.path.name == "consolidated.pth"
    assert "feed_forward.w1.weight has shape (224, 64), params.json implies (256, 64)" in err.problem


def test_vocab_mismatch_and_bad_params(tmp_path, sp_model, state):
    err = _import_error(_release(tmp_path / "a", sp_model, state, PARAMS | {"vocab_size": 100}), tmp_path / "a")
    assert err.path.name == "tokenizer.model" and "512 pieces" in err.problem

    err = _import_error(_release(tmp_path / "b", sp_model, state, PARAMS | {"use_scaled_rope": True}), tmp_path / "b")
    assert err.path.name == "params.json" and "unknown field(s) use_scaled_rope" in err.problem

    err = _import_error(_release(tmp_path / "c", sp_model, state, PARAMS | {"n_heads": 5}), tmp_path / "c")
    assert err.path.name == "params.json" and "divisible" in err.problem

    source = _release(tmp_path / "d", sp_model, state)
    (source / "params.json").write_text("{not json")
    assert "not valid JSON" in _import_error(source, tmp_path / "d").problem


class Payload:
    """Unpickling this would run a command that creates a marker file."""

    marker = None

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_a_pth_that_pickles_code_is_refused_and_never_run(tmp_path, sp_model, state, legacy):
    source = _release(tmp_path, sp_model, state)
    marker = tmp_path / "pwned"
    Payload.marker = marker
    evil = dict(state) | {"config": Payload()}
    path = source / "consolidated.pth"
    if legacy:
        path.write_bytes(pickle.dumps(evil, protocol=2))  # torch's pre-1.6 format: a bare pickle
    else:
        torch.save(evil, path)
    err = _import_error(source, tmp_path)
    assert err.path.name == "consolidated.pth"
    assert "not a weights-only checkpoint" in err.problem
    assert "system" in err.problem or legacy  # the zip format's refusal names the culprit
    assert not marker.exists()


def test_a_pth_that_is_not_a_state_dict_or_not_a_checkpoint(tmp_path, sp_model, state):
    source = _release(tmp_path / "a", sp_model, state)
    torch.save([torch.zeros(3)], source / "consolidated.pth")
    assert "does not hold a state dict" in _import_error(source, tmp_path / "a").problem

    source = _release(tmp_path / "b", sp_model, state)
    data = (source / "consolidated.pth").read_bytes()
    (source / "consolidated.pth").write_bytes(data[: len(data) // 2])  # truncated download
    err = _import_error(source, tmp_path / "b")
    assert err.path.name == "consolidated.pth" and "not a readable PyTorch checkpoint" in err.problem


def test_a_bad_tokenizer_model_and_an_existing_target(tmp_path, sp_model, state):
    source = _release(tmp_path, sp_model, state)
    (source / "tokenizer.model").write_bytes(b"\x00garbage")
    err = _import_error(source, tmp_path)
    assert err.path.name == "tokenizer.model" and "not a SentencePiece model" in err.problem

    (source / "tokenizer.model").write_bytes(sp_model)
    (tmp_path / "out").mkdir()
    with pytest.raises(ModelFileError, match="already exists"):
        import_meta_checkpoint(source, tmp_path / "out")


# --- the SentencePiece tokenizer -----------------------------------------------------------

# Any text, with sentencepiece's space symbol U+2581 mixed in often.
unicode_text = st.text(st.characters(exclude_categories=["Cs"]) | st.just("\u2581"), max_size=200)


@settings(max_examples=150, deadline=None)
@given(unicode_text)
def test_sentencepiece_round_trips_any_text_and_streams_exactly(sp, text):
    ids = sp.encode(text)
    assert not sp.special_ids & set(ids)
    assert sp.decode(ids) == text
    data, acc = text.encode("utf-8"), b""
    for i in ids:  # every prefix of the ids decodes to a prefix of the bytes
        acc += sp.token_bytes(i)
        assert data.startswith(acc)
    assert acc == data


def test_sentencepiece_pieces_and_specials(sp):
    assert (sp.kind, sp.vocab_size, sp.eot_id, sp.bos_id) == ("sentencepiece", 512, 2, 1)
    assert sp.has_fim is False and sp.fim_prefix_id is None and sp.file_sep_id is None
    assert sp.special_ids == frozenset({0, 1, 2})
    assert [sp.token_bytes(i) for i in (1, 2)] == [b"", b""]
    assert {sp.token_bytes(i) for i in range(3, 259)} == {bytes([b]) for b in range(256)}  # <0x00>..<0xFF>
    # "▁" is a space, and a token may end inside a UTF-8 character (byte fallback).
    ids = sp.encode(" 🐍")
    assert sp.decode_bytes(ids[:1]) == b" " and len(ids) == 5
    assert sp.decode(ids[:2]).endswith("\ufffd")
    # A literal "▁" (sentencepiece's own space symbol) survives, as byte pieces.
    assert sp.decode(sp.encode("a\u2581b \u2581\u2581")) == "a\u2581b \u2581\u2581"
    # Text that looks like a special is plain text.
    assert sp.decode(sp.encode("<s>x</s><unk>")) == "<s>x</s><unk>"
    # sentencepiece itself agrees on every piece (it would drop a leading space; we keep it).
    text = "def f(x):\n    return 'naïve' + x  # 日本\n"
    assert sp._sp.decode(sp.encode(text)) == text
    assert sp.encode("x = 1") != sp.encode(" x = 1")  # no dummy prefix: the space is the text's own


def test_sentencepiece_pieces_for_a_llama_vocabulary(sp):
    pieces = sp.pieces()
    assert len(pieces) == 512 and len({p for p, _, _ in pieces}) == 512  # unique, as llama.cpp needs
    assert pieces[:3] == [("<unk>", 0.0, "unknown"), ("<s>", 0.0, "control"), ("</s>", 0.0, "control")]
    assert [p for p, _, kind in pieces if kind == "byte"] == [f"<0x{b:02X}>" for b in range(256)]
    normal = [(i, p) for i, (p, _, kind) in enumerate(pieces) if kind == "normal"]
    assert all(sp.token_bytes(i) == p.replace("\u2581", " ").encode() for i, p in normal)


def test_sentencepiece_save_and_load(sp, sp_model, tmp_path):
    sp.save(tmp_path)
    assert (tmp_path / "tokenizer.model").read_bytes() == sp_model  # the original file, unmodified
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.model"]
    loaded = load_tokenizer(tmp_path, sp.to_config())
    assert loaded.encode("naïve 🐍") == sp.encode("naïve 🐍")
    with pytest.raises(TokenizerError, match="special token id mismatch.*bos"):
        load_tokenizer(tmp_path, sp.to_config() | {"special_tokens": sp.to_config()["special_tokens"] | {"bos": 3}})
    (tmp_path / "tokenizer.model").unlink()
    with pytest.raises(TokenizerError, match=r"tokenizer\.model: missing"):
        load_tokenizer(tmp_path, sp.to_config())


def test_sentencepiece_rejects_models_that_are_not_exact(tmp_path):
    import io

    import sentencepiece as spm

    lines = ["hello world, naïve ｆｕｌｌ 日本"] * 50
    for options, problem in [
        ({"byte_fallback": True}, "normalizes its input"),  # the default NFKC normalizer
        ({"normalization_rule_name": "identity", "remove_extra_whitespaces": False}, "byte-fallback pieces"),
    ]:
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=280,
            hard_vocab_limit=False, minloglevel=2, **options,
        )
        with pytest.raises(TokenizerError, match=problem):
            SentencePieceTokenizer(model.getvalue(), tmp_path / "tokenizer.model")


def test_config_json_names_sentencepiece(imported):
    data = json.loads((imported / "config.json").read_text())
    assert data["tokenizer"]["special_tokens"]["fim_prefix"] is None
