"""The corpus: the running Python's standard library and pinned, permissively licensed packages.

`gather` lays out DATA/train (trained on) and DATA/heldout (never trained on: the card's
held-out figures and the speed benchmark read it) and records them in DATA/sources.json.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from assistant.training.recipe.model_card import SOURCES_FILE, Source, Sources


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
    # Added for the GPU recipe (~125 MB more code, so that hundreds of millions of tokens
    # are a handful of epochs rather than dozens): scientific, tooling and web code.
    Package("pandas", "3.1.1", "BSD-3-Clause"),
    Package("scipy", "1.17.1", "BSD-3-Clause"),
    Package("scikit-learn", "1.9.1", "BSD-3-Clause"),
    Package("twisted", "26.10.0", "MIT"),
    Package("numpy", "2.4.6", "BSD-3-Clause"),
    Package("mypy", "2.4.1", "MIT"),
    Package("xarray", "2026.9.0", "Apache-2.0"),
    Package("dask", "2026.8.0", "BSD-3-Clause"),
    Package("sphinx", "9.0.4", "BSD-2-Clause"),
    Package("ipython", "9.18.1", "BSD-3-Clause"),
    Package("celery", "5.7.0", "BSD-3-Clause"),
    Package("prompt-toolkit", "3.0.53", "BSD-3-Clause"),
    Package("scrapy", "2.19.0", "BSD-3-Clause"),
    Package("aiohttp", "3.14.5", "Apache-2.0"),
    Package("alembic", "1.20.1", "MIT"),
    Package("gunicorn", "27.0.1", "MIT"),
    Package("kombu", "5.7.0", "BSD-3-Clause"),
    Package("jedi", "0.20.1", "MIT"),
    Package("openpyxl", "3.1.5", "MIT"),
    Package("babel", "2.19.0", "BSD-3-Clause"),
    Package("jsonschema", "4.26.0", "MIT"),
    Package("parso", "0.8.7", "MIT"),
    Package("pyyaml", "6.0.4", "MIT"),
    Package("sqlparse", "0.6.1", "BSD-3-Clause"),
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


def gather(data_dir: Path) -> Sources:
    """Build DATA/train and DATA/heldout from nothing; write DATA/sources.json and return it."""
    if data_dir.exists():
        shutil.rmtree(data_dir)
    train_dir, heldout_dir = data_dir / "train", data_dir / "heldout"
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    version = ".".join(map(str, sys.version_info[:3]))
    stdlib_bytes = _copy_python_files(stdlib, train_dir / "stdlib", STDLIB_EXCLUDED_DIRS)
    sources = Sources(train=[Source("python-stdlib", version, "PSF-2.0", stdlib_bytes,
                                    excluded_dirs=list(STDLIB_EXCLUDED_DIRS))], heldout=[])
    with tempfile.TemporaryDirectory() as tmp:
        for split, packages, root in (("train", TRAIN_PACKAGES, train_dir), ("heldout", HELDOUT_PACKAGES, heldout_dir)):
            for package in packages:
                wheel = _fetch_wheel(package, Path(tmp))
                size = _extract_python_files(wheel, root / package.name)
                getattr(sources, split).append(Source(package.name, package.version, package.license, size, wheel.name))
                print(f"{split:8s} {package.name}=={package.version} {size / 1e6:.1f} MB", file=sys.stderr)
    sources.write(data_dir / SOURCES_FILE)
    return sources
