"""Where models live on disk, and which one is the default.

    $MTP_ASSISTANT_HOME (or the OS's user data dir)/
        models/NAME/        one model directory each (config.json, model.safetensors, ...)
        settings.json       {"default_model": NAME, "bindings": {REPOSITORY_ROOT: NAME}}

The model shipped in the repository (models/default) is listed as "shipped"; it is the
default until the user chooses another, and choosing "shipped" goes back to it. Adding a
model never changes the default unless asked to.

A repository can have a model of its own (what `tune` makes): `bindings` maps repository
roots to model names, and a file is served by the model bound to the longest root that
holds it, else by the default.

A model reference is a path to a model directory, a name in the store, "shipped", or
"default" (whichever model is the default).
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
SHIPPED_NAME = "shipped"
DEFAULT_REF = "default"
RESERVED_NAMES = (SHIPPED_NAME, DEFAULT_REF)


class StoreError(Exception):
    """A store operation that cannot be done; the message is one line for the user."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    is_default: bool
    shipped: bool = False  # the model in the repository, not in the store (cannot be removed)


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
        """Make a store model the default; "shipped" goes back to the shipped model."""
        if name == DEFAULT_REF:
            raise StoreError(f"{DEFAULT_REF!r} names whichever model is the default; the shipped model is {SHIPPED_NAME!r}")
        if name == SHIPPED_NAME:
            if self._shipped_config() is None:
                raise StoreError("this installation has no shipped model")
            self._write_settings({k: v for k, v in self._settings().items() if k != "default_model"})
            return
        if not (self.models_dir / name).is_dir():
            raise StoreError(f"no model named {name!r} in {self.models_dir}")
        self._write_settings(self._settings() | {"default_model": name})

    # --- bindings: repository roots -> models ---

    def bindings(self) -> dict[str, str]:
        """Repository root -> model name, as written (a model removed since still shows)."""
        data = self._settings().get("bindings")
        if not isinstance(data, dict):
            return {}
        return {root: name for root, name in data.items() if isinstance(root, str) and isinstance(name, str)}

    def bind(self, root: Path | str, name: str) -> None:
        """Serve files under `root` with the model `name` (a store model or "shipped")."""
        if not self._has(name):
            raise StoreError(f"no model named {name!r} in {self.models_dir}")
        self._write_settings(self._settings() | {"bindings": self.bindings() | {root_key(root): name}})

    def unbind(self, root: Path | str) -> str:
        """Drop the binding of exactly `root`; returns the model it named."""
        key, bindings = root_key(root), self.bindings()
        if key not in bindings:
            raise StoreError(f"no model is bound to {key}")
        name = bindings.pop(key)
        self._write_settings(self._settings() | {"bindings": bindings})
        return name

    def binding_for(self, path: Path | str) -> tuple[str, str] | None:
        """(root, model name) of the longest bound root holding `path` whose model still exists."""
        target = Path(root_key(path))
        found = None
        for root, name in self.bindings().items():
            if target.is_relative_to(root) and self._has(name) and (found is None or len(root) > len(found[0])):
                found = (root, name)
        return found

    def _has(self, name: str) -> bool:
        if name == SHIPPED_NAME:
            return self._shipped_config() is not None
        return bool(NAME_PATTERN.match(name)) and name not in RESERVED_NAMES and (self.models_dir / name).is_dir()

    def model_for(self, path: Path | str | None) -> Path:
        """The model directory that serves `path` (a file or a workspace root): its
        repository's bound model, else the default."""
        found = self.binding_for(path) if path is not None else None
        return self.resolve(found[1] if found else None)

    def _write_settings(self, settings: dict) -> None:
        write_atomic(self.settings_path, (json.dumps(settings, indent=2) + "\n").encode())

    def _shipped_config(self) -> Path | None:
        if self.shipped_dir is not None and (self.shipped_dir / CONFIG_FILE).is_file():
            return self.shipped_dir / CONFIG_FILE
        return None

    # --- models ---

    def list(self) -> list[ModelEntry]:
        """The store's models by name, then the shipped one (when this installation has it)."""
        default = self.default_name()
        entries = [
            ModelEntry(p.name, p, p.name == default)
            for p in (sorted(self.models_dir.iterdir()) if self.models_dir.is_dir() else [])
            # NAME_PATTERN: not the hidden .NAME.tmp / .NAME.old of an add in progress
            if p.is_dir() and (p / CONFIG_FILE).exists() and p.name not in RESERVED_NAMES and NAME_PATTERN.match(p.name)
        ]
        if self._shipped_config() is not None:
            entries.append(ModelEntry(SHIPPED_NAME, self.shipped_dir, default is None, shipped=True))
        return entries

    def resolve(self, ref: str | Path | None) -> Path:
        """The directory a model reference names."""
        if ref is None or str(ref) == DEFAULT_REF:
            name = self.default_name()
            if name is not None:
                return self.models_dir / name
            if self._shipped_config() is not None:
                return self.shipped_dir
            raise StoreError("no default model: add one with `mtp-assistant models add PATH --default`")
        if str(ref) == SHIPPED_NAME and self._shipped_config() is not None:
            return self.shipped_dir
        path = Path(ref)
        if path.is_dir():
            return path
        if NAME_PATTERN.match(str(ref)) and (self.models_dir / str(ref)).is_dir():
            return self.models_dir / str(ref)
        raise StoreError(f"{ref}: neither a model directory nor a model in {self.models_dir}")

    def add(
        self, source: Path | str, name: str | None = None, make_default: bool = False, move: bool = False,
        replace: bool = False,
    ) -> ModelEntry:
        """Copy (or, with move, rename) a model directory into the store (validated first;
        never half-copied). Moving suits a model just written inside the store's folder.
        With replace, a model of that name is swapped for the new one (a re-tune)."""
        source = Path(source)
        try:
            read_config(source)
        except ModelFileError as e:
            raise StoreError(str(e)) from None
        name = name or source.resolve().name
        if not NAME_PATTERN.match(name):
            raise StoreError(f"invalid model name {name!r}: letters, digits, '.', '_' and '-' only")
        if name in RESERVED_NAMES:
            raise StoreError(f"{name!r} is reserved (the shipped model, the default): choose another name")
        target = self.models_dir / name
        if target.exists() and not replace:
            raise StoreError(f"a model named {name!r} already exists in {self.models_dir}")
        tmp = self.models_dir / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        if move:
            shutil.move(source, tmp)
        else:
            shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("trainer_state.pt"))
        if target.exists():  # replace: the old model moves aside only once the new one is whole
            old = self.models_dir / f".{name}.old"
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
        if make_default:
            self.set_default(name)
        return ModelEntry(name, target, self.default_name() == name)

    def remove(self, name: str) -> None:
        if name == SHIPPED_NAME:
            raise StoreError("the shipped model cannot be removed (it lives in the installation, not the store)")
        target = self.models_dir / name
        if not NAME_PATTERN.match(name) or name in RESERVED_NAMES or not target.is_dir():
            raise StoreError(f"no model named {name!r} in {self.models_dir}")
        shutil.rmtree(target)
        settings = self._settings()
        if settings.get("default_model") == name:
            del settings["default_model"]
        bindings = {root: bound for root, bound in self.bindings().items() if bound != name}
        if bindings != self.bindings():
            settings["bindings"] = bindings
        self._write_settings(settings)


def root_key(path: Path | str) -> str:
    """How a repository root is written in the bindings: absolute, symlinks resolved."""
    return str(Path(path).expanduser().resolve())
