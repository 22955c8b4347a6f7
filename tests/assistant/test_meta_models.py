"""Meta's released models in use: `mtp-assistant models import`, then the torch engine and
`complete` on the imported model (a tiny checkpoint written in Meta's exact layout)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from assistant.completion.prompt import PromptBudget, build_prompt
from assistant.engine import load_engine
from assistant.engine.base import GenerationConfig
from assistant.store import ModelStore
from tests.models.meta_release import PARAMS, meta_state_dict, train_sentencepiece, write_release
from tests.near_ties import GreedyAgreement, model_logits

PROJECT = Path(__file__).resolve().parents[2]
# A near-tie for llama.cpp f16 against the torch engine: the logits of this random model are
# at most ~4.3 and the two engines' differ by up to 0.0027 (measured), a quarter of this.
F16_TOLERANCE = 0.01


def cli(*args, env, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "assistant.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=PROJECT, env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("meta")  # tokenizer.model beside 7B_tiny/, as Meta ships it
    return write_release(root / "7B_tiny", PARAMS, meta_state_dict(PARAMS), train_sentencepiece(), tokenizer_in_parent=True)


@pytest.fixture(scope="module")
def imported_home(tmp_path_factory, release):
    """A store holding the imported model as its default, via the real command."""
    home = tmp_path_factory.mktemp("home")
    env = dict(os.environ, MTP_ASSISTANT_HOME=str(home))
    result = cli("models", "import", release, "--default", env=env)
    assert "imported" in result.stdout and "7B_tiny" in result.stdout and "3 heads" in result.stdout
    return env


def test_import_adds_the_model_to_the_store_as_default(imported_home):
    listing = cli("models", "list", env=imported_home).stdout
    assert "* 7B_tiny" in listing and "sentencepiece tokens" in listing
    store = ModelStore(imported_home["MTP_ASSISTANT_HOME"])
    assert store.default_name() == "7B_tiny"
    assert [p.name for p in store.models_dir.iterdir()] == ["7B_tiny"], "staging directory left behind"


def test_import_errors_are_one_line_and_leave_the_store_alone(imported_home, release, tmp_path):
    again = cli("models", "import", release, env=imported_home, check=False)
    assert again.returncode == 1 and "already exists" in again.stderr

    broken = write_release(tmp_path / "broken", PARAMS, meta_state_dict(PARAMS), tokenizer=None)
    (broken / "params.json").unlink()
    result = cli("models", "import", broken, "--name", "broken", env=imported_home, check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "params.json: missing" in result.stderr
    assert "Traceback" not in result.stderr
    store = ModelStore(imported_home["MTP_ASSISTANT_HOME"])
    assert [p.name for p in store.models_dir.iterdir()] == ["7B_tiny"]


def test_torch_engine_speculative_greedy_equals_plain_on_the_imported_model(imported_home):
    model_dir = ModelStore(imported_home["MTP_ASSISTANT_HOME"]).resolve("default")
    engine = load_engine(model_dir, "torch")
    tok = engine.tokenizer
    assert engine.n_future == 3 and tok.kind == "sentencepiece"
    for prefix in ["def main(", "import os\n\nclass Point:\n    def __init__(self", "x = 'naïve 🐍'\n"]:
        prompt = build_prompt(tok, prefix, "\n    return x\n", PromptBudget(max_tokens=64), heal=False).ids
        assert prompt[0] == tok.bos_id and prompt[1:] == tok.encode(prefix)  # no FIM: BOS + prefix
        plain = engine.generate(prompt, GenerationConfig(max_new_tokens=24, k=1, reuse_prefix=False))
        for k in (2, 3):
            spec = engine.generate(prompt, GenerationConfig(max_new_tokens=24, k=k))
            assert spec.tokens == plain.tokens, (prefix, k)
            assert spec.text == plain.text == tok.decode(plain.tokens)


def test_prompt_for_a_tokenizer_without_fim_keeps_the_end_of_the_prefix(imported_home):
    tok = load_engine(ModelStore(imported_home["MTP_ASSISTANT_HOME"]).resolve("default"), "torch").tokenizer
    prefix = "def f(x):\n    return x\n" * 40
    prompt = build_prompt(tok, prefix, "suffix()", PromptBudget(max_tokens=16), heal=False).ids
    assert len(prompt) == 16 and prompt[0] == tok.bos_id
    assert prompt[1:] == tok.encode(prefix)[-15:]
    assert build_prompt(tok, "", "", PromptBudget(max_tokens=16)).ids == [tok.bos_id]


def test_complete_runs_on_the_imported_model(imported_home, tmp_path):
    source = tmp_path / "a.py"
    source.write_text("def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n")
    result = cli("complete", source, "--line", "2", "--col", "12", "--max-tokens", "8", env=imported_home)
    assert "forwards" in result.stderr and "prompt tokens" in result.stderr


def test_fine_tuning_the_imported_model(imported_home, code_repo, tmp_path):
    from assistant.training.trainer import TrainConfig, TrainError, train
    from models.checkpoint import load_model

    base = str(ModelStore(imported_home["MTP_ASSISTANT_HOME"]).resolve("default"))
    settings = dict(repo=str(code_repo), out_dir=str(tmp_path / "run"), base_model=base, steps=2, batch_size=2,
                    seq_len=32, warmup_steps=1, checkpoint_every=2, eval_every=2, eval_windows=2, device="cpu")
    with pytest.raises(TrainError, match="sentencepiece tokenizer has no FIM tokens: use --fim-rate 0"):
        train(TrainConfig(**settings), show_progress=False)
    final = train(TrainConfig(**settings | {"fim_rate": 0.0, "out_dir": str(tmp_path / "run2")}), show_progress=False)
    tuned = load_model(final)
    assert tuned.tokenizer.kind == "sentencepiece" and tuned.config.n_future_tokens == 3


def test_llama_cpp_engine_runs_the_imported_model(tmp_path, release):
    """An imported Meta layout exports to GGUF and runs in llama.cpp as in torch."""
    from models import gguf_export
    from models.meta_import import import_meta_checkpoint

    model_dir = import_meta_checkpoint(release, tmp_path / "imported")
    gguf_export.export_model(model_dir, "f16")
    llama, torch_engine = load_engine(model_dir, "llama", quant="f16", exact=True), load_engine(model_dir, "torch")
    tok = torch_engine.tokenizer
    # The torch engine computes in fp32 on the f16 weights, llama.cpp also rounds activations
    # to f16: a random model's greedy tokens near-tie at times (tests/near_ties.py).
    agreement = GreedyAgreement(model_logits(torch_engine.model), tolerance=F16_TOLERANCE)
    for prefix in ["def main(", "import os\nclass Point:\n    def __init__(self", "x = 'naïve'\n"]:
        prompt = build_prompt(tok, prefix, "", PromptBudget(max_tokens=64), heal=False).ids
        plain = llama.generate(prompt, GenerationConfig(max_new_tokens=24, k=1, reuse_prefix=False)).tokens
        assert llama.generate(prompt, GenerationConfig(max_new_tokens=24, k=3)).tokens == plain  # one engine: exact
        agreement.check(prompt, plain, prefix)
        reference = torch_engine.generate(prompt, GenerationConfig(max_new_tokens=24, k=1)).tokens
        agreement.check_same_until_a_near_tie(prompt, plain, reference, prefix)
    agreement.assert_few_skipped(0.1)
    llama.close()
