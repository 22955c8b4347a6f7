"""Heads trained for a plain base by self-distillation: they come to agree with the base,
the run resumes, the result decodes speculatively exactly as plain, and the CLI wires it."""

import dataclasses
import json

import pytest
import torch

from assistant.cli import main
from assistant.engine import load_engine
from assistant.engine.base import GenerationConfig
from assistant.engine.torch_engine import TorchEngine
from assistant.training.distill import greedy_pass, head_targets, soft_head_targets
from assistant.training.heads import CHECKPOINT_FILE, HeadsConfig, HeadsError, add_heads, train_heads
from models.checkpoint import load_model, save_model
from models.gguf_export import export_model, quant_dir
from models.loss import IGNORE_INDEX
from models.tokenizer import ByteTokenizer
from tests.models.test_base_import import tiny_base

CODE = "".join(
    f"def add_{i}(x, y):\n    return x + y + {i}\n\n\nclass Point{i}:\n    def __init__(self, x, y):\n"
    f"        self.x = x\n        self.y = y\n\n"
    for i in range(40)
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    source = save_model(root / "source", tiny_base(), ByteTokenizer())
    export_model(source, "f32")
    repo = root / "repo"
    repo.mkdir()
    (repo / "a.py").write_text(CODE)
    (repo / "b.py").write_text(CODE.replace("add", "sub").replace("+", "-"))
    return quant_dir(source, "f32") / "main.gguf", repo, root


def config_for(setup, run, **changes) -> HeadsConfig:
    """A run on CODE. Its targets are all of the base's greedy tokens: a random base rarely
    writes what CODE says, so the default path targets would keep few positions."""
    base, repo, root = setup
    settings = dict(base=str(base), corpus=str(repo), run_dir=str(root / run), new_heads=2, minutes=5, seq_len=64,
                    batch_size=4, lr=3e-3, warmup_steps=5, eval_windows=4, max_steps=40, device="cpu",
                    targets="base")
    return HeadsConfig(**(settings | changes))


def test_targets_are_the_base_greedy_tokens_shifted():
    tokens = torch.arange(10).view(1, 10)
    greedy = torch.arange(100, 110).view(1, 10)  # greedy[t]: the base's token for t+1
    targets = head_targets(tokens, greedy, 2, "base")
    assert targets[0, 0, :3].tolist() == [101, 102, 103]  # new head 1 predicts t+2 = greedy[t+1]
    assert targets[0, 1, :3].tolist() == [102, 103, 104]
    assert targets[0, 1, -2:].tolist() == [IGNORE_INDEX] * 2
    corpus = head_targets(tokens, greedy, 2, "corpus")
    assert corpus[0, 0, :3].tolist() == [2, 3, 4] and corpus[0, 1, -3:].tolist() == [IGNORE_INDEX] * 3


def test_path_targets_keep_the_base_tokens_only_where_the_text_took_the_base_path():
    tokens = torch.arange(10).view(1, 10)
    greedy = torch.arange(1, 11).view(1, 10)  # the base predicts every next token of the text...
    greedy[0, 3] = 99  # ...but the one after position 3
    targets = head_targets(tokens, greedy, 2, "base-path")
    full = head_targets(tokens, greedy, 2, "base")
    kept = targets != IGNORE_INDEX
    assert torch.equal(targets[kept], full[kept])
    # New head 1 at t needs x[t+1] on the path (t != 3); new head 2 also x[t+2] (t not in 2, 3).
    assert kept[0, 0].nonzero().flatten().tolist() == [0, 1, 2, 4, 5, 6, 7, 8]
    assert kept[0, 1].nonzero().flatten().tolist() == [0, 1, 4, 5, 6, 7]


def test_path_targets_train_on_the_base_own_text_and_count_only_its_path(setup):
    from assistant.training.distill import distill_forward_backward, evaluate_agreement
    from models.base_import import build_model, read_base

    torch.manual_seed(0)
    model = build_model(read_base(str(setup[0])), 2)
    # The base's own greedy continuations of random prompts: text entirely on its path.
    windows = torch.randint(0, 256, (12, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for _ in range(40):
            nxt = model.output(model.head_hidden(model.trunk(windows), 0))[:, -1].argmax(-1, keepdim=True)
            windows = torch.cat([windows, nxt], dim=1)
    train, held_out = windows[:8], windows[8:]
    trainable = [p for block in model.extra_heads for p in block.parameters()]
    optimizer = torch.optim.AdamW(trainable, lr=3e-3)
    before = evaluate_agreement(model, held_out).accuracy
    for _ in range(60):
        distill_forward_backward(model, train, "base-path")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    after = evaluate_agreement(model, held_out).accuracy
    assert (after > before + 0.2).all(), (before, after)
    # On a text that leaves the path at every token only the positions before it count.
    off_path = train.clone()
    off_path[:, 20:] = (off_path[:, 20:] + 1) % 256
    with torch.no_grad():
        _, greedy, _ = greedy_pass(model, off_path)
    counted = distill_forward_backward(model, off_path, "base-path").count
    expected = head_targets(off_path, greedy, 2, "base-path") != IGNORE_INDEX
    assert counted.tolist() == expected.sum((0, 2)).tolist() and counted[1] < counted[0] < 8 * 48


def test_soft_targets_are_the_base_distributions_shifted_like_the_greedy_tokens():
    from tests.models.test_base_import import tiny_base

    model = tiny_base()
    tokens = torch.randint(0, 261, (2, 12), generator=torch.Generator().manual_seed(0))
    z, greedy, (ids, probs) = greedy_pass(model, tokens, top_k=261)
    # With K = vocab the kept distribution is the base's softmax; its top token is the greedy one.
    full = torch.softmax(model.output(model.head_hidden(model.trunk(tokens), 0)), dim=-1)
    torch.testing.assert_close(probs, full.gather(-1, ids))
    assert torch.equal(ids[..., 0], greedy)
    _, _, (ids8, probs8) = greedy_pass(model, tokens, top_k=8)
    assert ids8.shape == (2, 12, 8) and torch.equal(ids8, ids[..., :8])
    torch.testing.assert_close(probs8.sum(-1), torch.ones(2, 12))
    soft = soft_head_targets(ids8, probs8, 2)
    targets = head_targets(tokens, greedy, 2, "base")
    assert torch.equal(soft.ids[:, 1, :10], ids8[:, 2:])  # draft head 2 at t: the base at t+2
    assert torch.equal(soft.ids[:, :, :, 0][targets != IGNORE_INDEX], targets[targets != IGNORE_INDEX])
    assert float(soft.probs[:, 1, -2:].abs().sum()) == 0.0


def test_soft_self_distillation_lowers_its_loss_and_raises_agreement(setup):
    records = []
    result = train_heads(config_for(setup, "run-soft", targets="base-soft", soft_top_k=16), show_progress=False,
                         on_step=lambda step, record: records.append(record))
    before, after = result.first_eval, result.final_eval
    for head in range(2):
        first, last = (sum(r["loss_per_head"][head] for r in part) / 5 for part in (records[:5], records[-5:]))
        assert last < first - 0.5, (first, last)  # the KL from the base's distributions
        assert after["loss_per_head"][head] < before["loss_per_head"][head] - 0.5, (before, after)
        assert after["agreement_per_head"][head] > before["agreement_per_head"][head] + 0.1, (before, after)
    assert "agreement_per_head" in records[-1]


def test_self_distillation_lowers_loss_and_raises_agreement(setup):
    result = train_heads(config_for(setup, "run-a"), show_progress=False)
    before, after = result.first_eval, result.final_eval
    assert result.steps == 40
    for head in range(2):
        assert after["loss_per_head"][head] < before["loss_per_head"][head] - 0.5, (before, after)
        assert after["agreement_per_head"][head] > before["agreement_per_head"][head] + 0.1, (before, after)
    # The base itself is untouched: only extra_heads trained.
    reference = tiny_base()
    torch.testing.assert_close(result.model.layers[-1].attention.wq.weight, reference.layers[-1].attention.wq.weight)


def test_a_run_resumes_where_it_stopped(setup):
    first = train_heads(config_for(setup, "run-b", max_steps=4), show_progress=False)
    assert first.steps == 4
    resumed = train_heads(config_for(setup, "run-b", max_steps=7), show_progress=False)
    assert resumed.steps == 7 and resumed.first_eval == first.first_eval
    state = torch.load(setup[2] / "run-b" / CHECKPOINT_FILE, weights_only=True)
    assert state["step"] == 7
    with pytest.raises(HeadsError, match="other settings"):
        train_heads(config_for(setup, "run-b", seq_len=32), show_progress=False)


def test_a_soft_target_run_resumes_and_keeps_its_setting(setup):
    soft = dict(targets="base-soft", soft_top_k=8)
    first = train_heads(config_for(setup, "run-soft-b", max_steps=3, **soft), show_progress=False)
    resumed = train_heads(config_for(setup, "run-soft-b", max_steps=5, **soft), show_progress=False)
    assert resumed.steps == 5 and resumed.first_eval == first.first_eval
    steps = [json.loads(line)["step"] for line in (setup[2] / "run-soft-b" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5]
    for other in (dict(targets="base"), dict(soft, soft_top_k=16)):
        with pytest.raises(HeadsError, match="other settings"):
            train_heads(config_for(setup, "run-soft-b", max_steps=6, **other), show_progress=False)
    with pytest.raises(HeadsError, match="soft_top_k"):
        config_for(setup, "run-soft-c", soft_top_k=0)


def test_several_corpora_mix_and_a_one_path_run_setting_still_reads(setup, tmp_path):
    from assistant.training.heads import read_corpora

    _, repo, _ = setup
    other = tmp_path / "other"
    other.mkdir()
    for i in range(30):  # enough files that the 5% validation split takes some of each root
        (other / f"m{i}.py").write_text(f"VALUE_{i} = {i}\n" * 20)
    (other / "copy.py").write_text(CODE)  # the same text as repo/a.py: trained on once
    train, val = read_corpora((str(repo), str(other)))
    assert len(train) + len(val) == 2 + 30
    assert CODE in train + val and (train + val).count(CODE) == 1
    assert any("VALUE_" in text for text in val) and any("VALUE_" in text for text in train)
    assert "VALUE_" not in val[0] and "VALUE_" in val[1]  # each root's validation texts in turn
    with pytest.raises(HeadsError, match="no-such-code"):
        read_corpora((str(repo), str(tmp_path / "no-such-code")))
    # Run settings as JSON (a list), or written with one corpus path before mixes: the same run.
    config = config_for(setup, "run-mix")
    assert config.corpus == (str(repo),)
    assert config.resumable_from(HeadsConfig(**json.loads(json.dumps(dataclasses.asdict(config)))))
    assert config.resumable_from(HeadsConfig(**(dataclasses.asdict(config) | {"corpus": str(repo)})))
    with pytest.raises(HeadsError, match="corpus"):
        config_for(setup, "run-mix", corpus=())


def test_speculative_equals_plain_on_the_result(setup, tmp_path):
    out, result = add_heads(config_for(setup, "run-c"), tmp_path / "mtp", show_progress=False)
    loaded = load_model(out)
    assert loaded.config.n_future_tokens == 3
    assert loaded.provenance["heads_training"]["steps"] == 40
    engine = TorchEngine(loaded.model, loaded.tokenizer)
    # (A random base's greedy continuations are far from the corpus the heads learnt on, so
    # how many drafts it accepts says little here; the validation in BENCHMARKS.md measures it.)
    for start in (0, 300, 900):
        prompt = loaded.tokenizer.encode(CODE[start : start + 50])
        plain = engine.generate(prompt, GenerationConfig(max_new_tokens=32, k=1))
        fast = engine.generate(prompt, GenerationConfig(max_new_tokens=32, k=3))
        assert fast.tokens == plain.tokens
        assert sum(fast.stats.draft_proposed) > 0


def test_cli_adds_heads_into_the_store(setup, tmp_path, monkeypatch, capsys):
    base, repo, _ = setup
    monkeypatch.setenv("MTP_ASSISTANT_HOME", str(tmp_path / "home"))
    code = main(["models", "add-heads", str(base), "--data", str(repo), "--heads", "2", "--max-steps", "2",
                 "--seq-len", "32", "--batch-size", "2", "--name", "tiny-mtp", "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    assert "added 2 heads" in out and "tiny-mtp" in out
    assert "read their corpus" not in out  # 2 small steps: a fraction of one pass
    default_run = json.loads((tmp_path / "home" / "runs" / "add-heads-tiny-mtp" / "heads_config.json").read_text())
    assert default_run["targets"] == HeadsConfig.targets == "base-path"
    model_dir = tmp_path / "home" / "models" / "tiny-mtp"
    assert json.loads((model_dir / "config.json").read_text())["model"]["n_future_tokens"] == 3
    assert (model_dir / "gguf" / "f32" / "head-3.gguf").is_file()
    code = main(["models", "add-heads", str(base), "--data", str(repo), "--heads", "2", "--max-steps", "1",
                 "--seq-len", "32", "--batch-size", "2", "--name", "tiny-soft", "--device", "cpu",
                 "--targets", "base-soft", "--soft-top-k", "8", "--repo", str(repo / "..")])
    assert code == 0
    run_config = json.loads((tmp_path / "home" / "runs" / "add-heads-tiny-soft" / "heads_config.json").read_text())
    assert (run_config["targets"], run_config["soft_top_k"]) == ("base-soft", 8)
    assert run_config["corpus"] == [str(repo), str(repo / "..")]  # both, in order
    code = main(["models", "add-heads", str(base), "--name", "no-corpus"])
    assert code == 1 and "--repo PATH or --data DIR" in capsys.readouterr().err
    assert run_config["lr"] == HeadsConfig.lr  # an unset --lr is the settings' default
    small = tmp_path / "small"
    small.mkdir()
    (small / "one.py").write_text(CODE[:300])
    code = main(["models", "add-heads", str(base), "--data", str(small), "--heads", "2", "--max-steps", "6",
                 "--seq-len", "32", "--batch-size", "4", "--name", "tiny-small", "--device", "cpu"])
    assert code == 0
    # 6 x 4 windows of 32 tokens read the 300 tokens ~2.5 times: the CLI says what that costs.
    assert "note: the heads read their corpus 2." in capsys.readouterr().out
    code = main(["models", "add-heads", str(tmp_path / "nope.gguf"), "--data", str(repo), "--name", "other"])
    assert code == 1 and "nope.gguf: does not exist" in capsys.readouterr().err


def test_heads_that_read_the_final_hidden_state_train_and_decode_exactly(setup, tmp_path):
    """A qwen2 base, whose llama.cpp graph captures no block input: the new heads read its
    final normed hidden state, learn to agree with it, and speculative equals plain."""
    from tests.models.test_qwen_import import tiny_qwen, write_qwen_gguf

    path = tmp_path / "qwen2.gguf"
    write_qwen_gguf(path, tiny_qwen("qwen2", True), "qwen2", True)
    out, result = add_heads(config_for(setup, "run-final", base=str(path)), tmp_path / "mtp", show_progress=False)
    assert result.model.config.heads_read_final
    before, after = result.first_eval, result.final_eval
    for head in range(2):
        assert after["loss_per_head"][head] < before["loss_per_head"][head] - 0.5, (before, after)
        assert after["agreement_per_head"][head] > before["agreement_per_head"][head] + 0.1, (before, after)
    loaded = load_model(out)
    assert loaded.config.heads_read_final
    engine = TorchEngine(loaded.model, loaded.tokenizer)
    # The llama.cpp engine serves it too: qwen2 heads, fed llama.cpp's final hidden state.
    llama = load_engine(out, engine="llama", threads=1, exact=True)
    for start in (0, 500):
        prompt = loaded.tokenizer.encode(CODE[start : start + 50])
        plain = engine.generate(prompt, GenerationConfig(max_new_tokens=32, k=1))
        assert engine.generate(prompt, GenerationConfig(max_new_tokens=32, k=3)).tokens == plain.tokens
        llama_plain = llama.generate(prompt, GenerationConfig(max_new_tokens=32, k=1)).tokens
        assert llama.generate(prompt, GenerationConfig(max_new_tokens=32, k=3)).tokens == llama_plain


def test_a_stop_request_ends_the_run_with_a_checkpoint_it_resumes_from(setup):
    import threading

    from assistant.training.heads import HeadsStopped

    stop = threading.Event()

    def on_step(step, record):
        if step == 3:
            stop.set()

    with pytest.raises(HeadsStopped, match="stopped at step 3") as e:
        train_heads(config_for(setup, "run-stop", max_steps=6), show_progress=False, on_step=on_step, stop=stop)
    assert e.value.step == 3
    assert torch.load(setup[2] / "run-stop" / CHECKPOINT_FILE, weights_only=True)["step"] == 3
    resumed = train_heads(config_for(setup, "run-stop", max_steps=6), show_progress=False)
    assert resumed.steps == 6


def test_ctrl_c_on_the_cli_stops_with_a_checkpoint_and_the_same_command_resumes(setup, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    base, repo, _ = setup
    home = tmp_path / "home"
    env = dict(os.environ, MTP_ASSISTANT_HOME=str(home), OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    argv = [sys.executable, "-m", "assistant.cli", "models", "add-heads", str(base), "--data", str(repo), "--heads",
            "2", "--seq-len", "32", "--batch-size", "2", "--name", "tiny-mtp", "--device", "cpu"]
    metrics = home / "runs" / "add-heads-tiny-mtp" / "metrics.jsonl"

    def train_steps() -> list[int]:
        lines = metrics.read_text().splitlines() if metrics.is_file() else []
        return [r["step"] for r in map(json.loads, lines) if r["split"] == "train"]

    proc = subprocess.Popen([*argv, "--max-steps", "100000"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 300
    while len(train_steps()) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "the same command resumes it" in err and "Traceback" not in err, err
    stopped_at = torch.load(metrics.parent / CHECKPOINT_FILE, weights_only=True)["step"]
    assert stopped_at == train_steps()[-1] >= 3, "the checkpoint is the last step done: nothing is lost"
    done = subprocess.run([*argv, "--max-steps", str(stopped_at + 2)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and f"{stopped_at + 2} steps" in done.stdout, done.stderr
    assert train_steps() == list(range(1, stopped_at + 3)), "every step once"
