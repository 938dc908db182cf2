"""One checkpoint directory in the `kyutai/stt-1b-en_fr-candle` layout, opened once.

`Checkpoint.open(path)` reads `config.json` once, checks that the files it names exist (and are
safetensors, never pickles), and answers what every stage asks: the text delay, whether the
pause heads are there, and the LM, Mimi and tokenizer, loaded with moshi's own loaders only
when asked for. Finding a checkpoint (preset, directory, hub id) is `pipeline.models`; building
one from scratch is `pipeline.presets`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .constants import DEFAULT_TEXT_DELAY, FRAME_RATE
from .errors import StageError
from .io import atomic_dir

if TYPE_CHECKING:  # merge and export open checkpoints without importing torch
    import torch

SAFE_WEIGHTS = (".safetensors", ".sft", ".sfts")
# PyTorch moshi names -> the legacy names that Kyutai's files (and the Rust crate) use.
LEGACY_ATTENTION_NAMES = {
    ".self_attn.in_projs.0.weight": ".self_attn.in_proj_weight",
    ".self_attn.out_projs.0.weight": ".self_attn.out_proj.weight",
}
# Keys of config.json that moshi's CheckpointInfo pops before building the LM.
NON_LM_KEYS = {
    "moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name", "lora_name", "model_type",
    "lm_gen_config", "tts_config", "stt_config", "model_id",
}


class ModelError(StageError):
    """A model that cannot be found or used; the message says what to pass instead."""


def legacy_name(key: str) -> str:
    """A PyTorch attention key under its name in Kyutai's published files (others unchanged)."""
    for new, old in LEGACY_ATTENTION_NAMES.items():
        if key.endswith(new):
            key = key[: -len(new)] + old
    return key


def to_legacy_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename PyTorch attention keys to the names in Kyutai's published files."""
    return {legacy_name(key): value for key, value in state.items()}


@dataclass(frozen=True, eq=False)
class Checkpoint:
    path: Path
    config: dict  # config.json as written
    files: dict[str, Path]  # config, lm, mimi, tokenizer and (small Mimis) mimi_config

    @classmethod
    def open(cls, path: str | Path) -> Checkpoint:
        path = Path(path)
        config_path = path / "config.json"
        if not config_path.is_file():
            raise ModelError(f"{path}: no config.json; pass a checkpoint directory like kyutai/stt-1b-en_fr-candle")
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelError(f"{config_path}: not valid JSON ({exc.msg} at line {exc.lineno}); "
                             "fix or re-download it") from None
        files = {"config": config_path, "lm": path / config.get("moshi_name", "model.safetensors")}
        for key, field in (("mimi", "mimi_name"), ("tokenizer", "tokenizer_name")):
            if field not in config:
                raise ModelError(f"{config_path}: field {field!r} is missing; it names the {key} file")
            files[key] = path / config[field]
        if "mimi_config_name" in config:
            files["mimi_config"] = path / config["mimi_config_name"]
        for key, file in files.items():
            if not file.is_file():
                raise ModelError(f"{file}: {key} file named in config.json is missing; copy it into {path}")
        for key in ("lm", "mimi"):
            if files[key].suffix not in SAFE_WEIGHTS:
                # moshi would torch.load() it: unpickling an untrusted file can run arbitrary code.
                raise ModelError(f"{files[key]}: not a safetensors file; pickle checkpoints are refused, "
                                 "convert it to .safetensors first")
        return cls(path, config, files)

    @classmethod
    def of(cls, source: Checkpoint | str | Path) -> Checkpoint:
        """`source` itself if it is already open, else the directory opened."""
        return source if isinstance(source, Checkpoint) else cls.open(source)

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:  # an open checkpoint still is its directory: Path(ckpt) works
        return str(self.path)

    @property
    def text_delay(self) -> float:
        """Seconds by which the text stream follows the audio (`stt_config.audio_delay_seconds`)."""
        return float(self.config.get("stt_config", {}).get("audio_delay_seconds", DEFAULT_TEXT_DELAY))

    @property
    def delay_frames(self) -> int:
        """The text delay in frames (moshi-server's `asr_delay_in_tokens`)."""
        return round(self.text_delay * FRAME_RATE)

    @property
    def has_extra_heads(self) -> bool:
        """Whether the checkpoint carries the pause-prediction heads (the `-candle` repos do)."""
        return int(self.config.get("extra_heads_num_heads", 0)) > 0

    @cached_property
    def info(self):
        """moshi's CheckpointInfo for this directory, without any network access."""
        from moshi.models.loaders import CheckpointInfo

        info = CheckpointInfo.from_hf_repo(
            str(self.path), moshi_weights=self.files["lm"], mimi_weights=self.files["mimi"],
            tokenizer=self.files["tokenizer"], config_path=self.files["config"],
            mimi_config_path=self.files.get("mimi_config"),
        )
        if info.lm_config.get("dep_q", 0) != 0:
            raise ModelError(f"{self.files['config']}: dep_q is {info.lm_config['dep_q']}; "
                             "an STT checkpoint has dep_q = 0")
        return info

    def load_lm(self, device: str = "cpu", dtype: torch.dtype | None = None, **overrides):
        """The STT language model, strictly loaded by moshi's `get_moshi_lm` (float32 unless
        `dtype`). `overrides` go to moshi's `lm_kwargs_overrides` (e.g. gradient_checkpointing=True)."""
        import torch

        return self.info.get_moshi(device=device, dtype=dtype or torch.float32, lm_kwargs_overrides=overrides)

    def load_mimi(self, device: str = "cpu"):
        """The checkpoint's Mimi with as many codebooks as the LM reads."""
        return self.info.get_mimi(device=device)

    @cached_property
    def tokenizer(self):
        return self.info.get_text_tokenizer()


def write_checkpoint(out_dir: Path, state: dict[str, torch.Tensor] | Callable[[Path], None], config: dict,
                     source: Checkpoint | str | Path, lm_name: str = "model.safetensors") -> Path:
    """A checkpoint directory holding `state` (PyTorch or legacy names: stored under the legacy
    ones Kyutai's files use; or a function that writes the LM file at the path it is given) and
    `config`, with the Mimi, its config and the tokenizer copied from checkpoint `source`. Atomic."""
    files = Checkpoint.of(source).files
    with atomic_dir(out_dir) as tmp:
        if callable(state):
            state(tmp / lm_name)
        else:
            from safetensors.torch import save_file

            save_file(to_legacy_names({k: v.contiguous() for k, v in state.items()}), str(tmp / lm_name))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for key in ("mimi", "tokenizer", "mimi_config"):
            if key in files:
                shutil.copyfile(files[key], tmp / files[key].name)
    return out_dir


def graft_heads(base: Checkpoint | str | Path, donor: Checkpoint | str | Path, out: str | Path) -> Path:
    """Copy of checkpoint `base` carrying the pause heads of `donor` (same LM width).

    For bases published without heads (`kyutai/stt-1b-en_fr` lacks the ones its `-candle`
    twin has): the heads read the final hidden state, so they only make sense when the donor
    shares the base's trunk, e.g. the `-candle` repo of the same model.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    base, donor = Checkpoint.of(base), Checkpoint.of(donor)
    if not donor.has_extra_heads:
        raise ModelError(f"{donor.files['config']}: the donor has no extra heads to graft")
    if donor.config["dim"] != base.config["dim"]:
        raise ModelError(f"{donor}: dim {donor.config['dim']} differs from the base's {base.config['dim']}; "
                         "heads only transfer between checkpoints of the same model")
    with safe_open(str(base.files["lm"]), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("extra_heads.")}
    dtype = state["text_linear.weight"].dtype
    with safe_open(str(donor.files["lm"]), "pt") as f:
        state |= {k: f.get_tensor(k).to(dtype) for k in f.keys() if k.startswith("extra_heads.")}
    config = base.config | {"extra_heads_num_heads": donor.config["extra_heads_num_heads"],
                            "extra_heads_dim": donor.config.get("extra_heads_dim", 6)}
    with atomic_dir(Path(out)) as tmp:
        for key, path in base.files.items():
            if key not in ("lm", "config"):
                shutil.copyfile(path, tmp / path.name)
        save_file(state, str(tmp / base.files["lm"].name))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return Path(out)
