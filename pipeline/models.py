"""Find a checkpoint (preset, local directory or hub repo id) and load it with moshi's loaders.

Every stage goes through `resolve_model` and `checkpoint_info`, so a hub id works for users who
are online, a local directory works everywhere, and the presets are built on first use.
STT specifics (dep_q = 0, the extra heads) are checked here; moshi itself is used unpatched.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .checkpoint import PRESETS, make_checkpoint

# The files moshi and the Rust runtime read from a checkpoint directory.
HUB_PATTERNS = ["config.json", "*.safetensors", "*.model", "*.json"]
SAFE_WEIGHTS = (".safetensors", ".sft", ".sfts")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelError(ValueError):
    """A model that cannot be found or used; the message says what to pass instead."""


def preset_dir(artifacts: Path, preset: str) -> Path:
    return Path(artifacts) / "checkpoints" / preset


def checkpoint_files(ckpt: Path) -> dict[str, Path]:
    """The files a checkpoint directory must hold, read from its config.json."""
    config_path = ckpt / "config.json"
    if not config_path.is_file():
        raise ModelError(f"{ckpt}: no config.json; pass a checkpoint directory like kyutai/stt-1b-en_fr-candle")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{config_path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix or re-download it") from None
    files = {"config": config_path, "lm": ckpt / config.get("moshi_name", "model.safetensors")}
    for key, field in (("mimi", "mimi_name"), ("tokenizer", "tokenizer_name")):
        if field not in config:
            raise ModelError(f"{config_path}: field {field!r} is missing; it names the {key} file")
        files[key] = ckpt / config[field]
    if "mimi_config_name" in config:
        files["mimi_config"] = ckpt / config["mimi_config_name"]
    for key, path in files.items():
        if not path.is_file():
            raise ModelError(f"{path}: {key} file named in config.json is missing; copy it into {ckpt}")
    for key in ("lm", "mimi"):
        if files[key].suffix not in SAFE_WEIGHTS:
            # moshi would torch.load() it: unpickling an untrusted file can run arbitrary code.
            raise ModelError(f"{files[key]}: not a safetensors file; pickle checkpoints are refused, "
                             "convert it to .safetensors first")
    return files


def resolve_model(source: str, artifacts: str | Path = "artifacts", revision: str | None = None,
                  seed: int = 0) -> Path:
    """A checkpoint directory for `source`: a preset name, a local directory or a hub repo id."""
    if source in PRESETS:
        ckpt = preset_dir(Path(artifacts), source)
        if not (ckpt / "config.json").is_file():
            print(f"building the '{source}' checkpoint in {ckpt} (first use)")
            make_checkpoint(source, ckpt, seed=seed)
        return ckpt
    path = Path(source).expanduser()
    if path.is_dir():
        checkpoint_files(path)
        return path
    if not _REPO_ID.match(source) or path.exists():
        raise ModelError(
            f"model {source!r} is neither a preset ({', '.join(PRESETS)}), a checkpoint directory, "
            "nor a hub repo id (owner/name)"
        )
    return _download(source, revision)


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


def checkpoint_info(ckpt: str | Path):
    """moshi's CheckpointInfo for a local directory, without any network access."""
    from moshi.models.loaders import CheckpointInfo

    ckpt = Path(ckpt)
    files = checkpoint_files(ckpt)
    info = CheckpointInfo.from_hf_repo(
        str(ckpt), moshi_weights=files["lm"], mimi_weights=files["mimi"],
        tokenizer=files["tokenizer"], config_path=files["config"],
        mimi_config_path=files.get("mimi_config"),
    )
    if info.lm_config.get("dep_q", 0) != 0:
        raise ModelError(f"{files['config']}: dep_q is {info.lm_config['dep_q']}; an STT checkpoint has dep_q = 0")
    return info


def has_extra_heads(ckpt: str | Path) -> bool:
    """Whether the checkpoint carries the pause-prediction heads (the `-candle` repos do)."""
    config = json.loads((Path(ckpt) / "config.json").read_text())
    return int(config.get("extra_heads_num_heads", 0)) > 0


def load_lm(ckpt: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32, **overrides):
    """The STT language model, strictly loaded by moshi's `get_moshi_lm`.

    `overrides` go to moshi's `lm_kwargs_overrides` (e.g. gradient_checkpointing=True).
    """
    return checkpoint_info(ckpt).get_moshi(device=device, dtype=dtype, lm_kwargs_overrides=overrides)


def load_mimi(ckpt: str | Path, device: str = "cpu"):
    """The checkpoint's Mimi with as many codebooks as the LM reads."""
    return checkpoint_info(ckpt).get_mimi(device=device)


def load_tokenizer(ckpt: str | Path):
    return checkpoint_info(ckpt).get_text_tokenizer()
