"""The shipped default model's recipe: which code it learns from, and how it is trained.

`make default-model` runs the whole recipe from nothing:

    python -m assistant.training.recipe gather DATA   # corpus: stdlib + pinned packages
    mtp-assistant train DATA/train ...                # the flags in DEFAULT_TRAIN_ARGS
    python -m assistant.training.recipe ship RUN      # copy the final model into models/default

Sources are the running Python's standard library (PSF license) and the source of
permissively licensed packages fetched as pinned wheels from the package registry.
Held-out packages go to DATA/heldout and are never trained on; the model card's
held-out figures and the speed benchmark read them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from models import SHIPPED_MODEL_DIR


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    license: str


# Pinned so that the corpus (and so the model) is the same on every machine.
TRAIN_PACKAGES: tuple[Package, ...] = (
    Package("django", "5.2.19", "BSD-3-Clause"),
    Package("sqlalchemy", "2.1.9", "MIT"),
    Package("flask", "3.1.3", "BSD-3-Clause"),
    Package("werkzeug", "3.1.9", "BSD-3-Clause"),
    Package("jinja2", "3.1.6", "BSD-3-Clause"),
    Package("networkx", "3.6.1", "BSD-3-Clause"),
    Package("pydantic", "2.14.4", "MIT"),
    Package("rich", "15.0.0", "MIT"),
    Package("textual", "8.2.8", "MIT"),
    Package("pygments", "2.21.0", "BSD-2-Clause"),
    Package("setuptools", "84.2.1", "MIT"),
    Package("pytest", "9.2.0", "MIT"),
    Package("attrs", "26.1.0", "MIT"),
    Package("packaging", "26.4", "Apache-2.0 OR BSD-2-Clause"),
    Package("urllib3", "2.8.0", "MIT"),
    Package("httpx", "0.28.1", "BSD-3-Clause"),
    Package("starlette", "1.10.0", "BSD-3-Clause"),
    Package("fastapi", "0.165.0", "MIT"),
    Package("tornado", "6.6.1", "Apache-2.0"),
    Package("black", "26.10.1", "MIT"),
    Package("isort", "9.0.2", "MIT"),
    Package("more-itertools", "11.2.1", "MIT"),
    Package("toolz", "1.2.0", "BSD-3-Clause"),
    Package("marshmallow", "4.4.0", "MIT"),
    Package("markdown", "3.11.3", "BSD-3-Clause"),
)

# Whole packages the model never sees: the held-out set for evaluation and speed.
HELDOUT_PACKAGES: tuple[Package, ...] = (
    Package("requests", "2.34.2", "Apache-2.0"),
    Package("click", "8.5.1", "BSD-3-Clause"),
    Package("boltons", "26.2.0", "BSD-3-Clause"),
)

# Standard-library directories left out: test suites full of odd fixtures, the IDLE
# test harness, and the interpreter's own site-packages (other people's code).
STDLIB_EXCLUDED_DIRS = ("site-packages", "test", "idle_test", "tests", "__pycache__")

# `mtp-assistant train DATA/train` flags of the shipped model (see models/default/CARD.md
# for why: a BPE model sees ~3.5x more code per CPU-second than a byte model, and needs
# ~3.5x fewer forward passes per completion).
DEFAULT_TRAIN_ARGS: tuple[str, ...] = (
    "--tokenizer", "bpe", "--vocab-size", "4096",
    "--preset", "small", "--dim", "192", "--n-layers", "8", "--n-heads", "6", "--n-future", "4",
    "--seq-len", "384", "--batch-size", "12", "--lr", "2e-3", "--warmup", "100",
    "--eval-every", "250", "--checkpoint-every", "50", "--seed", "0",
)


def _copy_python_files(src: Path, dst: Path, excluded_dirs: tuple[str, ...] = ()) -> int:
    """Copy every .py file under src to dst (same relative paths); return the bytes copied."""
    total = 0
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        if any(part in excluded_dirs for part in rel.parts[:-1]):
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        total += path.stat().st_size
    return total


def _fetch_wheel(package: Package, download_dir: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
         "--dest", str(download_dir), f"{package.name}=={package.version}"],
        check=True,
    )
    prefix = package.name.replace("-", "_").lower() + "-" + package.version
    for wheel in download_dir.glob("*.whl"):
        if wheel.name.lower().startswith(prefix):
            return wheel
    raise FileNotFoundError(f"pip downloaded no wheel for {package.name}=={package.version}")


def _extract_python_files(wheel: Path, dst: Path) -> int:
    """Unpack the .py files of a wheel (never its binaries or metadata) into dst."""
    total = 0
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            parts = Path(info.filename).parts
            if not info.filename.endswith(".py") or any(p.endswith(".dist-info") for p in parts):
                continue
            target = dst / Path(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(info))
            total += info.file_size
    return total


def gather(data_dir: Path) -> dict:
    """Build DATA/train and DATA/heldout from nothing; write DATA/sources.json and return it."""
    if data_dir.exists():
        shutil.rmtree(data_dir)
    train_dir, heldout_dir = data_dir / "train", data_dir / "heldout"
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    version = ".".join(map(str, sys.version_info[:3]))
    sources: dict = {"train": [], "heldout": []}
    stdlib_bytes = _copy_python_files(stdlib, train_dir / "stdlib", STDLIB_EXCLUDED_DIRS)
    sources["train"].append(
        {"name": "python-stdlib", "version": version, "license": "PSF-2.0", "bytes": stdlib_bytes,
         "excluded_dirs": list(STDLIB_EXCLUDED_DIRS)}
    )
    with tempfile.TemporaryDirectory() as tmp:
        for split, packages, root in (("train", TRAIN_PACKAGES, train_dir), ("heldout", HELDOUT_PACKAGES, heldout_dir)):
            for package in packages:
                wheel = _fetch_wheel(package, Path(tmp))
                size = _extract_python_files(wheel, root / package.name)
                sources[split].append({**asdict(package), "bytes": size, "wheel": wheel.name})
                print(f"{split:8s} {package.name}=={package.version} {size / 1e6:.1f} MB", file=sys.stderr)
    (data_dir / "sources.json").write_text(json.dumps(sources, indent=2) + "\n")
    return sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m assistant.training.recipe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gather", help="download and lay out the training and held-out code")
    g.add_argument("data_dir", type=Path)
    sub.add_parser("train-args", help="print the training flags of the shipped model")
    args = parser.parse_args(argv)
    if args.command == "gather":
        sources = gather(args.data_dir)
        train_mb = sum(s["bytes"] for s in sources["train"]) / 1e6
        heldout_mb = sum(s["bytes"] for s in sources["heldout"]) / 1e6
        print(f"train {train_mb:.1f} MB, held-out {heldout_mb:.1f} MB -> {args.data_dir}")
    elif args.command == "train-args":
        print(" ".join(DEFAULT_TRAIN_ARGS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
