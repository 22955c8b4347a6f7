"""`models pull` against a Hugging Face hub cache the tests write in huggingface_hub's
exact layout (models--ORG--NAME/{blobs,snapshots/<commit>,refs/main}), offline: the real
download code resolves every file from it, as it would after a real download."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from assistant.cli import main
from assistant.hub import HubError, pull
from models.base_import import read_base
from models.gguf_export import export_model, quant_dir
from models.tokenizer import ByteTokenizer, train_bpe
from models.checkpoint import load_model, save_model
from models.transformer import MTPTransformer
from tests.models.test_base_import import CODE, tiny_base, write_hf_llama

PROJECT = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OLD_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def write_hub_repo(cache: Path, repo_id: str, files: dict[str, Path], commit: str = COMMIT, main: bool = True) -> Path:
    """One revision of a repository in the hub cache: each file a blob named by its sha256,
    linked from snapshots/<commit>/, and refs/main naming the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if main:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """HF_HOME with a GGUF repository (two revisions), a Hugging Face llama directory and a
    GGUF of an architecture nobody supports."""
    root = tmp_path_factory.mktemp("hub")
    cache = root / "hf_home" / "hub"
    small = tiny_base()
    model = MTPTransformer(small.config.replace(max_seq_len=512))  # room for add-heads' default windows
    model.load_state_dict(small.state_dict())
    source = save_model(root / "source", model, ByteTokenizer())
    export_model(source, "f32")
    main_gguf = quant_dir(source, "f32") / "main.gguf"
    write_hub_repo(cache, "org/tiny-GGUF", {"tiny-f32.gguf": main_gguf, "README.md": root / "source" / "config.json"})
    old = root / "old.gguf"
    shutil.copyfile(main_gguf, old)
    with open(old, "r+b") as f:  # another revision: other weights at the end of the file
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x00\x80\x3f")
    write_hub_repo(cache, "org/tiny-GGUF", {"tiny-f32.gguf": old}, commit=OLD_COMMIT, main=False)

    tokenizer = train_bpe([CODE], 300)
    write_hf_llama(root / "hf", tiny_base(seed=1, vocab_size=tokenizer.vocab_size), tokenizer)
    write_hub_repo(cache, "org/tiny-llama", {p.name: p for p in (root / "hf").iterdir()})

    odd = root / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(odd), "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    write_hub_repo(cache, "org/gpt2-GGUF", {"gpt2.gguf": odd})
    return root, main_gguf, old


@pytest.fixture
def offline(hub, monkeypatch, tmp_path):
    """The environment a user sets (HF_HOME, HF_HUB_OFFLINE=1), and the same in
    huggingface_hub.constants, which reads the environment once, when first imported."""
    from huggingface_hub import constants

    home = hub[0] / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MTP_ASSISTANT_HOME", str(tmp_path / "store"))
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub


def test_a_gguf_file_resolves_from_the_cache_at_the_revision_asked(offline):
    _, main_gguf, old = offline
    pulled = pull("org/tiny-GGUF", "tiny-f32.gguf")
    assert pulled.path.name == "tiny-f32.gguf" and COMMIT in str(pulled.path)
    assert pulled.path.read_bytes() == main_gguf.read_bytes()
    assert pulled.info == {"kind": "gguf", "architecture": "llama", "quant": "f32", "dim": 64, "blocks": 3,
                           "vocab": 261, "context_length": 512}
    older = pull("org/tiny-GGUF", "tiny-f32.gguf", revision=OLD_COMMIT)
    assert older.path.read_bytes() == old.read_bytes() != main_gguf.read_bytes()


def test_a_hugging_face_directory_is_the_snapshot_the_base_reader_reads(offline):
    pulled = pull("org/tiny-llama")
    assert pulled.info["kind"] == "hf" and pulled.info["architecture"] == "llama"
    assert sorted(p.name for p in pulled.path.iterdir()) == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "tokenizer.json"]
    base = read_base(pulled.path)
    assert base.kind == "hf" and base.config.n_layers == 3


@pytest.mark.parametrize(
    ("repo_id", "filename", "revision", "expected"),
    [
        ("org/absent", "x.gguf", None, r"cannot download org/absent/x.gguf \(HF_HUB_OFFLINE is set\) and it is not "
                                       r"in the hub's cache .*hf_home/hub: run `hf download org/absent x.gguf`"),
        ("org/tiny-GGUF", "other.gguf", None, r"cannot download org/tiny-GGUF/other.gguf \(HF_HUB_OFFLINE"),
        ("org/tiny-GGUF", "tiny-f32.gguf", "v9", r"tiny-f32.gguf@v9 \(HF_HUB_OFFLINE.*--revision v9`"),
        ("org/tiny-GGUF", None, None, r"org/tiny-GGUF is not a Hugging Face model directory \(no config.json\); "
                                      r"pick one of its GGUF files with --file: tiny-f32.gguf$"),
        ("org/gpt2-GGUF", "gpt2.gguf", None, r"gpt2.gguf: architecture 'gpt2' is not supported; supported: llama"),
        ("not a repo id", "x.gguf", None, r"invalid repository id 'not a repo id'"),
    ],
)
def test_failures_are_one_line(offline, repo_id, filename, revision, expected):
    with pytest.raises(HubError, match=expected) as e:
        pull(repo_id, filename, revision)
    assert "\n" not in str(e.value)


def test_pull_then_add_heads_in_one_command(offline, tmp_path, capsys):
    corpus = tmp_path / "code"
    corpus.mkdir()
    (corpus / "a.py").write_text(CODE)
    argv = ["models", "pull", "org/tiny-GGUF", "--file", "tiny-f32.gguf", "--add-heads", "--data", str(corpus),
            "--heads", "2", "--minutes", "0.01", "--name", "tiny-mtp"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "llama GGUF base, f32: dim 64, 3 blocks" in out and "added 2 heads" in out
    model_dir = tmp_path / "store" / "models" / "tiny-mtp"
    loaded = load_model(model_dir)
    assert loaded.config.n_future_tokens == 3 and loaded.provenance["base"]["kind"] == "gguf"
    assert (quant_dir(model_dir, "f32") / "main.gguf").read_bytes() == offline[1].read_bytes()  # the base, as pulled
    assert main(["models", "pull", "org/absent", "--file", "x.gguf"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mtp-assistant: error: cannot download org/absent/x.gguf") and err.count("\n") == 1


def test_the_command_reads_the_cache_from_the_environment(hub, tmp_path):
    """A fresh process: HF_HOME and HF_HUB_OFFLINE as a user sets them, nothing patched."""
    env = {**os.environ, "HF_HOME": str(hub[0] / "hf_home"), "HF_HUB_OFFLINE": "1",
           "MTP_ASSISTANT_HOME": str(tmp_path / "store"), "PYTHONPATH": str(PROJECT)}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-m", "assistant.cli", "models", "pull", "org/tiny-llama"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    snapshot = hub[0] / "hf_home" / "hub" / "models--org--tiny-llama" / "snapshots" / COMMIT
    assert f"at {snapshot}" in result.stdout
    assert f"next: mtp-assistant models add-heads {snapshot} --name tiny-llama-mtp --repo YOUR_CODE" in result.stdout
