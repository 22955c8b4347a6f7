import pytest

from assistant.store import ModelStore, StoreError
from models.checkpoint import save_model
from models.tokenizer import ByteTokenizer
from tests.assistant.engine.helpers import random_model


def test_the_shipped_model_is_the_default_until_one_is_chosen(tmp_path):
    shipped, mine = tmp_path / "shipped", tmp_path / "mine"
    for path in (shipped, mine):
        save_model(path, random_model(), ByteTokenizer())
    store = ModelStore(tmp_path / "home", shipped_dir=shipped)
    assert store.resolve("default") == shipped == store.resolve(None)
    store.add(mine, name="mine", make_default=True)
    assert store.resolve("default") == store.models_dir / "mine"
    with pytest.raises(StoreError, match="no default model"):
        ModelStore(tmp_path / "other", shipped_dir=None).resolve("default")
