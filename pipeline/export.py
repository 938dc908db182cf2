"""export: a directory Kyutai's Rust runtime (moshi-server, the `moshi` crate) serves as is.

- LM tensors in bf16 under the names the Rust crate reads: PyTorch's
  `self_attn.in_projs.0.weight` / `out_projs.0.weight` become `in_proj_weight` /
  `out_proj.weight` (PyTorch moshi maps those back with a load hook, so the directory still
  loads there); everything else 1:1. A `depformer_in.*` tensor (moshi creates one for dep_q = 0
  without `depformer_multi_linear`) is dropped: no runtime reads it.
- The Mimi weights (float32, same renames), the tokenizer and config.json (extra heads and
  stt_config kept).
- `moshi-server.toml`: a complete moshi-server config serving these files (deployment keys as
  placeholders), which `moshi-server validate` accepts.
- `manifest.json`: sha256 and size of every file; `verify-candle` refuses a directory whose
  files no longer match it.

`export.source = adapter` merges the trained LoRA into the base as it exports (`merge.LoraMerge`,
the same arithmetic as `invoke merge`): one read of the base and one write, for users who want
only the runtime folder.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from .checkpoint import Checkpoint, legacy_name
from .errors import StageError
from .io import Rewrite, SafetensorsFile, atomic_dir, cast_specs, rewrite_safetensors, sha256_file
from .merge import LoraMerge

MANIFEST = "manifest.json"
SERVER_CONFIG = "moshi-server.toml"


class ExportError(StageError):
    """A checkpoint that cannot be exported, or an exported directory that was altered."""


def _write_rust_tensors(src: Path, dst: Path, dtype: str | None, merger: LoraMerge | None = None) -> str:
    """`src` under Kyutai's tensor names (floats cast to `dtype` unless None), tensor by tensor;
    with `merger`, its LoRA folded in on the way. Returns the written file's sha256."""
    with SafetensorsFile(src) as f:
        specs = cast_specs(f, dtype, [k for k in f.keys() if not k.startswith("depformer_in.")])
    if merger is not None:
        return merger.rewrite(src, dst, specs)
    return rewrite_safetensors(src, dst, [Rewrite(legacy_name(k), k, *spec) for k, spec in specs.items()])[0]


SERVER_BATCH = {"cuda": 64, "cpu": 1}  # slots per device when export.batch_size is 0


def server_config(out: Path, ckpt: Checkpoint, batch_size: int) -> str:
    """A complete moshi-server config serving this model (absolute local paths); the
    deployment keys at the top are placeholders that work for a local run."""
    out, config, delay = out.resolve(), ckpt.config, ckpt.delay_frames
    norm = {"rms_norm_f32": "RmsNorm", "rms_norm": "RmsNorm", "layer_norm": "LayerNorm"}[config["norm"]]
    lines = [
        "# Kyutai's moshi-server (crate 0.6.4) serving this exported model:",
        "#   moshi-server worker --config moshi-server.toml --addr 127.0.0.1 --port 8080 [--cpu]",
        "# or `invoke serve --model <this folder>`. Clients stream to ws://HOST:PORT/api/asr-streaming",
        "# with the header `kyutai-api-key: <one of authorized_ids>`.",
        "#",
        "# Deployment keys (placeholders; set them for your server):",
        'static_dir = "./static/"              # files served over HTTP (the ASR module needs none)',
        'log_dir = "./logs"                    # server logs',
        'instance_name = "stt-numerals"        # names this instance in its logs',
        'authorized_ids = ["public_token"]     # API keys accepted in `kyutai-api-key`',
        "",
    ]
    if "mimi_config_name" in config:
        lines += ["# WARNING: this model's Mimi is not the standard one (config.json names a mimi_config):",
                  "# moshi-server builds only the standard Mimi (moshi::mimi::Config::v0_1) and cannot",
                  "# load it. Export a model with the standard Mimi (e.g. the `server` or `1b` preset).", ""]
    lines += [
        "[modules.asr]",
        'path = "/api/asr-streaming"',
        'type = "BatchedAsr"',
        f'lm_model_file = "{out / config.get("moshi_name", "model.safetensors")}"',
        f'text_tokenizer_file = "{out / config["tokenizer_name"]}"',
        f'audio_tokenizer_file = "{out / config["mimi_name"]}"',
        f"asr_delay_in_tokens = {delay}",
        f"batch_size = {batch_size}                        # concurrent streams (slots); see export.batch_size",
        "temperature = 0.0",
        "",
        "[modules.asr.model]",
        f"audio_vocab_size = {config['card'] + 1}",
        f"text_in_vocab_size = {config['text_card'] + 1}",
        f"text_out_vocab_size = {config['text_card']}",
        f"audio_codebooks = {config['n_q'] - config.get('dep_q', 0)}",
        "",
        "[modules.asr.model.transformer]",
        f"d_model = {config['dim']}",
        f"num_heads = {config['num_heads']}",
        f"num_layers = {config['num_layers']}",
        f"dim_feedforward = {int(config['hidden_scale'] * config['dim'])}",
        f"causal = {str(config.get('causal', True)).lower()}",
        "norm_first = true",
        "bias_ff = false",
        "bias_attn = false",
        f"context = {config['context']}",
        f"max_period = {int(config['max_period'])}",
        "use_conv_block = false",
        "use_conv_bias = true",
        *(['gating = "silu"'] if config["gating"] == "silu" else []),
        f'norm = "{norm}"',
        f'positional_embedding = "{config["positional_embedding"].capitalize()}"',
        "conv_layout = false",
        "conv_kernel_size = 3",
        "kv_repeat = 1",
        "max_seq_len = 4096",
    ]
    if config.get("extra_heads_num_heads", 0):
        lines += ["", "[modules.asr.model.extra_heads]",
                  f"num_heads = {config['extra_heads_num_heads']}", f"dim = {config.get('extra_heads_dim', 6)}"]
    return "\n".join(lines) + "\n"


def export(src: Checkpoint | Path, out: Path, batch_size: int = 0, adapter: Path | None = None,
           device: str = "cuda") -> Path:
    """Write the runtime directory for checkpoint `src` to `out`; return `out`. The server config
    batches `batch_size` streams (0: `SERVER_BATCH[device]`). With `adapter`
    (a LoRA run from `invoke train`), the LoRA is merged into `src` on the way, exactly as
    `invoke merge` would (float32, rounded to bf16 once): one read of the base, one write; the
    manifest then records the merge report."""
    src = Checkpoint.of(src)
    files = src.files
    config = {k: v for k, v in src.config.items() if not k.startswith("lora")}
    if config.get("dep_q", 0) != 0:
        raise ExportError(f"{files['config']}: dep_q = {config['dep_q']}; only STT checkpoints (dep_q = 0) export")
    merger = None if adapter is None else LoraMerge(src, Path(adapter))
    batch_size = batch_size or SERVER_BATCH[device]
    with atomic_dir(out) as tmp:
        # The two weight files are hashed as they are written: one read of the base, one write.
        hashes = {files["lm"].name: _write_rust_tensors(files["lm"], tmp / files["lm"].name, "BF16", merger),
                  files["mimi"].name: _write_rust_tensors(files["mimi"], tmp / files["mimi"].name, None)}
        shutil.copyfile(files["tokenizer"], tmp / files["tokenizer"].name)
        if "mimi_config" in files:
            shutil.copyfile(files["mimi_config"], tmp / files["mimi_config"].name)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / SERVER_CONFIG).write_text(server_config(Path(out), src, batch_size))
        manifest = {"files": {p.name: {"sha256": hashes.get(p.name) or sha256_file(p), "bytes": p.stat().st_size}
                              for p in sorted(tmp.iterdir())}}
        if merger is not None:
            manifest["merged"] = {"adapter": str(adapter), **asdict(merger.report())}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return Path(out)


def check_manifest(folder: Path) -> list[str]:
    """Problems with an exported directory's files against its manifest (empty: intact)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return [f"{path}: no manifest; export the model with `invoke export`"]
    problems = []
    for name, entry in json.loads(path.read_text())["files"].items():
        target = Path(folder) / name
        if not target.is_file():
            problems.append(f"{target}: listed in the manifest but missing")
        elif target.stat().st_size != entry["bytes"] or sha256_file(target) != entry["sha256"]:
            problems.append(f"{target}: sha256 differs from the manifest (altered after export); re-export it")
    return problems
