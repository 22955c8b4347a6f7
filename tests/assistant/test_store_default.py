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


def test_adding_never_changes_the_default_and_shipped_is_listed(tmp_path):
    shipped, mine = tmp_path / "shipped", tmp_path / "mine"
    for path in (shipped, mine):
        save_model(path, random_model(), ByteTokenizer())
    store = ModelStore(tmp_path / "home", shipped_dir=shipped)
    store.add(mine, name="mine")
    assert store.resolve("default") == shipped
    assert [(e.name, e.is_default, e.shipped) for e in store.list()] == [("mine", False, False), ("shipped", True, True)]
    store.set_default("mine")
    assert store.resolve("default") == store.models_dir / "mine"
    store.set_default("shipped")  # the way back
    assert store.resolve("default") == shipped == store.resolve("shipped")
    for bad in (lambda: store.set_default("default"), lambda: store.remove("shipped"),
                lambda: store.add(mine, name="shipped"), lambda: store.add(mine, name="default")):
        with pytest.raises(StoreError):
            bad()
