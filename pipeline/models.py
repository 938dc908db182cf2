"""Find a checkpoint: a preset name, the shipped organism, a local directory or a hub repo id -> an
open `Checkpoint`.

Every stage goes through `resolve_model`, so a hub id works for users who are online, a local
directory works everywhere, and the presets are built on first use. STT specifics (dep_q = 0,
the extra heads) are checked by `pipeline.checkpoint`; moshi itself is used unpatched.
"""

from __future__ import annotations

import re
from pathlib import Path

from .checkpoint import Checkpoint, ModelError
from .presets import PRESETS, make_checkpoint
from .shipped import NAMES as SHIPPED
from .shipped import materialize

# The files moshi and the Rust runtime read from a checkpoint directory.
HUB_PATTERNS = ["config.json", "*.safetensors", "*.model", "*.json"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

__all__ = ["Checkpoint", "ModelError", "preset_dir", "resolve_model"]


def preset_dir(artifacts: Path, preset: str) -> Path:
    return Path(artifacts) / "checkpoints" / preset


def resolve_model(source: str, artifacts: str | Path = "artifacts", revision: str | None = None,
                  seed: int = 0) -> Checkpoint:
    """The checkpoint for `source`: a preset name, the shipped organism ('organism', 'organism-ft'),
    a local directory or a hub repo id."""
    if source in SHIPPED:
        return materialize(source, Path(artifacts))
    if source in PRESETS:
        path = preset_dir(Path(artifacts), source)
        if not (path / "config.json").is_file():
            print(f"building the '{source}' checkpoint in {path} (first use)")
            make_checkpoint(source, path, seed=seed)
        return Checkpoint.open(path)
    path = Path(source).expanduser()
    if path.is_dir():
        return Checkpoint.open(path)
    if not _REPO_ID.match(source) or path.exists():
        raise ModelError(
            f"model {source!r} is neither a preset ({', '.join(PRESETS)}), a shipped model "
            f"({', '.join(SHIPPED)}), a checkpoint directory, "
            "nor a hub repo id (owner/name)"
        )
    return Checkpoint.open(_download(source, revision))


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS))
    except Exception as exc:  # noqa: BLE001 - any hub failure gets the same advice
        raise ModelError(
            f"could not fetch hub repo {repo_id!r} ({exc.__class__.__name__}); "
            f"if this machine is offline, download {repo_id} elsewhere and pass its local directory, "
            "e.g. --set model.source=/path/to/checkpoint"
        ) from None
