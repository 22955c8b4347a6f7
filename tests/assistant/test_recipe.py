import json

from assistant.training.recipe import CARD_EXAMPLES, DEFAULT_TRAIN_ARGS, render_card, ship
from assistant.training.trainer import TrainConfig, train
from models.checkpoint import load_model


def test_card_examples_each_mark_one_cursor():
    assert len(CARD_EXAMPLES) == 10 and all(case.count("|") == 1 for case in CARD_EXAMPLES)
    assert "--steps" in DEFAULT_TRAIN_ARGS and "--seed" in DEFAULT_TRAIN_ARGS


def test_ship_copies_the_model_and_measures_its_card(tmp_path, code_repo):
    data = tmp_path / "data"
    (data / "heldout").mkdir(parents=True)
    (data / "heldout" / "held.py").write_text((code_repo / "pkg" / "config.py").read_text())
    (data / "sources.json").write_text(json.dumps({
        "train": [{"name": "pkg", "version": "0", "license": "MIT", "bytes": 1}],
        "heldout": [{"name": "held", "version": "0", "license": "MIT", "bytes": 1}],
    }))
    run = tmp_path / "run"
    config = TrainConfig(repo=str(code_repo), out_dir=str(run), tokenizer="bpe", bpe_vocab_size=300,
                         model_overrides={"dim": 32, "n_layers": 4, "n_heads": 2}, steps=3, batch_size=2,
                         seq_len=96, eval_every=1000, checkpoint_every=1000, device="cpu")
    train(config, show_progress=False)
    dest = tmp_path / "shipped"
    card = ship(run, data, dest, humaneval_limit=1, bench_limit=1, next_line_cases=3)

    shipped = load_model(dest)  # a loadable model, its context the one it trained at
    assert shipped.config.max_seq_len == 96
    assert card["training"]["steps"] == 3 and card["training"]["tokens_seen"] == 3 * 2 * 96
    assert card["next_line"]["cases"] == 3 and card["humaneval"]["problems"] == 1
    assert len(card["heldout_heads"]["accuracy_per_head"]) == 4 and len(card["examples"]) == 10
    text = (dest / "CARD.md").read_text()
    assert text == render_card(json.loads((dest / "card.json").read_text()))
    assert "| heldout | held | 0 | MIT |" in text and "HumanEval pass@1" in text
