"""LoRA on the STT model through moshi's own `moshi.modules.lora` (W + scaling * B @ A).

Saved adapters use moshi's names and file layout, so `moshi.models.loaders.get_moshi_lm(...,
lora_weights=...)` applies them without any code of ours: `lora.safetensors` holds every
`*.lora_A.weight` / `*.lora_B.weight` (and, with `ft_embed`, the full embedding tables, which
replace the base tables), `config.json` is the base config plus `lora`, `lora_rank`,
`lora_scaling`.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import torch
from moshi.modules.lora import LoRALinear, replace_all_linear_with_lora
from safetensors.torch import save_file

from .io import atomic_dir


def apply_lora(lm: torch.nn.Module, rank: int, scaling: float, ft_embed: bool = False,
               dtype: torch.dtype = torch.float32) -> list[torch.nn.Parameter]:
    """Wrap every Linear in a LoRA (B = 0, so training starts at the base); freeze the rest.

    Returns the trainable parameters. moshi's LoRALinear leaves B randomly initialised,
    which would change the model before the first step, so B is zeroed here.
    """
    device = next(lm.parameters()).device
    replace_all_linear_with_lora(lm, rank, scaling, device=device, dtype=dtype)
    for module in lm.modules():
        if isinstance(module, LoRALinear):
            torch.nn.init.kaiming_uniform_(module.lora_A.weight, a=5 ** 0.5)
            torch.nn.init.zeros_(module.lora_B.weight)
    trainable = []
    for name, param in lm.named_parameters():
        wanted = "lora_" in name or (ft_embed and _is_embedding(name))
        param.requires_grad_(wanted)
        if wanted:
            trainable.append(param)
    return trainable


def _is_embedding(name: str) -> bool:
    return name.startswith("emb.") or name.startswith("text_emb.")


def lora_state(lm: torch.nn.Module, ft_embed: bool) -> dict[str, torch.Tensor]:
    """The adapter tensors as moshi names them (plus embedding tables with ft_embed)."""
    return {
        name: tensor.detach().to("cpu").contiguous()
        for name, tensor in lm.state_dict().items()
        if ".lora_A." in name or ".lora_B." in name or (ft_embed and _is_embedding(name))
    }


def lora_config(base_config: dict, rank: int, scaling: float) -> dict:
    return {**base_config, "lora": True, "lora_rank": rank, "lora_scaling": scaling}


def save_adapter(out_dir: Path, lm: torch.nn.Module, base_config: dict, rank: int, scaling: float,
                 ft_embed: bool, dtype: torch.dtype = torch.float32) -> Path:
    """Write lora.safetensors + config.json (atomically) in the form moshi's loaders accept."""
    with atomic_dir(out_dir) as tmp:
        state = {k: v.to(dtype) for k, v in lora_state(lm, ft_embed).items()}
        save_file(state, str(tmp / "lora.safetensors"))
        (tmp / "config.json").write_text(json.dumps(lora_config(base_config, rank, scaling), indent=2) + "\n")
    return out_dir


@contextlib.contextmanager
def lora_disabled(lm: torch.nn.Module) -> Iterator[None]:
    """Run the frozen base model (scaling 0) without copying it, e.g. for distillation targets."""
    modules = [m for m in lm.modules() if isinstance(m, LoRALinear)]
    saved = [m.scaling for m in modules]
    try:
        for m in modules:
            m.scaling = 0.0
        yield
    finally:
        for m, s in zip(modules, saved):
            m.scaling = s
