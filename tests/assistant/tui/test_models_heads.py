"""Models screen, add heads: a tiny real GGUF base becomes an MTP model in the store, with
progress; Esc stops it with a checkpoint and the same settings resume it; a base of an
unsupported architecture is the CLI's one-line message."""

import numpy as np
import pytest
import torch
from textual.widgets import Label, ProgressBar

from assistant.cli import main
from assistant.store import ModelStore
from assistant.training.heads import CHECKPOINT_FILE
from models.checkpoint import load_model, save_model
from models.config import ModelConfig
from models.gguf_export import export_model, quant_dir
from models.tokenizer import ByteTokenizer
from models.transformer import MTPTransformer

from .conftest import make_app, notifications, wait_for

pytestmark = pytest.mark.asyncio

CODE = "".join(f"def add_{i}(x, y):\n    return x + y + {i}\n\n\n" for i in range(60))


@pytest.fixture(scope="module")
def base_and_corpus(tmp_path_factory):
    """A plain one-head llama exported as a GGUF (its context fits add-heads' default
    windows of 256 tokens), and a directory of code to train its heads on."""
    root = tmp_path_factory.mktemp("heads-base")
    torch.manual_seed(0)
    config = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=261, n_future_tokens=1,
                         max_seq_len=512)
    source = save_model(root / "tiny", MTPTransformer(config).eval(), ByteTokenizer())
    export_model(source, "f32")
    corpus = root / "code"
    corpus.mkdir()
    (corpus / "a.py").write_text(CODE)
    (corpus / "b.py").write_text(CODE.replace("add", "sub").replace("+", "-"))
    return quant_dir(source, "f32") / "main.gguf", corpus


def stored(home) -> list[str]:
    return [e.name for e in ModelStore(home).list() if not e.shipped]


def op_label(app) -> str:
    return str(app.screen.query_one("#op-label", Label).render())


async def add_heads(pilot, **answers: str) -> None:
    """Press h, fill the form's fields, press OK."""
    app = pilot.app
    await pilot.press("h")
    await wait_for(pilot, lambda: app.screen.query("#field-base"), what="add-heads form")
    for key, value in answers.items():
        app.screen.query_one(f"#field-{key}").value = value
    await pilot.click("#ok")


async def test_add_heads_makes_a_model_that_appears_in_the_list(home, base_and_corpus, tmp_path):
    base, corpus = base_and_corpus
    more = tmp_path / "more"  # a second corpus: the form takes several, comma-separated
    more.mkdir()
    (more / "c.py").write_text(CODE.replace("add", "mul").replace("+", "*"))
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.query_one("#model-detail").render().plain != "", what="listing")
        await add_heads(pilot, base=str(base), corpus=f"{corpus}, {more}", minutes="0.02", heads="2")
        await wait_for(pilot, lambda: [m.name for m in app.screen.models] == ["main-mtp"] and not app.screen._busy,
                       timeout=120, what=f"the new model in the list {notifications(app)}")
        model = app.screen.models[0]
        assert model.n_future == 3 and model.error is None
        assert any(m.startswith("added main-mtp: ") for m in notifications(app)), notifications(app)
        loaded = load_model(model.path)
        assert loaded.provenance["heads_training"]["steps"] >= 1
        assert loaded.provenance["heads_training"]["corpus"] == [str(corpus.resolve()), str(more.resolve())]
        assert (model.path / "gguf" / "f32" / "head-3.gguf").is_file()  # servable by llama.cpp too


async def test_esc_stops_add_heads_and_the_same_settings_resume_it(home, base_and_corpus):
    base, corpus = base_and_corpus
    settings = dict(base=str(base), corpus=str(corpus), heads="2", name="tiny-mtp")
    run_dir = home / "runs" / "add-heads-tiny-mtp"
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await add_heads(pilot, minutes="5", **settings)
        await wait_for(pilot, lambda: "left" in op_label(app), timeout=60, what="step progress")
        assert op_label(app).startswith("add-heads: step ")
        assert 0 < app.screen.query_one(ProgressBar).progress < 1  # the share of the time box spent
        await pilot.press("escape")
        await wait_for(pilot, lambda: not app.screen._busy, timeout=60, what="the stop")
        stopped = [n for n in app._notifications if n.title == "add-heads stopped"]
        assert len(stopped) == 1 and "resumes" in stopped[0].message
        assert stored(home) == []  # no model yet, but a checkpoint
        checkpoint = torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)
        steps, seconds = int(checkpoint["step"]), float(checkpoint["seconds"])
        assert steps >= 1

        # Again with a time box shorter than the time already spent: it resumes, trains no
        # further, and writes the model (a fresh run would train at least one step of its own).
        await add_heads(pilot, minutes=f"{seconds / 60 / 2:.8f}", **settings)
        await wait_for(pilot, lambda: stored(home) == ["tiny-mtp"] and not app.screen._busy, timeout=120,
                       what=f"the resumed run's model {notifications(app)}")
        await wait_for(pilot, lambda: [m.name for m in app.screen.models] == ["tiny-mtp"], what="the listing")
        training = load_model(home / "models" / "tiny-mtp").provenance["heads_training"]
        assert training["steps"] == steps and training["before"] == checkpoint["first_eval"]
        assert training["minutes"] == pytest.approx(seconds / 60, rel=1e-12)  # the stopped run's own time, no more


async def test_an_unsupported_architecture_is_the_clis_one_line_message(home, base_and_corpus, tmp_path, capsys):
    import gguf

    _, corpus = base_and_corpus
    path = tmp_path / "starcoder2.gguf"
    writer = gguf.GGUFWriter(str(path), "starcoder2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert main(["models", "add-heads", str(path), "--data", str(corpus)]) == 1
    cli_message = capsys.readouterr().err.strip().removeprefix("mtp-assistant: error: ")

    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await add_heads(pilot, base=str(path), corpus=str(corpus))
        failed = lambda: [n for n in app._notifications if n.title == "add-heads failed"]  # noqa: E731
        await wait_for(pilot, lambda: failed() and not app.screen._busy, timeout=60, what="the error")
        message = failed()[0].message
        assert message == cli_message and "architecture 'starcoder2' is not supported" in message
        assert "\n" not in message and failed()[0].severity == "error"
        # A missing corpus, and a form that is not filled in: said before anything starts.
        await add_heads(pilot, base=str(path), corpus=str(tmp_path / "no-such-code"))
        await wait_for(pilot, lambda: len(failed()) == 2 and not app.screen._busy, timeout=60, what="corpus error")
        assert "no-such-code" in failed()[1].message
        await add_heads(pilot, base=str(path), corpus=str(corpus), minutes="soon")
        await wait_for(pilot, lambda: any("minutes must be a number" in m for m in notifications(app)), what="form")
        assert app.is_running and stored(home) == []


async def test_quitting_stops_add_heads_with_a_checkpoint(home, base_and_corpus):
    """The run is a thread of the UI's process: quitting must stop it (at its next step, with
    a checkpoint to resume from), not keep the process alive until its time box ends."""
    import asyncio
    import time

    base, corpus = base_and_corpus
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await add_heads(pilot, base=str(base), corpus=str(corpus), minutes="5", heads="2")
        await wait_for(pilot, lambda: "left" in op_label(app), timeout=60, what="step progress")
        await pilot.press("ctrl+q")
    checkpoint = home / "runs" / "add-heads-main-mtp" / CHECKPOINT_FILE
    deadline = time.monotonic() + 30
    while not checkpoint.is_file() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert checkpoint.is_file()
