"""Plain llama bases (a GGUF file, a Hugging Face directory) read as MTP models: the
imported head 1 is the base, llama.cpp's greedy on the base GGUF agrees with our torch
forward, and bad files get one line naming them."""

import json
import shutil

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from assistant.engine.base import GenerationConfig
from assistant.engine.llama_engine import LlamaEngine, LlamaSettings
from assistant.engine.torch_engine import TorchEngine
from models.base_import import build_model, hf_permute, read_base, write_model_dir
from models.checkpoint import ModelFileError, load_model, save_model
from models.config import ModelConfig
from models.gguf_export import check_export, export_model, quant_dir
from models.tokenizer import ByteTokenizer, GGUFTokenizer, train_bpe
from models.transformer import MTPTransformer
from tests.near_ties import GreedyAgreement, model_logits

CODE = "".join(f"def add_{i}(x, y):\n    return x + y + {i}\n\n\n" for i in range(30))


def tiny_base(seed: int = 0, vocab_size: int = 261) -> MTPTransformer:
    """A plain (one-head) llama with GQA whose logits are spread wide enough that greedy
    decoding has few near-ties, as a trained model's are."""
    torch.manual_seed(seed)
    config = ModelConfig(dim=64, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=vocab_size, n_future_tokens=1,
                         max_seq_len=256, rope_theta=50000.0)
    model = MTPTransformer(config).eval()
    with torch.no_grad():
        model.tok_embeddings.weight.mul_(20)
        model.output.weight.mul_(30)
    return model


@pytest.fixture(scope="module")
def gguf_base(tmp_path_factory):
    """A tiny llama base exported by our own exporter: gguf/<quant>/main.gguf is a plain
    llama GGUF (the shipped model's is one too)."""
    root = tmp_path_factory.mktemp("base")
    model = tiny_base()
    source = save_model(root / "source", model, ByteTokenizer())
    for quant in ("f32", "q8_0"):
        export_model(source, quant)
    return model, source


def test_gguf_head_one_is_the_base_and_new_heads_copy_its_last_block(gguf_base):
    model, source = gguf_base
    base = read_base(quant_dir(source, "f32") / "main.gguf")
    assert base.kind == "gguf" and base.quant == "f32" and base.config.kv_heads == 2
    assert base.config.ffn_hidden_dim == model.config.ffn_hidden_dim and base.config.rope_theta == 50000.0
    assert isinstance(base.tokenizer, ByteTokenizer)  # the exporting directory's tokenizer, checked token by token
    mtp = build_model(base, 2)
    assert mtp.n_future == 3 and mtp.config.n_trunk_layers == 2
    tokens = torch.tensor([ByteTokenizer().encode(CODE[:120])])
    with torch.no_grad():
        torch.testing.assert_close(mtp(tokens, heads=(0,)), model(tokens, heads=(0,)), atol=1e-5, rtol=1e-5)
        for head in mtp.extra_heads:
            for (name, p), q in zip(head.named_parameters(), mtp.layers[-1].parameters()):
                assert torch.equal(p, q), name


def test_llama_cpp_greedy_on_the_base_agrees_with_the_torch_forward(gguf_base, tmp_path):
    _, source = gguf_base
    base = read_base(quant_dir(source, "f32") / "main.gguf")
    out = write_model_dir(base, build_model(base, 2), tmp_path / "mtp", {"made_by": "test"})
    main = quant_dir(out, "f32") / "main.gguf"
    assert main.read_bytes() == (quant_dir(source, "f32") / "main.gguf").read_bytes()  # the base, unchanged
    loaded = load_model(out)
    assert loaded.provenance["base"]["sha256"] and loaded.provenance["base"]["kind"] == "gguf"
    engine = LlamaEngine(out, LlamaSettings(quant="f32", threads=1))
    torch_engine = TorchEngine(loaded.model, loaded.tokenizer)
    agreement = GreedyAgreement(model_logits(loaded.model), tolerance=1e-3)
    for start in (0, 200, 500, 800):
        prompt = loaded.tokenizer.encode(CODE[start : start + 60])
        tokens = engine.generate(prompt, GenerationConfig(max_new_tokens=24, k=1)).tokens
        agreement.check(prompt, tokens, start)
        reference = torch_engine.generate(prompt, GenerationConfig(max_new_tokens=24, k=1)).tokens
        agreement.check_same_until_a_near_tie(prompt, tokens, reference, start)
        # The new heads only draft: speculative decoding gives the base's own tokens.
        assert engine.generate(prompt, GenerationConfig(max_new_tokens=24, k=3)).tokens == tokens
    agreement.assert_few_skipped(0.1)


def test_quantized_base_is_kept_and_its_heads_quantized_alike(gguf_base, tmp_path):
    _, source = gguf_base
    base = read_base(quant_dir(source, "q8_0") / "main.gguf")
    assert base.quant == "q8_0"
    out = write_model_dir(base, build_model(base, 3), tmp_path / "mtp", {})
    files = check_export(out, "q8_0", load_model(out).config)
    assert [f.name for f in files] == ["main.gguf", "head-2.gguf", "head-3.gguf", "head-4.gguf"]
    types = {t.tensor_type.name for t in gguf.GGUFReader(str(files[1])).tensors}
    assert "Q8_0" in types


def test_a_base_that_changed_after_its_heads_were_trained_is_refused(gguf_base, tmp_path):
    _, source = gguf_base
    original = tmp_path / "base.gguf"
    shutil.copyfile(quant_dir(source, "f32") / "main.gguf", original)
    base = read_base(original, tokenizer_from=source)
    out = write_model_dir(base, build_model(base, 2), tmp_path / "mtp", {})
    config = load_model(out).config
    main = quant_dir(out, "f32") / "main.gguf"
    check_export(out, "f32", config)  # as written: fine
    data = bytearray(main.read_bytes())
    data[-1] ^= 0xFF  # one weight changed (the file is a hard link: the base itself changed)
    main.unlink()
    main.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="base changed after its heads were trained") as e:
        LlamaEngine(out, LlamaSettings(quant="f32", threads=1))
    assert str(main) in str(e.value)


def test_llama_cpp_tokenizes_a_gguf_with_its_own_vocabulary(gguf_base, tmp_path):
    _, source = gguf_base
    alone = tmp_path / "elsewhere.gguf"  # away from the directory it was exported from
    shutil.copyfile(quant_dir(source, "f32") / "main.gguf", alone)
    base = read_base(alone)
    tokenizer = base.tokenizer
    assert isinstance(tokenizer, GGUFTokenizer) and tokenizer.vocab_size == 261
    assert tokenizer.eot_id == 256 and tokenizer.has_fim  # our specials are control tokens
    ids = tokenizer.encode("x<|endoftext|>y")
    assert 256 not in ids and all(0 <= i < 261 for i in ids)  # special text stays text
    out = write_model_dir(base, build_model(base, 1), tmp_path / "mtp", {})
    reloaded = load_model(out).tokenizer  # reads gguf/f32/main.gguf, the kept base
    assert isinstance(reloaded, GGUFTokenizer) and reloaded.encode("def f") == tokenizer.encode("def f")


def write_hf_llama(directory, model: MTPTransformer, tokenizer) -> None:
    """A Hugging Face LlamaForCausalLM checkpoint of `model` (q/k in HF's rotate-halves order)."""
    config = model.config
    directory.mkdir()
    state = {"model.embed_tokens.weight": model.tok_embeddings.weight, "model.norm.weight": model.norm.weight,
             "lm_head.weight": model.output.weight}
    names = {"attention_norm.weight": "input_layernorm.weight", "attention.wq.weight": "self_attn.q_proj.weight",
             "attention.wk.weight": "self_attn.k_proj.weight", "attention.wv.weight": "self_attn.v_proj.weight",
             "attention.wo.weight": "self_attn.o_proj.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
             "feed_forward.w1.weight": "mlp.gate_proj.weight", "feed_forward.w2.weight": "mlp.down_proj.weight",
             "feed_forward.w3.weight": "mlp.up_proj.weight"}
    for i, block in enumerate(model.layers):
        for ours, theirs in names.items():
            tensor = block.get_parameter(ours)
            if ours == "attention.wq.weight":
                tensor = hf_permute(tensor, config.n_heads)
            elif ours == "attention.wk.weight":
                tensor = hf_permute(tensor, config.kv_heads)
            state[f"model.layers.{i}.{theirs}"] = tensor
    half = len(state) // 2  # two shards, as large checkpoints come
    items = sorted(state.items())
    save_file({k: v.detach().contiguous() for k, v in items[:half]}, str(directory / "model-00001-of-00002.safetensors"))
    save_file({k: v.detach().contiguous() for k, v in items[half:]}, str(directory / "model-00002-of-00002.safetensors"))
    (directory / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": config.dim,
        "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads, "intermediate_size": config.ffn_hidden_dim,
        "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta, "max_position_embeddings": 256,
        "vocab_size": config.vocab_size, "bos_token_id": None, "eos_token_id": tokenizer.eot_id,
        "tie_word_embeddings": False, "rope_scaling": None,
    }))
    tokenizer.save(directory)


def test_hugging_face_llama_directory(tmp_path):
    tokenizer = train_bpe([CODE], 300)
    model = tiny_base(seed=1, vocab_size=tokenizer.vocab_size)
    write_hf_llama(tmp_path / "hf", model, tokenizer)
    base = read_base(tmp_path / "hf")
    assert base.kind == "hf" and len(base.files) == 3
    assert base.tokenizer.encode(CODE[:200]) == tokenizer.encode(CODE[:200])
    mtp = build_model(base, 2)
    tokens = torch.tensor([tokenizer.encode(CODE[:300])])
    with torch.no_grad():
        torch.testing.assert_close(mtp(tokens, heads=(0,)), model(tokens, heads=(0,)), atol=1e-5, rtol=1e-5)
    out = write_model_dir(base, mtp, tmp_path / "mtp", {})
    loaded = load_model(out)
    assert loaded.tokenizer.kind == "hf" and loaded.tokenizer.encode("def f") == tokenizer.encode("def f")
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(tokens, heads=(0,)), model(tokens, heads=(0,)), atol=1e-5, rtol=1e-5)


def test_unsupported_architectures_get_one_line(tmp_path):
    for arch in ("starcoder2", "gpt2"):
        path = tmp_path / f"{arch}.gguf"
        writer = gguf.GGUFWriter(str(path), arch)
        writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with pytest.raises(ModelFileError) as e:
            read_base(path)
        message = str(e.value)
        assert str(path) in message and repr(arch) in message and "supported: llama" in message
        assert "\n" not in message
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "gemma"}))
    with pytest.raises(ModelFileError, match=r"'gemma' is not supported; supported: llama, qwen2, qwen3"):
        read_base(tmp_path / "hf")


def test_corrupt_and_truncated_ggufs_name_the_file(gguf_base, tmp_path):
    _, source = gguf_base
    data = (quant_dir(source, "f32") / "main.gguf").read_bytes()
    cases = {"truncated.gguf": data[: len(data) // 2], "garbage.gguf": b"GGUF" + b"\xff" * 64,
             "not-gguf.bin": b"PK\x03\x04" + b"\x00" * 64}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ModelFileError) as e:
            read_base(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value), name
    with pytest.raises(ModelFileError, match="does not exist"):
        read_base(tmp_path / "missing.gguf")
