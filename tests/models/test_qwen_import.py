"""Qwen2 (q/k/v biases, tied embeddings) and Qwen3 (per-head q/k RMSNorm, a head size other
than dim / n_heads) bases: tiny GGUFs in llama.cpp's exact tensor naming for each
architecture and Hugging Face directories of Qwen2ForCausalLM / Qwen3ForCausalLM, read
into our transformer, whose logits and greedy tokens are llama.cpp's on the same file."""

import json

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from models.base_import import build_model, hf_permute, read_base, write_model_dir
from models.checkpoint import load_model
from models.config import ModelConfig
from models.gguf_export import _vocab
from models.tokenizer import ByteTokenizer
from models.transformer import MTPTransformer
from tests.models.test_base_import import CODE
from tests.near_ties import GreedyAgreement, model_logits

LAYOUTS = {  # name: (architecture, tied embeddings)
    "qwen2-tied": ("qwen2", True),
    "qwen3-tied": ("qwen3", True),
    "qwen3-untied": ("qwen3", False),
}


def tiny_qwen(arch: str, tied: bool, seed: int = 0, vocab_size: int = 261) -> MTPTransformer:
    """A plain (one-head) model of the architecture with spread-out logits, its
    architecture's extra weights far from their neutral values so a misread shows."""
    torch.manual_seed(seed)
    flags = {"qkv_bias": True} if arch == "qwen2" else {"qk_norm": True, "attn_head_dim": 24}
    config = ModelConfig(dim=64, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=vocab_size, n_future_tokens=1,
                         max_seq_len=256, rope_theta=1000000.0, norm_eps=1e-6, **flags)
    model = MTPTransformer(config).eval()
    with torch.no_grad():
        model.tok_embeddings.weight.mul_(20)
        model.output.weight.mul_(30)
        if tied:
            model.tok_embeddings.weight.copy_(model.output.weight)
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn(p.shape) * 0.5)
            elif name.endswith(("q_norm.weight", "k_norm.weight")):
                p.copy_(1 + 0.5 * torch.randn(p.shape))
            elif name.endswith(("wo.weight", "wq.weight", "wk.weight")):
                p.mul_(8)  # attention that shapes the logits, so that its details must be right
    return model


def _halves(name: str, tensor: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Our adjacent-pair q/k rows in Hugging Face's (and llama.cpp's qwen) rotate-halves order."""
    heads = {"wq": config.n_heads, "wk": config.kv_heads, "q_norm": 1, "k_norm": 1}
    key = name.split(".")[-2]
    if key not in heads:
        return tensor
    return hf_permute(tensor.reshape(tensor.shape[0], -1), heads[key]).reshape(tensor.shape)


GGUF_BLOCK = {"attention_norm.weight": "attn_norm.weight", "attention.wq.weight": "attn_q.weight",
              "attention.wk.weight": "attn_k.weight", "attention.wv.weight": "attn_v.weight",
              "attention.wo.weight": "attn_output.weight", "ffn_norm.weight": "ffn_norm.weight",
              "feed_forward.w1.weight": "ffn_gate.weight", "feed_forward.w2.weight": "ffn_down.weight",
              "feed_forward.w3.weight": "ffn_up.weight", "attention.wq.bias": "attn_q.bias",
              "attention.wk.bias": "attn_k.bias", "attention.wv.bias": "attn_v.bias",
              "attention.q_norm.weight": "attn_q_norm.weight", "attention.k_norm.weight": "attn_k_norm.weight"}
HF_BLOCK = {"attention_norm.weight": "input_layernorm.weight", "attention.wq.weight": "self_attn.q_proj.weight",
            "attention.wk.weight": "self_attn.k_proj.weight", "attention.wv.weight": "self_attn.v_proj.weight",
            "attention.wo.weight": "self_attn.o_proj.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
            "feed_forward.w1.weight": "mlp.gate_proj.weight", "feed_forward.w2.weight": "mlp.down_proj.weight",
            "feed_forward.w3.weight": "mlp.up_proj.weight", "attention.wq.bias": "self_attn.q_proj.bias",
            "attention.wk.bias": "self_attn.k_proj.bias", "attention.wv.bias": "self_attn.v_proj.bias",
            "attention.q_norm.weight": "self_attn.q_norm.weight", "attention.k_norm.weight": "self_attn.k_norm.weight"}


def write_qwen_gguf(path, model: MTPTransformer, arch: str, tied: bool) -> None:
    """The GGUF convert_hf_to_gguf.py writes for the architecture (q/k kept in rotate-halves
    order: llama.cpp runs these with NEOX RoPE), with a byte vocabulary."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny {arch}")
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.dim)
    writer.add_block_count(config.n_layers)
    writer.add_feed_forward_length(config.ffn_hidden_dim)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.kv_heads)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    if arch == "qwen3":
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    writer.add_file_type(0)
    tokenizer = ByteTokenizer()
    texts, scores, types = _vocab(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(texts)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(tokenizer.eot_id)
    writer.add_eos_token_id(tokenizer.eot_id)
    writer.add_add_bos_token(False)
    state = model.state_dict()
    tensors = {"token_embd.weight": state["tok_embeddings.weight"], "output_norm.weight": state["norm.weight"]}
    if not tied:
        tensors["output.weight"] = state["output.weight"]
    for i in range(config.n_layers):
        for ours, theirs in GGUF_BLOCK.items():
            if f"layers.{i}.{ours}" in state:
                tensors[f"blk.{i}.{theirs}"] = _halves(ours, state[f"layers.{i}.{ours}"], config)
    for name, tensor in tensors.items():
        writer.add_tensor(name, tensor.detach().float().contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_hf_qwen(directory, model: MTPTransformer, arch: str, tied: bool, tokenizer) -> None:
    config = model.config
    directory.mkdir()
    state = {"model.embed_tokens.weight": model.tok_embeddings.weight, "model.norm.weight": model.norm.weight}
    if not tied:
        state["lm_head.weight"] = model.output.weight
    for i, block in enumerate(model.layers):
        for ours, tensor in block.state_dict().items():
            state[f"model.layers.{i}.{HF_BLOCK[ours]}"] = _halves(ours, tensor, config)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    hf = {"architectures": [f"{arch.capitalize()}ForCausalLM"], "model_type": arch, "hidden_size": config.dim,
          "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
          "num_key_value_heads": config.kv_heads, "intermediate_size": config.ffn_hidden_dim,
          "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta, "max_position_embeddings": 256,
          "vocab_size": config.vocab_size, "bos_token_id": None, "eos_token_id": tokenizer.eot_id,
          "tie_word_embeddings": tied, "rope_scaling": None, "use_sliding_window": False}
    if arch == "qwen3":
        hf.update(head_dim=config.head_dim, attention_bias=False)
    (directory / "config.json").write_text(json.dumps(hf))
    tokenizer.save(directory)


def llama_cpp_logits(path, tokens: list[int]) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=256, n_batch=256, logits_all=True, n_threads=1, verbose=False)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)])
    finally:
        llm.close()


def llama_cpp_greedy(path, prompts: list[list[int]], n: int) -> list[list[int]]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False)
    try:
        out = []
        for prompt in prompts:
            llm.reset()
            tokens = []
            for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
                tokens.append(int(token))
                if len(tokens) == n:
                    break
            out.append(tokens)
        return out
    finally:
        llm.close()


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def qwen_gguf(request, tmp_path_factory):
    arch, tied = LAYOUTS[request.param]
    model = tiny_qwen(arch, tied)
    path = tmp_path_factory.mktemp(request.param) / f"{request.param}.gguf"
    write_qwen_gguf(path, model, arch, tied)
    return model, path, arch


def test_our_forward_is_llama_cpps_on_the_same_gguf(qwen_gguf):
    model, path, arch = qwen_gguf
    base = read_base(path)
    assert base.metadata["architecture"] == arch and base.config.head_dim == model.config.head_dim
    mtp = build_model(base, 2)
    tokens = ByteTokenizer().encode(CODE[:150])
    with torch.no_grad():
        ours = mtp(torch.tensor([tokens]), heads=(0,))[0, 0]
        torch.testing.assert_close(ours, model(torch.tensor([tokens]), heads=(0,))[0, 0], atol=1e-4, rtol=1e-4)
    theirs = torch.from_numpy(llama_cpp_logits(path, tokens))
    spread = float(ours.std())
    assert spread > 3  # logits wide enough for the comparison to mean something
    assert float((ours - theirs).abs().max()) < 1e-3 * spread, float((ours - theirs).abs().max())
    agreement = GreedyAgreement(model_logits(mtp), tolerance=1e-2)
    prompts = [ByteTokenizer().encode(CODE[s : s + 40]) for s in (0, 300, 700)]
    for prompt, greedy in zip(prompts, llama_cpp_greedy(path, prompts, 20)):
        assert len(greedy) == 20
        agreement.check(prompt, greedy, arch)
    agreement.assert_few_skipped(0.1)


def test_the_qwen_specific_weights_matter(qwen_gguf):
    """The test above can fail: reading the file without the biases (qwen2) or with the q/k
    norm weights in another order (qwen3) moves the logits far beyond its tolerance."""
    model, path, arch = qwen_gguf
    base = read_base(path)
    tokens = torch.tensor([ByteTokenizer().encode(CODE[:150])])
    with torch.no_grad():
        right = build_model(base, 1)(tokens, heads=(0,))
        for name in list(base.state):
            if name.endswith(".bias"):
                base.state[name] = torch.zeros_like(base.state[name])
            elif name.endswith("q_norm.weight"):
                base.state[name] = base.state[name].flip(0)
        wrong = build_model(base, 1)(tokens, heads=(0,))
    assert float((right - wrong).abs().max()) > 0.1 * float(right.std())


def test_qwen_heads_read_the_final_hidden_state_where_llama_cpp_captures_no_block_input(qwen_gguf, tmp_path):
    model, path, arch = qwen_gguf
    base = read_base(path)
    mtp = build_model(base, 2)
    assert mtp.config.heads_read_final == (arch == "qwen2")
    tokens = torch.tensor([ByteTokenizer().encode(CODE[:100])])
    with torch.no_grad():
        logits = mtp(tokens)  # (1, 3, T, V)
        z = mtp.trunk(tokens)
        final = mtp.head_hidden(z, 0)
        reads = final if mtp.config.heads_read_final else z
        torch.testing.assert_close(logits[0, 2], mtp.output(mtp.block_hidden(reads, 2))[0])
        cache = mtp.new_cache(max_len=128)
        cached = mtp.forward_cached(tokens, 0, cache, heads=(0, 1, 2))
        torch.testing.assert_close(cached, logits, atol=1e-4, rtol=1e-4)
    # The model directory keeps the base GGUF unchanged as the llama.cpp engine's main model,
    # beside the heads (tests/assistant/engine/test_llama_qwen_heads.py runs them).
    out = write_model_dir(base, mtp, tmp_path / "mtp", {})
    assert (out / "gguf" / "f32" / "main.gguf").read_bytes() == path.read_bytes()
    assert sorted(p.name for p in (out / "gguf" / "f32").glob("head-*.gguf")) == ["head-2.gguf", "head-3.gguf"]
    loaded = load_model(out)
    assert loaded.config.heads_read_final == mtp.config.heads_read_final
    assert loaded.tokenizer.encode("def f") == base.tokenizer.encode("def f")  # llama.cpp on the kept base
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(tokens), logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_hugging_face_qwen_directories(layout, tmp_path):
    from models.tokenizer import train_bpe

    arch, tied = LAYOUTS[layout]
    tokenizer = train_bpe([CODE], 300)
    model = tiny_qwen(arch, tied, seed=2, vocab_size=tokenizer.vocab_size)
    write_hf_qwen(tmp_path / "hf", model, arch, tied, tokenizer)
    base = read_base(tmp_path / "hf")
    assert base.config.qkv_bias == (arch == "qwen2") and base.config.qk_norm == (arch == "qwen3")
    tokens = torch.tensor([tokenizer.encode(CODE[:300])])
    with torch.no_grad():
        torch.testing.assert_close(build_model(base, 1)(tokens, heads=(0,)), model(tokens, heads=(0,)),
                                   atol=1e-4, rtol=1e-4)


def test_existing_configs_are_written_as_before():
    config = ModelConfig(dim=64, n_layers=4, n_heads=4)
    assert set(config.to_dict()) == {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
                                     "ffn_dim_multiplier", "norm_eps", "rope_theta", "n_future_tokens", "max_seq_len"}
    qwen3 = config.replace(qk_norm=True, attn_head_dim=24)
    assert ModelConfig.from_dict(qwen3.to_dict()) == qwen3 and qwen3.head_dim == 24
