import copy
import json
import shutil
import subprocess
import sys

import pytest

from assistant.cli.models import _card_scores
from assistant.training.recipe.card import render_card
from assistant.training.recipe.model_card import CardError, ModelCard, Sources
from models import SHIPPED_MODEL_DIR

PROJECT = SHIPPED_MODEL_DIR.parent.parent
SHIPPED_CARD = SHIPPED_MODEL_DIR / "card.json"


def shipped_json() -> dict:
    return json.loads(SHIPPED_CARD.read_text())


def test_the_shipped_card_round_trips_byte_for_byte():
    card = ModelCard.read(SHIPPED_CARD)
    assert json.dumps(card.to_json(), indent=2) + "\n" == SHIPPED_CARD.read_text()
    assert card.model_config.n_future_tokens == 4 and card.training.stages[0].schedule_steps == 5656
    assert card.sources.train[0].excluded_dirs and card.sources.train[0].wheel is None


def test_render_card_reproduces_the_shipped_card_md():
    assert render_card(ModelCard.read(SHIPPED_CARD)).encode() == (SHIPPED_MODEL_DIR / "CARD.md").read_bytes()


def test_the_card_command_rerenders_a_copy_identically(tmp_path):
    shutil.copyfile(SHIPPED_CARD, tmp_path / "card.json")
    subprocess.run([sys.executable, "-m", "assistant.training.recipe", "card", str(tmp_path)],
                   cwd=PROJECT, check=True, capture_output=True)
    assert (tmp_path / "CARD.md").read_bytes() == (SHIPPED_MODEL_DIR / "CARD.md").read_bytes()
    assert (tmp_path / "card.json").read_bytes() == SHIPPED_CARD.read_bytes()


def test_fields_older_files_leave_out_stay_out():
    data = shipped_json()
    del data["training"]["stages"][0]["schedule_steps"]
    del data["sources"]["heldout"][0]["wheel"]
    card = ModelCard.from_json(copy.deepcopy(data))
    assert card.training.stages[0].schedule_steps is None and card.to_json() == data
    assert "5000 of" not in render_card(card)  # no schedule recorded: the steps alone
    assert Sources.from_json(data["sources"]).to_json() == data["sources"]


@pytest.mark.parametrize("change, where", [
    (lambda d: d["training"]["stages"][0].pop("steps"), "card.json: training.stages[0]: missing field steps"),
    (lambda d: d["next_line"].update(exact_match="high"), 'card.json: next_line.exact_match: expected a number, got "high"'),
    (lambda d: d["humaneval"].update(passed=[22]), "card.json: humaneval.passed[0]: expected a string, got 22"),
    (lambda d: d["humaneval"].update(problems=True), "card.json: humaneval.problems: expected an integer, got true"),
    (lambda d: d["bench"].update(extra=1), "card.json: bench: unknown field(s) extra"),
    (lambda d: d["model_config"].update(dim="wide"), "card.json: model_config: "),
    (lambda d: d.update(examples={}), "card.json: examples: expected a list, got {}"),
    (lambda d: d["sources"]["train"].append(None), "card.json: sources.train[50]: expected a JSON object, got null"),
])
def test_a_malformed_card_says_where(change, where):
    data = shipped_json()
    change(data)
    with pytest.raises(CardError) as raised:
        ModelCard.from_json(data)
    assert str(raised.value).startswith(where)


def test_a_card_file_that_is_not_json_names_the_file(tmp_path):
    (tmp_path / "card.json").write_text("{not json")
    with pytest.raises(CardError, match="card.json: not a readable JSON file"):
        ModelCard.read(tmp_path / "card.json")


def test_models_show_reads_the_headline_scores_from_the_card():
    assert _card_scores(shipped_json()) == [
        ("held-out top-1 per head", "57.8% / 43.8% / 33.8% / 27.2%"),
        ("next-line exact match", "6.0%"),
        ("HumanEval pass@1", "0.6% of 164 problems"),
    ]
    assert _card_scores({}) == []  # a model without a card
    broken = shipped_json()
    del broken["humaneval"]
    assert _card_scores(broken) == [("card", "unreadable: card.json: missing field humaneval")]
