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
from safetensors.torch import load_file
from tqdm import tqdm

from .checkpoint import LEGACY_ATTENTION_NAMES, Checkpoint, legacy_name, write_checkpoint
from .errors import StageError
from .io import SafetensorsFile, cast_specs, write_safetensors

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
CHUNK_ROWS = 256  # rows merged at a time: the float32 temporaries stay in cache, not gigabytes


class LoraMerge:
    """A LoRA folded into a base's LM tensors as they stream through: W + scaling * B @ A in
    float32, rounded to the target dtype once, with the norms of what the update was and what of
    it survived rounding. `merge` writes the result as a checkpoint; `export(..., adapter=...)`
    writes it straight into the runtime folder (one read of the base, one write)."""

    def __init__(self, base: Checkpoint, adapter: Path):
        self.base, self.adapter = base, adapter
        self.lora, config = read_adapter(adapter)
        self.scaling, self.rank = float(config["lora_scaling"]), int(config.get("lora_rank", 0))
        self.pairs = {k.removesuffix(".lora_A.weight") for k in self.lora if k.endswith(".lora_A.weight")}
        self.tables = {k: v for k, v in self.lora.items() if ".lora_" not in k}  # ft_embed: full replacements
        self.used: set[str] = set()
        self.sums = {"update": 0.0, "kept": 0.0, "error": 0.0}  # squared norms, summed over tensors

    def tensors(self, f, specs: dict) -> Iterator[tuple[str, torch.Tensor]]:
        """(stored name, merged tensor in its spec's dtype) for every key of `specs`, in order."""
        for key, (target, _) in tqdm(specs.items(), desc="merge", unit="tensor", leave=False):
            stored = f.get_tensor(key)
            module = _module_of(key)
            if key in self.tables:
                self.used.add(key)
                yield key, _replace_table(key, stored, self.tables[key]).to(target)
            elif module in self.pairs:
                yield key, self._merge_pair(key, module, stored, target)
            else:
                yield key, stored.to(target)
        leftover = sorted(set(self.lora) - self.used)
        if leftover:
            raise MergeError(f"{self.adapter}: {len(leftover)} adapter tensors match nothing in {self.base.files['lm']} "
                             f"(first: {leftover[0]}); was it trained on another base?")

    def _merge_pair(self, key: str, module: str, stored: torch.Tensor, target: torch.dtype) -> torch.Tensor:
        a, b = self.lora[f"{module}.lora_A.weight"].float(), self.lora[f"{module}.lora_B.weight"].float()
        if b.shape[0] != stored.shape[0] or a.shape[1] != stored.shape[1] or a.shape[0] != b.shape[1]:
            raise MergeError(f"{self.adapter}: LoRA for {key} has A {tuple(a.shape)}, B {tuple(b.shape)}; "
                             f"the base weight is {tuple(stored.shape)}: adapter and base do not match")
        if self.rank and a.shape[0] != self.rank:
            raise MergeError(f"{self.adapter}: {module}.lora_A has rank {a.shape[0]}, config says lora_rank {self.rank}")
        out = torch.empty(stored.shape, dtype=target)
        b = b * self.scaling
        for lo in range(0, stored.shape[0], CHUNK_ROWS):  # a few rows at a time: temporaries stay in cache
            rows = slice(lo, lo + CHUNK_ROWS)
            update = torch.mm(b[rows], a)
            base = stored[rows].float()
            out[rows] = rounded = (base + update).to(target)  # W + update in float32, rounded once
            kept = rounded.float() - base  # what of the update survives rounding (a new tensor even in f32)
            self.sums["update"] += _squared_norm(update)
            self.sums["kept"] += _squared_norm(kept)
            self.sums["error"] += _squared_norm(kept.sub_(update))  # bf16(W') - (W + update)
        self.used.update({f"{module}.lora_A.weight", f"{module}.lora_B.weight"})
        return out

    def report(self) -> MergeReport:
        norm = self.sums["update"] ** 0.5
        return MergeReport(len(self.pairs), norm, (self.sums["kept"] ** 0.5) / norm if norm else 0.0,
                           (self.sums["error"] ** 0.5) / norm if norm else 0.0)


def merge(base: Checkpoint | Path, adapter: Path, out: Path, dtype: str = "bf16") -> MergeReport:
    """Write the merged checkpoint to `out`; return how much of the update survived rounding.

    `dtype` (merge.dtype): of the merged LM file; 'bf16' keeps the base's own (bf16 for Kyutai's
    files), 'f32' keeps the exact sum, for parity checks."""
    if dtype not in MERGED_DTYPES:
        raise MergeError(f"merge.dtype is {dtype!r}; choose one of {sorted(MERGED_DTYPES)}")
    base = Checkpoint.of(base)
    files, dtype = base.files, MERGED_DTYPES[dtype]
    merger = LoraMerge(base, adapter)

    def write_lm(path: Path) -> None:
        # Tensor by tensor: the merged model is never in memory whole.
        with SafetensorsFile(files["lm"]) as f:
            specs = cast_specs(f, dtype)
            write_safetensors(path, {legacy_name(k): spec for k, spec in specs.items()},
                              ((legacy_name(k), t) for k, t in merger.tensors(f, specs)))

    config = {k: v for k, v in base.config.items() if k not in LORA_KEYS}
    write_checkpoint(Path(out), write_lm, config, base, files["lm"].name)
    return merger.report()


def _squared_norm(x: torch.Tensor) -> float:
    flat = x.reshape(-1)
    return torch.dot(flat, flat).item()


def _replace_table(key: str, stored: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    if table.shape != stored.shape:
        raise MergeError(f"embedding table {key}: adapter has {tuple(table.shape)}, base {tuple(stored.shape)}")
    return table.to(stored.dtype)
