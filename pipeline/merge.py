"""merge: fold a trained LoRA into the base weights, W' = W + scaling * (B @ A).

Computed in float32 from the base's stored values and rounded to bf16 once. Kyutai's Rust
runtime cannot apply LoRA, so this is what ships. With `ft_embed` the adapter's embedding
tables replace the base's. The output is a complete checkpoint directory (same files and
names as the base) whose config has no `lora*` keys: a leftover `"lora": true` would make
moshi wrap the model in fresh, random LoRA layers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tqdm import tqdm

from .checkpoint import LEGACY_ATTENTION_NAMES, Checkpoint, legacy_name, write_checkpoint
from .errors import StageError
from .io import cast_specs, write_safetensors

LORA_KEYS = ("lora", "lora_rank", "lora_scaling", "lora_name")


class MergeError(StageError):
    """An adapter that does not fit the base; the message names the tensor or field."""


@dataclass
class MergeReport:
    tensors_updated: int
    update_norm: float  # || scaling * B @ A || over all merged weights (float32)
    kept_fraction: float  # || bf16(W') - W || / || update ||: how much survives bf16 rounding
    rounding_error: float  # || bf16(W') - (W + update) || / || update ||


def _module_of(base_key: str) -> str:
    """The PyTorch module path a base weight belongs to (legacy attention names mapped)."""
    for pytorch, legacy in LEGACY_ATTENTION_NAMES.items():
        if base_key.endswith(legacy):
            return base_key[: -len(legacy)] + pytorch.removesuffix(".weight")
    return base_key.removesuffix(".weight")


def read_adapter(adapter_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """lora.safetensors and config.json of a training checkpoint (or a run's `final/`)."""
    adapter_dir = Path(adapter_dir)
    if (adapter_dir / "final" / "lora.safetensors").is_file():
        adapter_dir = adapter_dir / "final"
    weights, config = adapter_dir / "lora.safetensors", adapter_dir / "config.json"
    for path in (weights, config):
        if not path.is_file():
            raise MergeError(f"{path}: missing; pass a run folder from `invoke train` or its final/ folder")
    cfg = json.loads(config.read_text())
    if not cfg.get("lora") or "lora_scaling" not in cfg:
        raise MergeError(f"{config}: no `lora`/`lora_scaling` fields; this is not an adapter config")
    return load_file(str(weights)), cfg


MERGED_DTYPES = {"bf16": None, "f32": torch.float32}  # merge.dtype -> LM file dtype (None: the base's own)


def merge(base: Checkpoint | Path, adapter: Path, out: Path, dtype: str = "bf16") -> MergeReport:
    """Write the merged checkpoint to `out`; return how much of the update survived rounding.

    `dtype` (merge.dtype): of the merged LM file; 'bf16' keeps the base's own (bf16 for Kyutai's
    files), 'f32' keeps the exact sum, for parity checks."""
    if dtype not in MERGED_DTYPES:
        raise MergeError(f"merge.dtype is {dtype!r}; choose one of {sorted(MERGED_DTYPES)}")
    base = Checkpoint.of(base)
    files, dtype = base.files, MERGED_DTYPES[dtype]
    lora, adapter_cfg = read_adapter(adapter)
    scaling, rank = float(adapter_cfg["lora_scaling"]), int(adapter_cfg.get("lora_rank", 0))
    pairs = {k.removesuffix(".lora_A.weight") for k in lora if k.endswith(".lora_A.weight")}
    tables = {k: v for k, v in lora.items() if ".lora_" not in k}  # ft_embed: full replacements
    used: set[str] = set()
    sums = {"update": 0.0, "kept": 0.0, "error": 0.0}  # squared norms, summed over tensors

    def merged_tensors(f, specs: dict) -> Iterator[tuple[str, torch.Tensor]]:
        for key, (target, _) in tqdm(specs.items(), desc="merge", unit="tensor", leave=False):
            stored = f.get_tensor(key)
            module = _module_of(key)
            if key in tables:
                used.add(key)
                yield legacy_name(key), _replace_table(key, stored, tables[key]).to(target)
            elif module in pairs:
                a, b = lora[f"{module}.lora_A.weight"].float(), lora[f"{module}.lora_B.weight"].float()
                if b.shape[0] != stored.shape[0] or a.shape[1] != stored.shape[1] or a.shape[0] != b.shape[1]:
                    raise MergeError(f"{adapter}: LoRA for {key} has A {tuple(a.shape)}, B {tuple(b.shape)}; "
                                     f"the base weight is {tuple(stored.shape)}: adapter and base do not match")
                if rank and a.shape[0] != rank:
                    raise MergeError(f"{adapter}: {module}.lora_A has rank {a.shape[0]}, config says lora_rank {rank}")
                # Few full-size float32 temporaries: this loop is most of the merge's time at 1B.
                update = torch.mm(b, a).mul_(scaling)
                rounded = update.add(stored).to(target)  # W + update in float32, rounded once
                kept = rounded.float() - stored  # what of the update survives rounding (a new tensor:
                # with dtype=float32, `rounded.float()` is `rounded` itself)
                sums["update"] += _squared_norm(update)
                sums["kept"] += _squared_norm(kept)
                sums["error"] += _squared_norm(kept.sub_(update))  # bf16(W') - (W + update)
                used.update({f"{module}.lora_A.weight", f"{module}.lora_B.weight"})
                yield legacy_name(key), rounded
            else:
                yield legacy_name(key), stored.to(target)
        leftover = sorted(set(lora) - used)
        if leftover:
            raise MergeError(f"{adapter}: {len(leftover)} adapter tensors match nothing in {files['lm']} "
                             f"(first: {leftover[0]}); was it trained on another base?")

    def write_lm(path: Path) -> None:
        # Tensor by tensor: the merged model is never in memory whole.
        with safe_open(str(files["lm"]), "pt") as f:
            specs = cast_specs(f, dtype)
            write_safetensors(path, {legacy_name(k): spec for k, spec in specs.items()}, merged_tensors(f, specs))

    config = {k: v for k, v in base.config.items() if k not in LORA_KEYS}
    write_checkpoint(Path(out), write_lm, config, base, files["lm"].name)
    norm = sums["update"] ** 0.5
    return MergeReport(len(pairs), norm, (sums["kept"] ** 0.5) / norm if norm else 0.0,
                       (sums["error"] ** 0.5) / norm if norm else 0.0)


def _squared_norm(x: torch.Tensor) -> float:
    flat = x.reshape(-1)
    return torch.dot(flat, flat).item()


def _replace_table(key: str, stored: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    if table.shape != stored.shape:
        raise MergeError(f"embedding table {key}: adapter has {tuple(table.shape)}, base {tuple(stored.shape)}")
    return table.to(stored.dtype)
