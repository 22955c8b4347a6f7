"""Where models live on disk, and which one is the default.

    $MTP_ASSISTANT_HOME (or the OS's user data dir)/
        models/NAME/        one model directory each (config.json, model.safetensors, ...)
        settings.json       {"default_model": NAME}

A model reference is a path to a model directory, a name in the store, or "default".
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from platformdirs import user_data_dir

from models import SHIPPED_MODEL_DIR
from models.checkpoint import CONFIG_FILE, ModelFileError, read_config, write_atomic

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class StoreError(Exception):
    """A store operation that cannot be done; the message is one line for the user."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    is_default: bool


class ModelStore:
    def __init__(self, root: Path | str | None = None, shipped_dir: Path | None = SHIPPED_MODEL_DIR):
        root = root or os.environ.get("MTP_ASSISTANT_HOME") or user_data_dir("mtp-assistant", appauthor=False)
        self.root = Path(root)
        self.shipped_dir = shipped_dir  # the default while none is chosen; None: no fallback
        self.models_dir = self.root / "models"
        self.settings_path = self.root / "settings.json"

    # --- settings ---

    def _settings(self) -> dict:
        try:
            data = json.loads(self.settings_path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, json.JSONDecodeError):
            return {}

    def default_name(self) -> str | None:
        name = self._settings().get("default_model")
        return name if isinstance(name, str) and (self.models_dir / name).is_dir() else None

    def set_default(self, name: str) -> None:
        if not (self.models_dir / name).is_dir():
            raise StoreError(f"no model named {name!r} in {self.models_dir}")
        settings = self._settings() | {"default_model": name}
        write_atomic(self.settings_path, (json.dumps(settings, indent=2) + "\n").encode())

    # --- models ---

    def list(self) -> list[ModelEntry]:
        if not self.models_dir.is_dir():
            return []
        default = self.default_name()
        return [
            ModelEntry(p.name, p, p.name == default)
            for p in sorted(self.models_dir.iterdir())
            if p.is_dir() and (p / CONFIG_FILE).exists()
        ]

    def resolve(self, ref: str | Path | None) -> Path:
        """The directory a model reference names."""
        if ref is None or str(ref) == "default":
            name = self.default_name()
            if name is not None:
                return self.models_dir / name
            # No default chosen: the model shipped in the repository (models/default).
            if self.shipped_dir is not None and (self.shipped_dir / "config.json").is_file():
                return self.shipped_dir
            raise StoreError("no default model: add one with `mtp-assistant models add PATH --default`")
        path = Path(ref)
        if path.is_dir():
            return path
        if NAME_PATTERN.match(str(ref)) and (self.models_dir / str(ref)).is_dir():
            return self.models_dir / str(ref)
        raise StoreError(f"{ref}: neither a model directory nor a model in {self.models_dir}")

    def add(
        self, source: Path | str, name: str | None = None, make_default: bool = False, move: bool = False
    ) -> ModelEntry:
        """Copy (or, with move, rename) a model directory into the store (validated first;
        never half-copied). Moving suits a model just written inside the store's folder."""
        source = Path(source)
        try:
            read_config(source)
        except ModelFileError as e:
            raise StoreError(str(e)) from None
        name = name or source.resolve().name
        if not NAME_PATTERN.match(name):
            raise StoreError(f"invalid model name {name!r}: letters, digits, '.', '_' and '-' only")
        target = self.models_dir / name
        if target.exists():
            raise StoreError(f"a model named {name!r} already exists in {self.models_dir}")
        tmp = self.models_dir / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        if move:
            shutil.move(source, tmp)
        else:
            shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("trainer_state.pt"))
        tmp.rename(target)
        if make_default or self.default_name() is None:
            self.set_default(name)
        return ModelEntry(name, target, self.default_name() == name)

    def remove(self, name: str) -> None:
        target = self.models_dir / name
        if not NAME_PATTERN.match(name) or not target.is_dir():
            raise StoreError(f"no model named {name!r} in {self.models_dir}")
        shutil.rmtree(target)
        if self._settings().get("default_model") == name:
            settings = {k: v for k, v in self._settings().items() if k != "default_model"}
            write_atomic(self.settings_path, (json.dumps(settings, indent=2) + "\n").encode())
