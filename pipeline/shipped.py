"""shipped: the trained organism that ships in the repository (models/organism/), so the evidence
is part of the product and every machine starts from it.

    models/organism/MANIFEST.json   sha256 and size of every file below, how it was made (commit,
                                    commands, data recipe, card, date) and its held-out table
    models/organism/base/           the base LM (bf16, as the runtime loads it), its config and tokenizer
    models/organism/mimi/           the distilled Mimi as bf16 shards (its float32 file holds exactly
                                    these values: the distillation rounds every weight to bf16)
    models/organism/lora/           the GPU fine-tune: the LoRA (float32, as training writes it) and config

Two model names resolve to it (`--model organism`, `--model organism-ft`): each is checked against
the manifest, then built once under `artifacts/checkpoints/<name>/` (the base with its float32 Mimi;
the fine-tune as `invoke merge` builds it from the base and the LoRA). A changed or truncated file is
a one-line error naming it.

`ship(...)` (`invoke ship-organism`) replaces the shipped organism with a newly trained one only when
its held-out table is at least as good on every row (ROWS), or the rows that got worse are named.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import Checkpoint, ModelError
from .io import atomic_dir, atomic_file, sha256_file

REPO = Path(__file__).resolve().parent.parent
SHIPPED_DIR = REPO / "models" / "organism"
MANIFEST = "MANIFEST.json"
BASE, FINE_TUNE = "organism", "organism-ft"
NAMES = (BASE, FINE_TUNE)
MAX_SHIPPED_BYTES = 40 * 10**6   # what one version may add to git


@dataclass(frozen=True)
class Row:
    """One row of the held-out table: `model`'s figure `key`, and which way is better. A `floor`
    row is the organism's reproduction of Kyutai's habit: it must stay at or above the floor."""
    model: str
    key: str
    better: str          # 'higher', 'lower' or 'floor'
    floor: float = 0.0
    noise: float = 0.0   # a change within this is not "worse" (latency: one 80 ms step)


ROWS = (
    Row("base", "wer_no_numbers", "lower"),
    Row("base", "digit_spans", "floor", floor=0.9),
    Row("base", "dictations_cut", "floor", floor=0.5),
    Row("candidate", "wer_no_numbers", "lower"),
    Row("candidate", "digit_spans", "lower"),
    Row("candidate", "exact_word_form", "higher"),
    Row("candidate", "dictations_cut", "lower"),
    Row("candidate", "turn_end_detected", "higher"),
    Row("candidate", "turn_end_latency_s", "lower", noise=0.08),
)


def row_name(row: Row) -> str:
    return f"{row.model}.{row.key}"


def worse_rows(new: dict, old: dict) -> list[str]:
    """The rows on which the table `new` is worse than `old` (both as `heldout.json` holds them)."""
    worse = []
    for row in ROWS:
        try:
            a, b = float(new[row.model][row.key]), float(old[row.model][row.key])
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"held-out table: no figure {row_name(row)}; pass an eval's heldout.json") from None
        if row.better == "floor":
            bad = a < row.floor <= b or (a < row.floor and a < b)
        elif row.better == "lower":
            bad = a > b + row.noise
        else:
            bad = a < b - row.noise
        if bad:
            worse.append(row_name(row))
    return worse


# --- reading what ships -----------------------------------------------------------------------

def read_manifest(folder: Path = SHIPPED_DIR) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise ModelError(f"{path}: missing; the shipped organism is not in this checkout (git checkout models/)")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{path}: not a readable manifest ({e}); restore it with git checkout models/") from None
    if not isinstance(files, dict) or not files:
        raise ModelError(f"{path}: lists no files; restore it with git checkout models/")
    return manifest


def check_files(folder: Path = SHIPPED_DIR) -> dict:
    """The manifest, after checking that every file it lists is there with its size and sha256."""
    manifest = read_manifest(folder)
    for rel, want in sorted(manifest["files"].items()):
        path = folder / rel
        if not path.is_file():
            raise ModelError(f"{path}: missing from the shipped organism; restore it with git checkout models/")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise ModelError(f"{path}: {size} bytes, the manifest says {want['bytes']} (truncated or changed); "
                             "restore it with git checkout models/")
        if sha256_file(path) != want["sha256"]:
            raise ModelError(f"{path}: sha256 differs from {folder / MANIFEST} (changed); "
                             "restore it with git checkout models/")
    return manifest


def _stamp(manifest: dict) -> str:
    return json.dumps({rel: f["sha256"] for rel, f in sorted(manifest["files"].items())}, sort_keys=True)


def materialize(name: str, artifacts: Path, folder: Path = SHIPPED_DIR) -> Checkpoint:
    """The checkpoint of a shipped model name, built once under artifacts/checkpoints/<name>/ from
    the checked shipped files (rebuilt when the manifest changes)."""
    if name not in NAMES:
        raise ModelError(f"{name!r} is not a shipped model; choose one of {', '.join(NAMES)}")
    manifest = check_files(folder)
    out = Path(artifacts) / "checkpoints" / name
    stamp = out / "shipped.json"
    if stamp.is_file() and stamp.read_text() == _stamp(manifest):
        return Checkpoint.open(out)
    print(f"building the shipped '{name}' checkpoint in {out} (first use)")
    if name == BASE:
        _build_base(folder, manifest, out)
    else:
        from .merge import merge

        base = materialize(BASE, artifacts, folder)
        with atomic_dir(out) as tmp:
            merge(base, folder / "lora", tmp)
            (tmp / "shipped.json").write_text(_stamp(manifest))
    return Checkpoint.open(out)


def _build_base(folder: Path, manifest: dict, out: Path) -> None:
    from .distill import load_shards
    from .presets import write_mimi

    config = json.loads((folder / "base" / "config.json").read_text())
    with atomic_dir(out) as tmp:
        for f in (folder / "base").iterdir():
            shutil.copy2(f, tmp / f.name)
        write_mimi(load_shards(folder / "mimi"), tmp / config["mimi_name"])
        (tmp / "shipped.json").write_text(_stamp(manifest))


# --- replacing what ships ---------------------------------------------------------------------

def _git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def ship(base_dir: Path, lora_dir: Path, mimi_dir: Path, heldout: Path, made: dict,
         allow_worse: tuple[str, ...] = (), folder: Path = SHIPPED_DIR,
         docs_heldout: Path | None = REPO / "docs" / "organism" / "heldout.json") -> list[str]:
    """Replace the shipped organism with `base_dir` (a trained base checkpoint), `lora_dir` (its
    fine-tune's final/), `mimi_dir` (the base's Mimi as bf16 shards) and `heldout` (the eval of
    those files on the held-out set). Refused when a row of the table got worse and is not in
    `allow_worse`. `made` records how it was made (commands, data recipe, card, date). The table
    is also written to `docs_heldout`. Returns the rows that got worse (all allowed)."""
    table = json.loads(Path(heldout).read_text())
    worse = []
    if (folder / MANIFEST).is_file():
        worse = worse_rows(table, read_manifest(folder)["heldout"])
        refused = [w for w in worse if w not in allow_worse]
        if refused:
            raise ModelError(f"{heldout}: worse than the shipped organism on {', '.join(refused)}; "
                             f"pass --allow-worse {','.join(refused)} to replace it anyway")
    # every file of the base but its Mimi weights, which the shards hold
    base_files = [f for key, f in Checkpoint.open(base_dir).files.items() if key != "mimi"]
    picks = {"base": base_files,
             "mimi": sorted(Path(mimi_dir).glob("mimi-*.safetensors")) + [Path(mimi_dir) / "mimi-config.json"],
             "lora": [Path(lora_dir) / "lora.safetensors", Path(lora_dir) / "config.json"]}
    with atomic_dir(folder) as tmp:
        files = {}
        for sub, paths in picks.items():
            (tmp / sub).mkdir()
            for p in paths:
                if not p.is_file():
                    raise ModelError(f"{p}: missing; ship-organism needs a trained base, its LoRA and Mimi shards")
                shutil.copy2(p, tmp / sub / p.name)
                files[f"{sub}/{p.name}"] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        total = sum(f["bytes"] for f in files.values())
        if total > MAX_SHIPPED_BYTES:
            raise ModelError(f"the organism's files add up to {total / 1e6:.1f} MB; at most "
                             f"{MAX_SHIPPED_BYTES / 1e6:.0f} MB may ship (store the LM in bf16)")
        manifest = {"name": "organism", "files": files, "bytes": total, "commit": _git_commit(), **made,
                    "heldout": table, "allowed_worse": list(worse)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if docs_heldout is not None:
        with atomic_file(docs_heldout) as tmp_file:
            tmp_file.write_text(json.dumps(table, indent=2) + "\n")
    return worse
