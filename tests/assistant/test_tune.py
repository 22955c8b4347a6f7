"""`tune`: a tiny real base model tuned on tiny repositories made in the test."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from assistant.store import ModelStore, StoreError
from assistant.training.corpus import CorpusConfig, CorpusError, build_corpus
from assistant.training.metrics import read_metrics
from assistant.training.trainer import TrainConfig, train, training_texts
from assistant.training.tune import TUNE_DIR, TuneConfig, TuneError, model_name, report_table, tune
from models.checkpoint import load_model, read_config, save_model
from models.tokenizer import ByteTokenizer
from models.transformer import MTPTransformer
from tests.assistant.engine.helpers import random_model, repetitive_code

PROJECT = Path(__file__).resolve().parents[2]
# Seconds on one core: 4 x 64-byte windows a step, a short report.
TINY = dict(steps=12, batch_size=4, seq_len=64, lr=3e-3, next_line_cases=6, speed_prompts=3, speed_tokens=12,
            device="cpu", show_progress=False)
TINY_CLI = ["--batch-size", "4", "--seq-len", "64", "--lr", "3e-3", "--next-line-cases", "4", "--speed-prompts", "2",
            "--device", "cpu", "--quiet"]


def make_repo(path: Path, files: int = 8) -> Path:
    path.mkdir(parents=True)
    for i in range(files):
        (path / f"mod{i}.py").write_text(repetitive_code(6).replace("add", f"op{i}").replace("Point", f"P{i}x"))
    return path


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("base") / "base", random_model(seed=0), ByteTokenizer())


@pytest.fixture
def store(tmp_path, base_dir) -> ModelStore:
    """A store whose default (its 'shipped' model) is the tiny random base."""
    return ModelStore(tmp_path / "home", shipped_dir=base_dir)


def test_tune_reports_before_and_after_and_binds_the_model(tmp_path, store, base_dir):
    repo = make_repo(tmp_path / "my repo")
    logs = []
    result = tune(TuneConfig(repo=str(repo), **TINY), store, log=logs.append)

    name = model_name(repo.resolve())
    assert result.name == name and result.model_dir == store.models_dir / name
    assert name.startswith("my-repo-")
    # Bound to the repository, and only there; the default stays what it was.
    assert store.model_for(repo / "mod0.py") == result.model_dir
    assert store.model_for(tmp_path) == base_dir == store.resolve(None)
    assert not (store.root / TUNE_DIR / name).exists(), "the finished run's working directory is removed"

    report = json.loads((result.model_dir / "tune_report.json").read_text())
    corpus = build_corpus(repo, CorpusConfig(val_fraction=0.2))
    assert set(report["files"]) == {f.path for f in corpus.train + corpus.val}
    assert report["corpus"]["val"]["files"] == len(corpus.val) >= 1
    for side in ("before", "after"):
        m = report[side]
        assert len(m["accuracy_per_head"]) == 4 and len(m["loss_per_head"]) == 4
        assert m["next_line"]["cases"] == 6 and 0 <= m["next_line"]["exact_match"] <= 1
        assert m["tokens_per_forward"]["k"] == 4 and m["tokens_per_forward"]["value"] >= 1
        assert m["latency_ms"]["p50"] > 0 and m["latency_ms"]["p95"] >= m["latency_ms"]["p50"]
    # A random base learns the repository's bytes within a dozen steps.
    assert report["after"]["val_loss"] < report["before"]["val_loss"]
    assert report["after"]["accuracy_per_head"][0] > report["before"]["accuracy_per_head"][0] + 0.1
    assert report["run"]["best_step"] is not None and report["run"]["steps"] == 12
    assert report["started_from"] == "base model" and report["changes"] is None

    steps = [r["step"] for r in read_metrics(result.model_dir / "metrics.jsonl") if r["split"] == "train"]
    assert steps == list(range(1, 13))
    _, _, provenance = read_config(result.model_dir)
    assert provenance["trained_by"] == "mtp-assistant tune" and provenance["tune"]["repo"] == str(repo.resolve())
    card = json.loads((result.model_dir / "card.json").read_text())
    assert card["heldout_heads"]["accuracy_per_head"] == report["after"]["accuracy_per_head"]
    table = report_table(report)
    assert "| metric | before | after |" in table and "top-1 accuracy, heads 1/2/3/4" in table
    assert table in (result.model_dir / "CARD.md").read_text()
    load_model(result.model_dir)  # whole


def test_too_little_code_gets_a_message_instead_of_a_run(tmp_path, store):
    one_file = tmp_path / "one"
    one_file.mkdir()
    (one_file / "a.py").write_text(repetitive_code(20))
    with pytest.raises(TuneError, match=r"too little code to tune on \(1 code file, .*at least 2 files"):
        tune(TuneConfig(repo=str(one_file), **TINY), store)
    small = tmp_path / "small"
    small.mkdir()
    for name in ("a.py", "b.py", "c.py"):
        (small / name).write_text(f"def {name[0]}():\n    return 1\n")
    with pytest.raises(TuneError, match=r"too little code.*256 tokens to train on \(4 windows of 64\)"):
        tune(TuneConfig(repo=str(small), **TINY), store)
    assert store.list()[0].shipped and not store.bindings()  # nothing was made


def test_the_longest_bound_root_serves_a_path(tmp_path, store, base_dir):
    for name in ("outer", "inner"):
        store.add(base_dir, name)
    outer, inner = tmp_path / "outer", tmp_path / "outer" / "pkg" / "inner"
    inner.mkdir(parents=True)
    (tmp_path / "outer2").mkdir()
    store.bind(outer, "outer")
    store.bind(inner, "inner")
    assert store.model_for(inner / "x.py") == store.models_dir / "inner"
    assert store.model_for(inner) == store.models_dir / "inner"
    assert store.model_for(outer / "pkg" / "y.py") == store.models_dir / "outer"
    assert store.model_for(tmp_path / "outer2" / "z.py") == base_dir, "a sibling sharing a prefix is not inside"
    assert store.model_for(None) == base_dir
    # Bindings are stored atomically in settings.json beside the default.
    assert json.loads(store.settings_path.read_text())["bindings"] == {str(outer.resolve()): "outer",
                                                                       str(inner.resolve()): "inner"}
    assert store.unbind(inner) == "inner"
    assert store.model_for(inner / "x.py") == store.models_dir / "outer"
    with pytest.raises(StoreError, match="no model is bound"):
        store.unbind(inner)
    with pytest.raises(StoreError, match="no model named"):
        store.bind(inner, "missing")
    store.remove("outer")  # removing a model drops its bindings
    assert store.bindings() == {} and store.model_for(outer / "a.py") == base_dir


def test_a_retune_starts_from_the_tuned_model_and_weights_what_changed(tmp_path, store):
    repo = make_repo(tmp_path / "repo")
    first = tune(TuneConfig(repo=str(repo), **TINY), store)
    corpus = build_corpus(repo, CorpusConfig(val_fraction=0.2))
    edited = corpus.train[0].path
    (repo / edited).write_text((repo / edited).read_text() + "\n\ndef edited():\n    return 'new'\n")
    (repo / "brand_new.py").write_text(repetitive_code(5).replace("add", "fresh"))

    second = tune(TuneConfig(repo=str(repo), **TINY | {"steps": 6}), store)
    report = second.report
    assert second.name == first.name and report["started_from"] == "last tune"
    assert report["base"] == str(store.models_dir / first.name)
    changes = report["changes"]
    assert (changes["new"], changes["edited"], changes["removed"]) == (1, 1, 0)
    assert set(changes["changed_files"]) == {edited, "brand_new.py"} and 0 < changes["changed_share"] < 0.5
    weights = report["train"]["file_weights"]
    assert weights == {path: 4 for path in changes["changed_train_files"]} and edited in weights
    # The trainer reads a weighted file that many times an epoch.
    corpus = build_corpus(repo, CorpusConfig(val_fraction=0.2))
    texts = training_texts(corpus, weights)
    assert len(texts) == len(corpus.train) + 3 * len(weights)
    assert texts.count((repo / edited).read_text()) == 4

    logs = []
    assert tune(TuneConfig(repo=str(repo), **TINY | {"steps": None}), store, log=logs.append) is None
    assert any("nothing changed" in line for line in logs)


def _cli(args, env, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "assistant.cli", *map(str, args)], cwd=PROJECT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(predicate, proc, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, f"exited before {what}: {proc.stderr.read()}"
        assert time.time() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def _checkpoint_step(run_dir: Path) -> int:
    """The step of a tune's last checkpoint; 0 before the first (or while one is written)."""
    try:
        return read_config(run_dir / "checkpoint")[2]["steps"]
    except Exception:
        return 0


def test_sigkill_then_ctrl_c_then_tune_again_finishes_with_every_step_once(tmp_path, base_dir):
    home = tmp_path / "home"
    ModelStore(home).add(base_dir, "tiny", make_default=True)
    env = dict(os.environ, MTP_ASSISTANT_HOME=str(home), OMP_NUM_THREADS="1")
    repo = make_repo(tmp_path / "repo")
    run_dir = home / TUNE_DIR / model_name(repo.resolve())
    args = ["tune", repo, "--steps", "60", *TINY_CLI]

    def checkpoint_step() -> int:
        return _checkpoint_step(run_dir)

    proc = _cli(args, env)
    _wait_for(lambda: checkpoint_step() >= 6, proc, "a checkpoint")
    proc.send_signal(signal.SIGKILL)  # no cleanup at all
    proc.wait()

    proc = _cli(args, env)  # resumes, then Ctrl+C
    first = checkpoint_step()
    _wait_for(lambda: checkpoint_step() > first, proc, "a checkpoint after resuming")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "tune interrupted: the checkpoint at step" in err and "resumes it" in err, err
    assert "Traceback" not in err

    proc = _cli(args, env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "| metric | before | after |" in out and "now serves" in out
    model_dir = home / "models" / model_name(repo.resolve())
    load_model(model_dir)  # whole
    records = read_metrics(model_dir / "metrics.jsonl")
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == list(range(1, train_steps[-1] + 1)), "every step exactly once across the kill and the stop"
    assert train_steps[-1] == 60 or json.loads((model_dir / "tune_report.json").read_text())["run"]["stopped"] != \
        "end of the schedule"
    val_steps = [r["step"] for r in records if r["split"] == "val"]
    assert val_steps == sorted(set(val_steps))
    assert ModelStore(home).binding_for(repo) == (str(repo.resolve()), model_dir.name)
    assert not run_dir.exists()


def _run(args, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "assistant.cli", *map(str, args)], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_complete_and_models_list_use_the_repository_binding(tmp_path, base_dir, monkeypatch, capsys):
    from assistant.cli import main

    home = tmp_path / "home"
    monkeypatch.setenv("MTP_ASSISTANT_HOME", str(home))
    store = ModelStore(home)
    store.add(base_dir, "tiny", make_default=True)
    store.add(save_model(tmp_path / "mine", random_model(seed=3), ByteTokenizer()), "mine")
    repo, elsewhere = make_repo(tmp_path / "repo", files=1), make_repo(tmp_path / "elsewhere", files=1)
    store.bind(repo, "mine")

    def complete(path: Path, *extra: str) -> str:
        assert main(["complete", str(path), "--line", "2", "--col", "5", "--max-tokens", "4", "--engine", "torch",
                     *extra]) == 0
        return capsys.readouterr().err

    assert f"model {home / 'models' / 'mine'}" in complete(repo / "mod0.py")
    assert f"model {home / 'models' / 'tiny'}" in complete(repo / "mod0.py", "--model", "tiny"), "--model wins"
    assert f"model {home / 'models' / 'tiny'}" in complete(elsewhere / "mod0.py"), "unbound: the default"

    assert main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert f"  {repo.resolve()} -> mine" in listing and "* tiny" in listing
    assert main(["models", "unbind", str(repo)]) == 0
    assert "no longer uses mine" in capsys.readouterr().out
    assert main(["models", "list"]) == 0
    assert f"{repo.resolve()} -> mine" not in capsys.readouterr().out
    assert main(["models", "unbind", str(repo)]) == 1
    assert "no model is bound to" in capsys.readouterr().err


def test_tune_errors_are_one_line(tmp_path, base_dir, store):
    home = tmp_path / "home"
    ModelStore(home).add(base_dir, "tiny", make_default=True)
    env = dict(os.environ, MTP_ASSISTANT_HOME=str(home), OMP_NUM_THREADS="1")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.py").write_text("x = 1\n")
    proc = _run(["tune", tmp_path / "one", *TINY_CLI], env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("mtp-assistant: error: ") and "too little code to tune on (1 code file" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    with pytest.raises(CorpusError, match="path does not exist"):
        tune(TuneConfig(repo=str(tmp_path / "missing"), **TINY), store)
    with pytest.raises(TuneError, match="invalid model name 'shipped'"):
        tune(TuneConfig(repo=str(tmp_path / "one"), name="shipped", **TINY), store)
    with pytest.raises(TuneError, match="invalid setting fim_rate=1.5"):
        TuneConfig(fim_rate=1.5)
    one_head = save_model(tmp_path / "one-head", random_model(n_future=1), ByteTokenizer())
    with pytest.raises(TuneError, match="has one head: there are no draft heads to distill"):
        tune(TuneConfig(repo=str(make_repo(tmp_path / "repo")), base=str(one_head), finetune="heads-distill", **TINY),
             store)


@pytest.fixture(scope="module")
def head1_base(tmp_path_factory, base_dir) -> Path:
    """A base whose head 1 has learned code like the test repositories' and whose other heads
    have not (their loss weighted 0): what distillation has something to teach. Its context is
    TINY's seq_len, as the shipped model's is tune's: a window must fit it whole."""
    root = tmp_path_factory.mktemp("head1")
    random = load_model(base_dir).model
    short = MTPTransformer(random.config.replace(max_seq_len=TINY["seq_len"]))
    short.load_state_dict(random.state_dict())
    start = save_model(root / "start", short, ByteTokenizer())
    other = root / "other"
    other.mkdir()
    for i in range(6):
        (other / f"lib{i}.py").write_text(repetitive_code(6).replace("add", f"fn{i}").replace("Point", f"Q{i}y"))
    config = TrainConfig(repo=str(other), out_dir=str(root / "run"), base_model=str(start), steps=100, batch_size=4,
                         seq_len=64, lr=3e-3, warmup_steps=2, head_weights=(1.0, 0.0, 0.0, 0.0), checkpoint_every=100,
                         eval_every=100, device="cpu")
    return train(config, show_progress=False)


def _weights(model_dir: Path) -> dict:
    return load_model(model_dir).model.state_dict()


def test_heads_distill_teaches_the_draft_heads_the_models_own_tokens_and_nothing_else(tmp_path, head1_base):
    store = ModelStore(tmp_path / "home", shipped_dir=head1_base)
    repo = make_repo(tmp_path / "repo")
    settings = TINY | dict(steps=24, lr=1e-2, speed_prompts=6, speed_tokens=24)
    result = tune(TuneConfig(repo=str(repo), finetune="heads-distill", **settings), store)
    report = result.report
    before, after = report["before"], report["after"]
    # On held-out windows, against the model's own greedy tokens: what distillation learns
    # (here heads 2/3/4 from 40 / 33 / 30% to 54 / 44 / 44%, and 2.88 to 3.00 tokens a forward:
    # too few prompts for a margin, so only "not worse" is asked of the latter).
    assert after["distill_loss"] < before["distill_loss"] - 1.0
    assert len(after["agreement_per_head"]) == 3
    assert all(a > b for a, b in zip(after["agreement_per_head"], before["agreement_per_head"]))
    assert after["agreement_per_head"][0] > before["agreement_per_head"][0] + 0.1
    assert after["tokens_per_forward"]["value"] >= before["tokens_per_forward"]["value"]
    # The trunk, head 1, the norm and the unembedding make those tokens: not a bit of them moves.
    base, tuned = _weights(head1_base), _weights(result.model_dir)
    assert base.keys() == tuned.keys()
    for key in base:
        same = torch.equal(base[key], tuned[key])
        assert same != key.startswith("extra_heads."), f"{key} {'unchanged' if same else 'changed'}"
    # So head 1 on the text and the next-line completions are the model's own still.
    assert after["accuracy_per_head"][0] == before["accuracy_per_head"][0]
    assert after["next_line"] == before["next_line"]
    val = [r for r in read_metrics(result.model_dir / "metrics.jsonl") if r["split"] == "val"]
    assert val and all(len(r["agreement_per_head"]) == 3 for r in val)
    assert report["run"]["best_step"] == min(val, key=lambda r: r["loss"])["step"]
    table = report_table(report)
    assert "agreement with the model's greedy tokens, heads 2/3/4" in table and "tokens per forward, k=4" in table


def test_heads_distill_resumes_after_a_kill_with_every_step_once(tmp_path, base_dir):
    home = tmp_path / "home"
    ModelStore(home).add(base_dir, "tiny", make_default=True)
    env = dict(os.environ, MTP_ASSISTANT_HOME=str(home), OMP_NUM_THREADS="1")
    repo = make_repo(tmp_path / "repo")
    run_dir = home / TUNE_DIR / model_name(repo.resolve())
    args = ["tune", repo, "--steps", "40", "--finetune", "heads-distill", "--fim-rate", "0.25", "--json", *TINY_CLI]

    def checkpoint_step() -> int:
        return _checkpoint_step(run_dir)

    proc = _cli(args, env)
    _wait_for(lambda: checkpoint_step() >= 10, proc, "a checkpoint")
    proc.send_signal(signal.SIGKILL)  # no cleanup at all
    proc.wait()
    assert json.loads((run_dir / "tune.json").read_text())["train"]["fim_rate"] == 0.25

    proc = _cli(args, env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "resuming the interrupted tune" in err, err
    report = json.loads(out.splitlines()[0])
    assert report["train"]["finetune"] == "heads-distill" and report["run"]["best_step"] is not None
    model_dir = home / "models" / model_name(repo.resolve())
    train_steps = [r["step"] for r in read_metrics(model_dir / "metrics.jsonl") if r["split"] == "train"]
    assert train_steps == list(range(1, train_steps[-1] + 1)), "every step exactly once across the kill"
    base, tuned = _weights(base_dir), _weights(model_dir)
    assert all(torch.equal(base[k], tuned[k]) for k in base if not k.startswith("extra_heads."))
    assert not all(torch.equal(base[k], tuned[k]) for k in base)


def test_the_plan_says_where_a_tune_starts_and_refuses_what_tune_refuses(tmp_path, store, base_dir):
    from assistant.training.tune import STATE_FILE, plan_tune

    repo = make_repo(tmp_path / "repo")
    plan = plan_tune(TuneConfig(repo=str(repo), **TINY), store)
    assert (plan.repo, plan.base, plan.started_from, plan.changes, plan.resuming) == \
        (repo.resolve(), base_dir, "base model", None, False)
    assert plan.run_dir == store.root / TUNE_DIR / model_name(repo.resolve()) and not plan.run_dir.exists()
    # An interrupted run of the repository is what a tune would resume, as it was started.
    plan.run_dir.mkdir(parents=True)
    (plan.run_dir / STATE_FILE).write_text(json.dumps({"repo": str(repo.resolve()), "train": {}, "before": {},
                                                       "base": str(base_dir), "started_from": "base model"}))
    assert plan_tune(TuneConfig(repo=str(repo), **TINY), store).resuming
    one_file = tmp_path / "one"
    one_file.mkdir()
    (one_file / "a.py").write_text(repetitive_code(20))
    with pytest.raises(TuneError, match=r"too little code to tune on \(1 code file"):
        plan_tune(TuneConfig(repo=str(one_file), **TINY), store)


def test_tune_json_prints_the_report_alone_on_stdout(tmp_path, base_dir, monkeypatch, capsys):
    from assistant.cli import main

    home = tmp_path / "home"
    monkeypatch.setenv("MTP_ASSISTANT_HOME", str(home))
    ModelStore(home).add(base_dir, "tiny", make_default=True)
    repo = make_repo(tmp_path / "repo")
    assert main(["tune", str(repo), "--steps", "12", *TINY_CLI, "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # one JSON document, nothing else
    assert report["repo"] == str(repo.resolve()) and "before" in report and "after" in report
    assert "now serves" in captured.err
