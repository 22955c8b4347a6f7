"""qwen2 and qwen3 bases with heads on the llama.cpp engine: head GGUFs of the base's own
architecture, speculative == plain in exact mode, and every head's predictions those of the
torch model up to near-ties. qwen2's heads read the final normed hidden state (llama.cpp's
embeddings), qwen3's the input of the last block, as in training."""

import gguf
import numpy as np
import pytest
import torch

from assistant.engine import load_engine
from assistant.engine.base import GenerationConfig
from assistant.engine.llama_engine import LlamaEngine, LlamaSettings
from models.base_import import build_model, read_base, write_model_dir
from models.checkpoint import ModelFileError
from models.gguf_export import quantize_file
from models.tokenizer import ByteTokenizer
from tests.models.test_base_import import CODE
from tests.models.test_qwen_import import LAYOUTS, tiny_qwen, write_qwen_gguf
from tests.near_ties import GreedyAgreement

PROMPTS = [CODE[s : s + 60] for s in (0, 170, 420, 650)]


def qwen_base(arch: str, tied: bool, **kwargs):
    """tiny_qwen with blocks that outweigh the token's own embedding in the logits, which a
    tied base otherwise mostly echoes: the heads' argmax then hangs on their attention and
    feed-forward (q/k rows in the wrong RoPE order fail the comparisons below)."""
    model = tiny_qwen(arch, tied, **kwargs)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("wo.weight", "w2.weight")):
                p.mul_(6)
    return model


def mtp_dir(root, layout: str, quant: str = "f32", **build):
    """A model directory of a tiny base of the layout (at quant) with 3 new heads, untrained:
    copies of the base's last block, whose drafts the base accepts now and then."""
    arch, tied = LAYOUTS[layout]
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{layout}.gguf"
    write_qwen_gguf(path, qwen_base(arch, tied), arch, tied)
    if quant != "f32":
        quantize_file(path, root / f"{layout}-{quant}.gguf", quant)
        path = root / f"{layout}-{quant}.gguf"
    base = read_base(path)
    model = build_model(base, 3, **build)
    return write_model_dir(base, model, root / f"mtp-{layout}-{quant}", {}), model


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def qwen_mtp(request, tmp_path_factory):
    out, model = mtp_dir(tmp_path_factory.mktemp(request.param), request.param)
    return request.param, out, model


def test_heads_are_one_block_models_of_the_base_architecture(qwen_mtp):
    layout, out, model = qwen_mtp
    arch = LAYOUTS[layout][0]
    reader = gguf.GGUFReader(str(out / "gguf" / "f32" / "head-3.gguf"))
    assert reader.fields["general.architecture"].contents() == arch
    names = {t.name for t in reader.tensors}
    extra = {"qwen2": {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"},
             "qwen3": {"blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight"}}[arch]
    assert extra <= names and not any(n.startswith("blk.1.") for n in names)
    if arch == "qwen3":  # head size 24 with dim 64 and 4 heads
        assert reader.fields["qwen3.attention.key_length"].contents() == model.config.head_dim == 24


def test_the_engine_captures_what_the_heads_were_trained_on(qwen_mtp):
    """z: the input of the last block (qwen3), or the final normed hidden state (qwen2),
    which is what training's base_pass hands the heads."""
    layout, out, model = qwen_mtp
    assert model.config.heads_read_final == (LAYOUTS[layout][0] == "qwen2")
    engine = LlamaEngine(out, LlamaSettings(threads=1, exact=True))
    tokens = ByteTokenizer().encode(CODE[:100])
    with torch.no_grad():
        z = model.trunk(torch.tensor([tokens]))
        expected = (model.head_hidden(z, 0) if model.config.heads_read_final else z)[0].numpy()
    captured = engine.capture_z(tokens)
    assert np.abs(captured - expected).max() <= 1e-4 * np.abs(expected).max()


def assert_logits_match(engine: LlamaEngine, model, tokens: list[int]) -> None:
    """Head 1's logits (main.gguf) and every other head's (head-i.gguf, fed the captured z)
    are the torch model's to 1e-3 of their spread, every position. (Argmax comparisons alone
    can miss a misread block: a tied random base's argmax mostly echoes its input token.)
    Leaves the engine's caches in no state a generation may reuse: use a fresh engine."""
    step = engine._step
    main = step.run(tokens, 0, len(tokens), capture=True).next_logits()  # k = T: every row
    z = step.z[: len(tokens)].copy()
    got = [main, *(head.decode(0, z, all_logits=True) for head in step.heads)]
    with torch.no_grad():
        expected = model(torch.tensor([tokens]))[0].numpy()  # (n_future, T, V)
    for head, logits in enumerate(got):
        spread = float(expected[head].std())
        assert spread > 1  # wide enough for the comparison to mean something
        error = float(np.abs(logits - expected[head]).max())
        assert error <= 1e-3 * spread, (head, error, spread)


def test_head_logits_are_the_torch_heads(qwen_mtp):
    _, out, model = qwen_mtp
    assert_logits_match(LlamaEngine(out, LlamaSettings(threads=1, exact=True)), model, ByteTokenizer().encode(CODE[:120]))


def test_head_predictions_agree_with_the_torch_heads(qwen_mtp):
    layout, out, model = qwen_mtp
    engine = LlamaEngine(out, LlamaSettings(threads=1, exact=True))
    for head in range(4):

        def logits(tokens, head=head):
            with torch.no_grad():
                return model(torch.tensor([tokens]), heads=(head,))[0, 0].float()

        # f32 both sides; the logits are O(30): a margin of 1e-2 is well beyond rounding
        agreement = GreedyAgreement(logits, tolerance=1e-2)
        for text in PROMPTS:
            tokens = ByteTokenizer().encode(text)
            agreement.check_predictions(tokens, engine.head_predictions(tokens)[head], (layout, head))
        agreement.assert_few_skipped(0.05)


@pytest.mark.parametrize("layout,quant", [(layout, q) for layout in sorted(LAYOUTS) for q in ("f32", "q8_0")])
def test_speculative_greedy_equals_plain_in_exact_mode(layout, quant, tmp_path):
    out, _ = mtp_dir(tmp_path, layout, quant)
    engine = load_engine(out, engine="llama", threads=1, exact=True)
    assert engine.label == f"llama.cpp {quant}"
    proposed = accepted = 0
    for text in PROMPTS:
        prompt = ByteTokenizer().encode(text)
        plain = engine.generate(prompt, GenerationConfig(max_new_tokens=40, k=1, reuse_prefix=False)).tokens
        assert len(plain) == 40
        for k in (1, 2, 4):
            for reuse in (False, True):
                spec = engine.generate(prompt, GenerationConfig(max_new_tokens=40, k=k, reuse_prefix=reuse))
                assert spec.tokens == plain, (layout, quant, text, k, reuse)
                proposed += sum(spec.stats.draft_proposed)
                accepted += sum(spec.stats.draft_accepted)
    assert proposed > 0
    # Untrained heads copy the last block, so they draft the token the base would pick a step
    # earlier: a tied random base often repeats one, and the drafts are accepted; the untied
    # one does not on these prompts, so there rejected drafts alone are exercised.
    assert accepted > 0 or not LAYOUTS[layout][1], (proposed, accepted)


def test_qwen2_heads_that_read_a_block_input_fall_back_to_torch(tmp_path):
    """llama.cpp's qwen2 graph keeps no block input (asking for one aborts the process): such
    heads are refused by name before any context exists, and auto serves them with torch."""
    out, _ = mtp_dir(tmp_path, "qwen2-tied", heads_read_final=False)
    with pytest.raises(ModelFileError, match="qwen2 graph keeps no block input"):
        LlamaEngine(out, LlamaSettings(threads=1))
    engine = load_engine(out, threads=1)
    assert engine.label.startswith("torch") and len(engine.warnings) == 1
    assert "serving with the torch engine" in engine.warnings[0]


@pytest.mark.parametrize("layout", ["qwen2-tied", "qwen3-untied"])
def test_a_hugging_face_qwen_base_exported_by_us_runs_in_llama_cpp(layout, tmp_path):
    """`models export` of a qwen model directory writes main.gguf and the heads in the qwen
    architecture (biases, q/k norms, rotate-halves q/k rows), not as llama blocks that would
    drop them: every head predicts what the torch model does."""
    from models.gguf_export import export_model
    from models.tokenizer import train_bpe
    from tests.models.test_qwen_import import write_hf_qwen

    arch, tied = LAYOUTS[layout]
    tokenizer = train_bpe([CODE], 300)
    write_hf_qwen(tmp_path / "hf", qwen_base(arch, tied, seed=2, vocab_size=tokenizer.vocab_size), arch, tied, tokenizer)
    base = read_base(tmp_path / "hf")
    model = build_model(base, 2)
    out = write_model_dir(base, model, tmp_path / "mtp", {})
    export_model(out, "f32")
    assert_logits_match(LlamaEngine(out, LlamaSettings(threads=1, exact=True)), model, tokenizer.encode(CODE[:200]))
    engine = LlamaEngine(out, LlamaSettings(threads=1, exact=True))
    for head in range(3):

        def logits(tokens, head=head):
            with torch.no_grad():
                return model(torch.tensor([tokens]), heads=(head,))[0, 0].float()

        agreement = GreedyAgreement(logits, tolerance=1e-2)
        for text in PROMPTS:
            tokens = tokenizer.encode(text)
            agreement.check_predictions(tokens, engine.head_predictions(tokens)[head], (layout, head))
        agreement.assert_few_skipped(0.05)
