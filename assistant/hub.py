"""Bases from the Hugging Face hub, downloaded into the hub's own cache.

`pull` fetches one GGUF file of a repository, or the parts of a Hugging Face model
directory the base reader uses (config.json, *.safetensors, tokenizer.json), with
huggingface_hub: its cache (HF_HOME, HF_HUB_CACHE), its resumable downloads and progress
bars, its token (HF_TOKEN or `hf auth login`, for gated repositories), its offline mode
(HF_HUB_OFFLINE=1 resolves from the cache alone). The files stay in that cache, where
other tools find them too; the result is the local path `models add-heads` takes.

Failures are one line (HubError): no network and not cached, an unknown repository,
revision or file, a gated repository without access, an unsupported architecture.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.base_import import describe_base, describe_hf_config
from models.checkpoint import ModelFileError

# What the Hugging Face base reader reads; nothing else of a repository is downloaded
# (repositories also hold pickled weights, ONNX and GGUF copies, images).
HF_DIR_FILES = ["config.json", "*.safetensors", "tokenizer.json"]


class HubError(Exception):
    """A download that cannot be done; the message is one line for the user."""


@dataclass(frozen=True)
class Pulled:
    repo_id: str
    path: Path  # the GGUF file or the snapshot directory, inside the hub's cache
    info: dict[str, Any]  # describe_base's summary

    def summary(self) -> str:
        i = self.info
        quant = f", {i['quant']}" if i["quant"] else ""
        return (f"{i['architecture']} {i['kind'].upper() if i['kind'] == 'gguf' else 'Hugging Face'} base{quant}: "
                f"dim {i['dim']}, {i['blocks']} blocks, vocabulary {i['vocab']}, context {i['context_length']}")


def _what(repo_id: str, filename: str | None, revision: str | None) -> str:
    where = f"{repo_id}/{filename}" if filename else repo_id
    return f"{where}@{revision}" if revision else where


def _cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _hub_error(e: Exception, repo_id: str, filename: str | None, revision: str | None) -> HubError:
    """huggingface_hub's exception as one line that says what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = _what(repo_id, filename, revision)
    # Order matters: GatedRepoError is a RepositoryNotFoundError, LocalEntryNotFoundError an EntryNotFoundError.
    if isinstance(e, GatedRepoError):
        return HubError(f"{repo_id} is gated: accept its terms at https://huggingface.co/{repo_id}, then log in "
                        "(`hf auth login`) or set HF_TOKEN")
    if isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "no network"
        fetch = f"hf download {repo_id}" + (f" {filename}" if filename else "") + (f" --revision {revision}" if revision else "")
        return HubError(f"cannot download {what} ({why}) and it is not in the hub's cache {_cache_dir()}: "
                        f"run `{fetch}` where there is network and copy that cache here (or point HF_HOME at it)")
    if isinstance(e, RevisionNotFoundError):
        return HubError(f"{repo_id} has no revision {revision!r}")
    if isinstance(e, RepositoryNotFoundError):
        return HubError(f"no repository {repo_id!r} on the hub (a private one needs `hf auth login` or HF_TOKEN)")
    if isinstance(e, EntryNotFoundError):
        return HubError(f"{repo_id} has no file {filename!r}" if filename else
                        f"{repo_id} has no config.json: not a Hugging Face model directory (name a GGUF file with --file)")
    if isinstance(e, HFValidationError):
        return HubError(f"invalid repository id {repo_id!r}: expected ORG/NAME")
    return HubError(f"cannot download {what}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")


def _download_errors() -> tuple[type[Exception], ...]:
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    # OSError: a full disk or an unwritable cache; the hub's errors above are OSErrors too.
    return (HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, OSError)


def _gguf_names(repo_id: str, revision: str | None) -> list[str]:
    """The repository's GGUF files, to suggest for --file: from the hub, else from the cache."""
    from huggingface_hub import HfApi, constants, snapshot_download

    names: list[str] = []
    try:
        if not constants.HF_HUB_OFFLINE:
            names = HfApi().list_repo_files(repo_id, revision=revision)
    except Exception:  # only a hint for the error being reported; the cache may still say
        names = []
    if not names:
        try:
            snapshot = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
            names = [str(p.relative_to(snapshot)) for p in snapshot.rglob("*")]
        except Exception:
            names = []
    return sorted(n for n in names if fnmatch.fnmatch(n.lower(), "*.gguf"))


def pull(repo_id: str, filename: str | None = None, revision: str | None = None) -> Pulled:
    """Download (or find in the cache) one GGUF file, or a Hugging Face model directory,
    and check it is a base this project reads. Raises HubError."""
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        if filename:
            path = Path(hf_hub_download(repo_id, filename, revision=revision))
        else:
            # config.json first: an unsupported architecture is refused before gigabytes of weights.
            config = Path(hf_hub_download(repo_id, "config.json", revision=revision))
            describe_hf_config(config.parent)
            path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=HF_DIR_FILES))
    except ModelFileError as e:
        raise HubError(str(e)) from None
    except _download_errors() as e:
        from huggingface_hub.errors import EntryNotFoundError

        if filename is None and isinstance(e, EntryNotFoundError):
            ggufs = _gguf_names(repo_id, revision)  # a repository of GGUF files, asked for without --file
            if ggufs:
                raise _no_config(repo_id, ggufs) from None
        raise _hub_error(e, repo_id, filename, revision) from None
    try:
        info = describe_base(path)
    except ModelFileError as e:
        raise HubError(str(e)) from None
    return Pulled(repo_id, path, info)


def _no_config(repo_id: str, ggufs: list[str]) -> HubError:
    shown = ", ".join(ggufs[:6]) + (f" and {len(ggufs) - 6} more" if len(ggufs) > 6 else "")
    return HubError(f"{repo_id} is not a Hugging Face model directory (no config.json); pick one of its GGUF files "
                    f"with --file: {shown}")
