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

from .checkpoint import LEGACY_ATTENTION_NAMES, Checkpoint, legacy_name, write_checkpoint
from .errors import StageError
from .io import Rewrite, SafetensorsFile, cast_specs, rewrite_safetensors

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


def read_adapter(adapter_dir: Path) -> tuple[Path, dict]:
    """lora.safetensors and the config of a training checkpoint (or a run's `final/`)."""
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
    return weights, cfg


MERGED_DTYPES = {"bf16": None, "f32": "F32"}  # merge.dtype -> LM file dtype (None: the base's own)


class LoraMerge:
    """A LoRA to fold into a base's LM tensors: W + scaling * B @ A in float32, rounded to the
    target dtype once, with the norms of what the update was and what of it survived rounding.
    `merge` writes the result as a checkpoint; `export(..., adapter=...)` writes it straight into
    the runtime folder (one read of the base, one write). The arithmetic is candle_bridge's
    (see `io.rewrite_safetensors`); this checks that the adapter fits and plans each tensor."""

    def __init__(self, base: Checkpoint, adapter: Path):
        self.base, self.adapter = base, adapter
        self.weights, config = read_adapter(adapter)
        self.scaling, self.rank = float(config["lora_scaling"]), int(config.get("lora_rank", 0))
        with SafetensorsFile(self.weights) as f:
            self.shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
        self.pairs = {k.removesuffix(".lora_A.weight") for k in self.shapes if k.endswith(".lora_A.weight")}
        self.tables = {k for k in self.shapes if ".lora_" not in k}  # ft_embed: full replacements
        self.sums = (0.0, 0.0, 0.0)  # squared norms of the update, what was kept, the rounding error

    def rewrite(self, src: Path, dst: Path, specs: dict[str, tuple[str, list[int]]]) -> str:
        """Write `dst` from the base LM file `src`: every key of `specs` (dtype, shape; in file
        order) under Kyutai's name, merged where the adapter has a pair, replaced where it has a
        table. Returns the file's sha256."""
        entries, used = [], set()
        for key, (dtype, shape) in specs.items():
            module = _module_of(key)
            if key in self.tables:
                if self.shapes[key] != shape:
                    raise MergeError(f"embedding table {key}: adapter has {tuple(self.shapes[key])}, base {tuple(shape)}")
                entries.append(Rewrite(legacy_name(key), key, dtype, shape, "table", key))
                used.add(key)
            elif module in self.pairs:
                a, b = f"{module}.lora_A.weight", f"{module}.lora_B.weight"
                self._check_pair(key, shape, a, b)
                entries.append(Rewrite(legacy_name(key), key, dtype, shape, "merge", a, b))
                used.update({a, b})
            else:
                entries.append(Rewrite(legacy_name(key), key, dtype, shape))
        leftover = sorted(set(self.shapes) - used)
        if leftover:
            raise MergeError(f"{self.adapter}: {len(leftover)} adapter tensors match nothing in {self.base.files['lm']} "
                             f"(first: {leftover[0]}); was it trained on another base?")
        sha256, sums = rewrite_safetensors(src, dst, entries, self.weights, self.scaling)
        self.sums = tuple(a + b for a, b in zip(self.sums, sums))
        return sha256

    def _check_pair(self, key: str, shape: list[int], a: str, b: str) -> None:
        a_shape, b_shape = self.shapes.get(a, []), self.shapes.get(b, [])
        if len(a_shape) != 2 or len(b_shape) != 2 or len(shape) != 2 or b_shape[0] != shape[0] \
                or a_shape[1] != shape[1] or a_shape[0] != b_shape[1]:
            raise MergeError(f"{self.adapter}: LoRA for {key} has A {tuple(a_shape)}, B {tuple(b_shape)}; "
                             f"the base weight is {tuple(shape)}: adapter and base do not match")
        if self.rank and a_shape[0] != self.rank:
            raise MergeError(f"{self.adapter}: {a.removesuffix('.weight')} has rank {a_shape[0]}, "
                             f"config says lora_rank {self.rank}")

    def report(self) -> MergeReport:
        update, kept, error = (v ** 0.5 for v in self.sums)
        return MergeReport(len(self.pairs), update, kept / update if update else 0.0, error / update if update else 0.0)


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
        merger.rewrite(files["lm"], path, specs)

    config = {k: v for k, v in base.config.items() if k not in LORA_KEYS}
    write_checkpoint(Path(out), write_lm, config, base, files["lm"].name)
    return merger.report()
