"""GGUF export: layout, exact f32 tensors, llama.cpp's per-tensor quantization, and the
checks that turn a missing, corrupt or mismatched file into an error naming it."""

import shutil

import gguf
import numpy as np
import pytest
import torch

from models.checkpoint import ModelFileError, save_model
from models.config import ModelConfig
from models.gguf_export import check_export, export_files, export_model, read_info, tensor_types
from models.tokenizer import ByteTokenizer
from models.transformer import MTPTransformer


def tiny_model(seed=0, dim=64, n_future=3, n_layers=5) -> MTPTransformer:
    torch.manual_seed(seed)
    config = ModelConfig(dim=dim, n_layers=n_layers, n_heads=4, vocab_size=261, n_future_tokens=n_future, max_seq_len=128)
    return MTPTransformer(config).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("m") / "model"
    model = tiny_model()
    save_model(model_dir, model, ByteTokenizer())
    export_model(model_dir, "f32")
    return model_dir, model


def test_f32_export_holds_the_weights_exactly_in_llama_layout(exported):
    model_dir, model = exported
    main, *heads = export_files(model_dir, "f32", 3)
    assert [p.name for p in heads] == ["head-2.gguf", "head-3.gguf"]
    state = model.state_dict()
    reader = gguf.GGUFReader(str(main))
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    assert reader.fields["llama.block_count"].contents() == 3  # 2 trunk blocks + head 1
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == 261
    # Meta's adjacent-pair RoPE is llama.cpp's LLAMA layout: wq/wk are written unpermuted.
    assert np.array_equal(tensors["blk.2.attn_q.weight"], state["layers.2.attention.wq.weight"].numpy())
    assert np.array_equal(tensors["blk.0.ffn_gate.weight"], state["layers.0.feed_forward.w1.weight"].numpy())
    assert np.array_equal(tensors["output.weight"], state["output.weight"].numpy())
    head = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(heads[1])).tensors}
    assert np.array_equal(head["blk.0.attn_k.weight"], state["extra_heads.1.attention.wk.weight"].numpy())
    assert np.array_equal(head["token_embd.weight"], state["output.weight"].numpy())  # tied output
    assert read_info(heads[1]).head == 3 and read_info(heads[1]).blocks == 1


def test_quantized_exports_fall_back_per_tensor_where_a_k_quant_does_not_fit(exported):
    model_dir, _ = exported
    export_model(model_dir, "q4_k_m")
    types = tensor_types(export_files(model_dir, "q4_k_m", 3)[0])
    # Rows of 64 or 192 are not multiples of 256 (a k-quant block): llama.cpp's quantizer
    # picks a 32-wide format for them instead; norms stay f32.
    assert types["output_norm.weight"] == "F32"
    assert types["blk.0.attn_q.weight"] in {"Q5_0", "Q5_1", "Q8_0", "Q4_0"}
    assert not any(t.endswith("_K") for t in types.values())
    # A 256-wide model gets real k-quants.
    wide_dir = model_dir.parent / "wide"
    save_model(wide_dir, tiny_model(dim=256, n_future=2, n_layers=2), ByteTokenizer())
    result = export_model(wide_dir, "q4_k_m")
    wide = result.tensor_types["main.gguf"]
    assert wide["blk.0.attn_q.weight"] == "Q4_K"
    assert (wide_dir / "gguf" / "q4_k_m" / "export.json").is_file()


def test_reexport_replaces_the_files(exported):
    model_dir, _ = exported
    export_model(model_dir, "f16")
    first = read_info(export_files(model_dir, "f16", 3)[0]).fingerprint
    export_model(model_dir, "f16")
    assert read_info(export_files(model_dir, "f16", 3)[0]).fingerprint == first
    assert not [p for p in (model_dir / "gguf").iterdir() if p.name.startswith(".")]  # no leftovers


def test_missing_truncated_and_corrupt_files_are_named(exported, tmp_path):
    model_dir, model = exported
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    main, head2, head3 = export_files(copy, "f32", 3)
    head3.unlink()
    with pytest.raises(ModelFileError, match="head-3.gguf: missing"):
        check_export(copy, "f32", model.config)
    data = head2.read_bytes()
    head2.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="head-2.gguf: .*truncated"):
        check_export(copy, "f32", model.config)
    main.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelFileError, match="main.gguf: .*corrupt"):
        check_export(copy, "f32", model.config)


def test_a_head_from_another_model_is_refused(exported, tmp_path):
    model_dir, model = exported
    other = tmp_path / "other"
    save_model(other, tiny_model(seed=1), ByteTokenizer())  # same shapes, other weights
    export_model(other, "f32")
    wider = tmp_path / "wider"
    save_model(wider, tiny_model(dim=96), ByteTokenizer())
    export_model(wider, "f32")
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    check_export(copy, "f32", model.config)  # sound as exported
    shutil.copy(export_files(other, "f32", 3)[1], export_files(copy, "f32", 3)[1])
    with pytest.raises(ModelFileError, match="head-2.gguf: does not match its main model main.gguf: fingerprint"):
        check_export(copy, "f32", model.config)
    shutil.copy(export_files(wider, "f32", 3)[2], export_files(copy, "f32", 3)[1])
    with pytest.raises(ModelFileError, match="head-2.gguf: does not match its main model main.gguf: dim is 96"):
        check_export(copy, "f32", model.config)
    shutil.copy(export_files(model_dir, "f32", 3)[2], export_files(copy, "f32", 3)[1])  # head 3 as head 2
    with pytest.raises(ModelFileError, match="head-2.gguf: .*head is 3"):
        check_export(copy, "f32", model.config)
    with pytest.raises(ModelFileError, match="main.gguf: dim is 64"):
        check_export(copy, "f32", model.config.replace(dim=128))
