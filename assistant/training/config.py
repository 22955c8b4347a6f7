"""A training run's settings, in one typed form, and the layout of its output directory.

`TrainConfig` is the only place a setting is declared: each field's metadata gives its
command-line flag (when it is not the field's name), its help and its group, so that
`mtp-assistant train` generates its options from the fields (`add_train_arguments`), and a
run's train_config.json, `train --config FILE`, the TUI and the recipe all speak it.

This module imports no torch: the CLI builds its parser from it at every start.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assistant.errors import UserError
from models.checkpoint import write_atomic
from models.config import PRESETS

TRAIN_CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoint"
FINAL_MODEL_DIR = "model"
TRAINER_STATE_FILE = "trainer_state.pt"
# What a program that starts a run in the background (the TUI, the recipe) gives `train --config`.
START_CONFIG_FILE = "start_config.json"

# What a fine-tune trains: every weight; the heads' blocks (head 1 included) on the text; or
# heads 2..n only, on the model's own greedy tokens (assistant/training/distill.py), with the
# trunk and head 1 frozen so that the tokens they learn are the ones decoding will verify.
FINETUNE_MODES = ("full", "heads", "heads-distill")

# Groups of `mtp-assistant train --help`, in this order.
MODEL, FINETUNING, OPTIMISATION, DATA, BOOKKEEPING = (
    "model (from scratch)", "fine-tuning", "optimisation", "data", "evaluation, checkpoints, device",
)

# The model settings `train` takes as flags (ModelConfig field -> flag, help), gathered into
# TrainConfig.model_overrides over the preset's values.
MODEL_OVERRIDE_FLAGS: dict[str, tuple[str, str | None]] = {
    "dim": ("--dim", None),
    "n_layers": ("--n-layers", "all blocks, heads included (Meta's convention)"),
    "n_heads": ("--n-heads", "attention heads"),
    "n_kv_heads": ("--n-kv-heads", None),
    "n_future_tokens": ("--n-future", "number of output heads (tokens predicted per position)"),
    "max_seq_len": ("--max-seq-len", None),
}


class TrainError(UserError):
    """A run that cannot start or continue; the message is one line for the user.

    A UserError (a ValueError): to a form or a command line it is an invalid value like any other."""


def _setting(default: Any = dataclasses.MISSING, help: str | None = None, group: str = OPTIMISATION, **meta: Any):
    """A TrainConfig field. meta: flag (default: --the-field-name), choices, metavar, cli=False (no option)."""
    metadata = {"help": help, "group": group, **meta}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TrainConfig:
    repo: str = _setting(help="repository to train on (default: the current directory)", group="", flag="repo")
    out_dir: str = _setting(help="run directory (default: runs/<repo name>)", group="", flag="--out", metavar="DIR")
    # The model: a preset with optional overrides, or a base model to fine-tune.
    preset: str = _setting("tiny", group=MODEL, choices=tuple(sorted(PRESETS)))
    model_overrides: dict[str, Any] = _setting({}, group=MODEL, flags=MODEL_OVERRIDE_FLAGS)
    base_model: str | None = _setting(
        None, "start from this model (path or store name)", FINETUNING, flag="--base", metavar="MODEL"
    )
    finetune: str = _setting(
        "full", "train every weight, the heads only, or heads 2..n on the model's own greedy tokens", FINETUNING,
        choices=FINETUNE_MODES
    )
    tokenizer: str = _setting("byte", "from scratch only", MODEL, choices=("byte", "bpe"))
    bpe_vocab_size: int = _setting(4096, "BPE vocabulary size", MODEL, flag="--vocab-size")
    # Optimisation.
    steps: int = _setting(1000, "length of the learning-rate schedule")
    # What a time-boxed run that was cut short shipped, so that the recipe can say so exactly.
    stop_after: int | None = _setting(
        None, "end the run after this many steps of the schedule (default: all)", metavar="STEPS"
    )
    batch_size: int = _setting(8, "sequences per optimizer step, over all ranks and micro-batches")
    grad_accum: int = _setting(1, "micro-batches per optimizer step")
    seq_len: int = _setting(256)
    lr: float = _setting(1e-3, "peak learning rate")
    min_lr_ratio: float = _setting(0.1, "the learning rate's floor, a fraction of the peak")
    warmup_steps: int = _setting(50, flag="--warmup")
    weight_decay: float = _setting(0.1)
    betas: tuple[float, float] = _setting((0.9, 0.95), "AdamW's betas, e.g. 0.9,0.95")
    grad_clip: float = _setting(1.0)
    head_weights: tuple[float, ...] | None = _setting(None, "per-head loss weights, e.g. 1,0.5,0.5,0.5")
    # Data.
    fim_rate: float = _setting(0.5, "fraction of windows in fill-in-the-middle form", DATA)
    spm_rate: float = _setting(0.5, "fraction of those in suffix-prefix-middle order", DATA)
    val_fraction: float = _setting(0.1, "fraction of the repository's files held out for validation", DATA)
    # Times a training file (by its path in the corpus) is read per epoch; others once. `tune`
    # reads what changed since the last tune more often; set in a --config file, no option.
    file_weights: dict[str, int] = _setting({}, group=DATA, cli=False)
    # Independent document cursors a batch's rows are drawn from in turn (see WindowStream).
    window_lanes: int = _setting(
        0, "documents read side by side, one batch row each in turn (0: one per row; 1: consecutive windows)", DATA
    )
    # The windows are the same either way; a CPU run keeps up in the loop, a GPU run does not.
    data_workers: int = _setting(
        0, "processes tokenizing the next epoch ahead of training (0: in the loop; a GPU run wants many)", DATA
    )
    # Bookkeeping.
    checkpoint_every: int = _setting(100, group=BOOKKEEPING)
    eval_every: int = _setting(100, group=BOOKKEEPING)
    eval_windows: int = _setting(16, "validation windows per evaluation", BOOKKEEPING)
    seed: int = _setting(0, group=BOOKKEEPING)
    device: str = _setting("auto", "auto, cpu, cuda, cuda:N", BOOKKEEPING)

    def __post_init__(self) -> None:
        positive = "must be positive"
        checks = {
            "repo": (bool(self.repo), "must name a directory"),
            "out_dir": (bool(self.out_dir), "must name a directory"),
            "steps": (self.steps > 0, positive),
            "stop_after": (self.stop_after is None or 0 < self.stop_after <= self.steps, "must be in 1..steps"),
            "batch_size": (self.batch_size > 0, positive),
            "grad_accum": (self.grad_accum > 0 and self.batch_size % self.grad_accum == 0, "must divide batch_size"),
            "seq_len": (self.seq_len > 0, positive),
            "lr": (0 < self.lr < math.inf, "must be positive and finite"),
            "min_lr_ratio": (0 <= self.min_lr_ratio <= 1, "must be in 0..1"),
            "warmup_steps": (self.warmup_steps >= 0, "must be 0 or more"),
            "checkpoint_every": (self.checkpoint_every > 0, positive),
            "eval_every": (self.eval_every > 0, positive),
            "eval_windows": (self.eval_windows > 0, positive),
            "grad_clip": (self.grad_clip >= 0, "must be 0 (off) or more"),
            "finetune": (self.finetune in FINETUNE_MODES, f"one of {', '.join(FINETUNE_MODES)}"),
            "tokenizer": (self.tokenizer in ("byte", "bpe"), "one of byte, bpe"),
            "preset": (self.preset in PRESETS, f"one of {', '.join(PRESETS)}"),
            "val_fraction": (0 <= self.val_fraction < 1, "must be in 0..1 (1 excluded)"),
            "window_lanes": (self.window_lanes >= 0, "must be 0 or more"),
            "data_workers": (self.data_workers >= 0, "must be 0 or more"),
            "file_weights": (all(isinstance(w, int) and w >= 1 for w in self.file_weights.values()),
                             "each weight must be a whole number of reads, 1 or more"),
        }
        for name, (ok, reason) in checks.items():
            if not ok:
                raise TrainError(f"invalid setting {name}={getattr(self, name)!r}: {reason}")
        if self.finetune != "full" and self.base_model is None:
            raise TrainError(f"training the heads only (finetune {self.finetune}) needs a base model to start from")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainConfig":
        """The settings of a run's train_config.json, older runs' included."""
        data = dict(data)
        # Runs started before lanes existed read consecutive windows: keep resuming them exactly.
        data.setdefault("window_lanes", 1)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Settings by field name (a JSON object: lists for tuples); the ones left out take
        their defaults. A wrong name or type is a TrainError naming the setting."""
        values = typed_settings(data)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in values and _no_default(f)]
        if missing:
            raise TrainError(f"missing setting {missing[0]}")
        return cls(**values)


def typed_settings(data: dict[str, Any]) -> dict[str, Any]:
    """data's TrainConfig fields as the fields hold them (a JSON list becomes a tuple); an
    unknown name or a value of the wrong type is a TrainError."""
    if not isinstance(data, dict):
        raise TrainError(f"settings must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(TrainConfig)
    values = {}
    for name, value in data.items():
        if name not in hints:
            raise TrainError(f"unknown setting {name!r}")
        values[name] = _typed(name, value, hints[name])
    return values


def _no_default(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _typed(name: str, value: Any, hint: Any) -> Any:
    """value as a field of type `hint` holds it (a JSON list becomes a tuple), or a TrainError."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    kind = next(o for o in options if o is not type(None))
    origin = typing.get_origin(kind) or kind
    if origin is tuple and isinstance(value, (list, tuple)):
        arity = typing.get_args(kind)
        if all(_is_number(x) for x in value) and (arity[-1] is Ellipsis or len(value) == len(arity)):
            return tuple(float(x) for x in value)
    elif origin is float and _is_number(value):
        return float(value)
    elif origin is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif origin in (str, dict) and isinstance(value, origin):
        return value
    raise TrainError(f"invalid setting {name}={value!r}: expected {_describe(kind)}")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _describe(kind: Any) -> str:
    if typing.get_origin(kind) is tuple:
        arity = typing.get_args(kind)
        return "a list of numbers" if arity[-1] is Ellipsis else f"a list of {len(arity)} numbers"
    return {int: "an integer", float: "a number", str: "a string", dict: "an object"}.get(
        typing.get_origin(kind) or kind, str(kind)
    )


# --- the command line ---


def flag(field: dataclasses.Field) -> str:
    """The field's option on the command line ("repo" is the positional argument)."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field (model_overrides: one per MODEL_OVERRIDE_FLAGS).

    No option has a default in the namespace: one appears there only when it was given,
    so that it can override a --config file; the help shows TrainConfig's default."""
    hints = typing.get_type_hints(TrainConfig)
    groups: dict[str, Any] = {}
    for field in dataclasses.fields(TrainConfig):
        if field.metadata.get("cli") is False:
            continue
        group_name = field.metadata["group"]
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(group_name) if group_name else parser
        group = groups[group_name]
        if field.name == "model_overrides":
            for key, (option, help) in field.metadata["flags"].items():
                group.add_argument(option, type=int, dest=f"model_overrides.{key}", default=argparse.SUPPRESS,
                                   metavar=_metavar(option), help=help)
            continue
        kwargs = {"default": argparse.SUPPRESS, "help": _help(field)}
        if flag(field).startswith("--"):
            kwargs["dest"] = field.name
            kwargs["metavar"] = field.metadata.get("metavar") or _metavar(flag(field))
        else:
            kwargs["nargs"] = "?"
        if field.metadata.get("choices"):
            kwargs["choices"], kwargs["metavar"] = field.metadata["choices"], None  # the choices are shown
        group.add_argument(flag(field), type=_parser(hints[field.name]), **kwargs)


def _help(field: dataclasses.Field) -> str | None:
    help = field.metadata.get("help")
    if field.default in (None, dataclasses.MISSING):
        return help  # what no value means is said in the help
    shown = ",".join(map(str, field.default)) if isinstance(field.default, tuple) else field.default
    return f"{help} (default: {shown})" if help else f"default: {shown}"


def _metavar(option: str) -> str:
    return option.removeprefix("--").replace("-", "_").upper()


def _parser(hint: Any):
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    kind = next(o for o in options if o is not type(None))
    if typing.get_origin(kind) is tuple:
        arity = typing.get_args(kind)
        return lambda text: _floats(text, None if arity[-1] is Ellipsis else len(arity))
    return kind


def _floats(text: str, count: int | None) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if count is not None and len(values) != count:
        raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers, got {text!r}")
    return values


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields given on the command line (model overrides gathered)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    settings: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if dest.startswith("model_overrides."):
            settings.setdefault("model_overrides", {})[dest.removeprefix("model_overrides.")] = value
        elif dest in names:
            settings[dest] = value
    return settings


def read_settings(path: str | Path) -> dict[str, Any]:
    """The settings of a JSON file of TrainConfig fields (a run's train_config.json is one)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TrainError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TrainError(f"{path}: unreadable ({e})") from None
    try:
        return typed_settings(data)
    except TrainError as e:
        raise TrainError(f"{path}: {e}") from None


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run `train` was asked for: the options given over the --config file's settings
    (if any) over TrainConfig's defaults. The repository defaults to the current directory,
    the run directory to runs/<repository name>."""
    config_file = getattr(args, "config", None)
    settings = read_settings(config_file) if config_file else {}
    given = given_settings(args)
    if "model_overrides" in given:  # one model flag changes one model setting of the file's
        given["model_overrides"] = {**settings.get("model_overrides", {}), **given["model_overrides"]}
    settings = {**settings, **given}
    settings.setdefault("repo", ".")
    settings.setdefault("out_dir", str(Path("runs") / (Path(settings["repo"]).resolve().name or "repo")))
    return TrainConfig.from_dict(settings)


def start_command(config: TrainConfig) -> list[str]:
    """The command line that trains `config` (`train --config` of the settings written to
    out_dir/start_config.json; the directory is made)."""
    path = Path(config.out_dir) / START_CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(config.to_json(), indent=2) + "\n").encode())
    return [sys.executable, "-m", "assistant.cli", "train", "--config", str(path), "--quiet"]
