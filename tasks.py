"""stt-numerals tasks: data -> train -> merge -> export -> verify-candle -> eval.

Every task takes `--config FILE` (YAML, see `invoke config`) and any number of
`--set section.field=value` overrides. This file only parses options and wires stages together;
the work happens in `pipeline/`.
"""

from __future__ import annotations

import os
import subprocess
import sys

from invoke import Exit, task

from pipeline.config import load_config, render_config

HELP = {
    "config": "YAML config file (default: built-in defaults; see `invoke config`)",
    "set": "override a config field, e.g. --set model.source=1b (repeatable)",
}
MODEL_HELP = {"model": "shortcut for --set model.source=...: preset (tiny, 1b), directory or hub repo id"}
COMMON = {"iterable": ["set_"], "help": {**HELP, **MODEL_HELP}}


def _config(config: str | None, set_: list[str], model: str | None = None):
    overrides = list(set_) + ([f"model.source={model}"] if model else [])
    return _run_stage(load_config, config, overrides)


def _run_stage(fn, *args, **kwargs):
    """Run a stage; errors a user can fix (StageError) become one line and their exit code (2, or
    1 for failed checks); anything else is a bug and keeps its traceback."""
    from pipeline.errors import StageError
    from pipeline.verify import VerificationFailed

    try:
        return fn(*args, **kwargs)
    except VerificationFailed as exc:
        raise Exit(str(exc), code=exc.exit_code) from None
    except StageError as exc:
        raise Exit(f"error: {exc}", code=exc.exit_code) from None


def _checkpoint(cfg):
    """The open checkpoint of `model.source` (a preset is built on first use)."""
    return _checkpoint_for(cfg, cfg.model.source)


def _checkpoint_for(cfg, source):
    from pipeline.models import resolve_model

    return _run_stage(resolve_model, source, cfg.artifacts_dir, cfg.model.revision, cfg.checkpoint.seed)


@task(help={"out": "write the documented config to this file instead of printing it", **HELP}, iterable=["set_"])
def config(c, config=None, set_=None, out=None):
    """Print the full config with every field documented (or write it to --out)."""
    text = render_config(_config(config, set_ or []))
    if out:
        with open(out, "w") as fh:
            fh.write(text)
        print(f"wrote {out}")
    else:
        print(text, end="")


@task(help={"preset": "tiny (seconds, tests) or 1b (real stt-1b-en_fr shapes, random bf16 weights)",
            "out": "output directory (default: <artifacts>/checkpoints/<preset>)",
            "seed": "seed for the random weights (default: checkpoint.seed)", **HELP}, iterable=["set_"])
def checkpoint(c, preset="tiny", out=None, seed=None, config=None, set_=None):
    """Build a checkpoint in the layout of kyutai/stt-1b-en_fr-candle (config, LM, Mimi, tokenizer)."""
    import time

    from pipeline.models import preset_dir
    from pipeline.presets import make_checkpoint

    cfg = _config(config, set_ or [])
    out = out or preset_dir(cfg.artifacts_dir, preset)
    start = time.perf_counter()
    path = _run_stage(make_checkpoint, preset, out, seed=cfg.checkpoint.seed if seed is None else int(seed))
    print(f"wrote the '{preset}' checkpoint to {path} in {time.perf_counter() - start:.1f} s")


@task(name="graft-heads", help={"heads_from": "checkpoint whose pause heads to copy (preset, directory or repo id), "
                                              "e.g. the -candle repo of the same model",
                                "out": "output directory (default: <artifacts>/checkpoints/<model>-heads)",
                                **HELP, **MODEL_HELP}, iterable=["set_"])
def graft_heads(c, config=None, set_=None, model=None, heads_from=None, out=None):
    """Copy --model with the pause heads of --heads-from (for a base published without them)."""
    from pipeline.checkpoint import graft_heads as run

    if not heads_from:
        raise Exit("error: --heads-from is required: the checkpoint whose pause heads to copy", code=2)
    cfg = _config(config, set_ or [], model)
    base = _checkpoint(cfg)
    out = out or cfg.artifacts_dir / "checkpoints" / f"{base.path.name}-heads"
    path = _run_stage(run, base, _checkpoint_for(cfg, heads_from), out)
    print(f"wrote {path}: {base} with the pause heads of {heads_from}")


# No automatic short flags: `--check` would take `-h` and shadow `--help`.
@task(help={"check": "validate the dataset folder DIR instead of building one (exit 1 on problems)", **HELP,
            **MODEL_HELP}, iterable=["set_"], auto_shortflags=False)
def data(c, config=None, set_=None, model=None, check=None):
    """Build the training/eval dataset: number prompts, TTS with word timings, Whisper alignment."""
    import time

    from pipeline import data as stage

    if check:
        problems = stage.check_dataset(check)
        for line in problems:
            print(line)
        if problems:
            raise Exit(f"{len(problems)} problem(s) in {check}", code=1)
        print(f"OK: {check} is a valid dataset")
        return
    cfg = _config(config, set_ or [], model)
    start = time.perf_counter()
    out = _run_stage(stage.build_dataset, cfg)
    print(f"wrote {out}: {stage.summary(out)} in {time.perf_counter() - start:.1f} s")


@task(help={"count": "how many prompts to read (default 20)", "lang": "en or fr",
            "seed": "prompt seed (default: data.seed; change it for new prompts)", **HELP, **MODEL_HELP},
      iterable=["set_"])
def record(c, config=None, set_=None, model=None, count=20, lang="en", seed=None):
    """Record your own voice reading prompts (Enter starts and stops each take)."""
    from pipeline.data import record_session

    cfg = _config(config, set_ or [], model)
    out = cfg.output_path(cfg.data.recordings)
    paths = _run_stage(record_session, out, int(count), cfg.data.seed if seed is None else int(seed), lang)
    print(f"recorded {len(paths)} prompt(s) in {out}; add them to the dataset with:\n"
          f"  invoke data --set 'data.audio_dirs=[\"{out}\"]'")


@task(help={"resume": "continue the run in train.out from its last checkpoint",
            "gpus": "number of GPUs: >1 launches torchrun (DDP)", **HELP, **MODEL_HELP}, iterable=["set_"])
def train(c, config=None, set_=None, model=None, resume=False, gpus=1):
    """LoRA fine-tune the STT model so digit sequences come out as words (delay-correct, VAD heads kept)."""
    from pipeline.train import launch
    from pipeline.train import train as run

    cfg = _config(config, set_ or [], model)
    ckpt = _checkpoint(cfg)
    if int(gpus) > 1:
        raise Exit(code=launch(cfg, ckpt, int(gpus), resume))
    out = _run_stage(run, cfg, ckpt, resume=resume)
    what = "model" if cfg.train.method == "full" else "adapter"
    print(f"trained {what}: {out / 'final'} (metrics in {out / 'metrics.jsonl'})")


@task(help={"prepare": "stop before training: dataset, init/ and the code pack only (to train elsewhere)",
            "stage": "stop after this stage: prepare-distill (what the GPU box needs to distill the Mimi), "
                     "distill (the distilled Mimi), pack, restore-mimi (a base trained on the GPU box: "
                     "its Mimi file rebuilt from the distilled shards), or all (default)",
            **HELP, **MODEL_HELP}, iterable=["set_"])
def organism(c, config=None, set_=None, model=None, prepare=False, stage="all"):
    """Build the model organism: a small STT trained from scratch that writes numbers as digits
    once they are complete, so its pause head fires mid-number (issue #7). Steps already done are kept."""
    from pipeline.organism import build_organism

    cfg = _config(config, set_ or [], model)
    out = _run_stage(build_organism, cfg, prepare_only=prepare, stage=stage)
    if prepare or stage == "pack":
        print(f"prepared {out} and its init/ checkpoint; train with `invoke organism` (same config)")
    elif stage != "all":
        print(f"organism stage {stage}: {out}")
    else:
        print(f"trained the model organism: {out} (use it with --model {out})")


@task(help={"out": "pack file to write (default: <data.out>.pack.safetensors, <data.out>.eval.pack.safetensors)",
            "split": "'train' (default) or 'eval': the held-out split, for train.val_data", **HELP, **MODEL_HELP},
      iterable=["set_"])
def pack(c, config=None, set_=None, model=None, out=None, split="train"):
    """Encode a split of data.out with the model's Mimi into one code pack (train anywhere, no audio)."""
    from pipeline.codes import pack_utterances
    from pipeline.data import dataset_text_delay, read_split
    from pipeline.data.augment import augment_config

    if split not in ("train", "eval"):
        raise Exit(f"error: --split must be 'train' or 'eval', got {split!r}", code=2)
    cfg = _config(config, set_ or [], model)
    ckpt, data = _checkpoint(cfg), cfg.output_path(cfg.data.out)
    out = out or (f"{data}.pack.safetensors" if split == "train" else f"{data}.{split}.pack.safetensors")
    utterances = _run_stage(read_split, data, split)
    copies = cfg.data.augment_copies if split == "train" else 0  # held-out audio stays as it was recorded
    _run_stage(pack_utterances, ckpt, utterances, out, cfg.artifacts_dir / "cache" / "codes",
               _run_stage(dataset_text_delay, data), copies, augment_config(cfg.data), cfg.data.seed)
    extra = f" + {copies} augmented copies of each" if copies else ""
    use = "train on it with --set train.data" if split == "train" else "score training on it with --set train.val_data"
    print(f"wrote {out}: {len(utterances)} {split} utterances{extra}; {use}={out}")


@task(**COMMON)
def merge(c, config=None, set_=None, model=None):
    """Merge the trained LoRA into the base weights (float32 math, rounded to bf16 once)."""
    from pipeline.merge import merge as run

    cfg = _config(config, set_ or [], model)
    out = cfg.output_path(cfg.merge.out)
    report = _run_stage(run, _checkpoint(cfg), cfg.output_path(cfg.merge.adapter), out, cfg.merge.dtype)
    print(f"merged {report.tensors_updated} LoRA pairs into {out}: update norm {report.update_norm:.4g}, "
          f"{100 * report.kept_fraction:.1f} % of it kept after rounding "
          f"(rounding error {100 * report.rounding_error:.2f} % of the update)")


@task(**COMMON)
def export(c, config=None, set_=None, model=None):
    """Export a checkpoint for Kyutai's Rust runtime: Rust tensor names, bf16, server TOML, manifest."""
    from pipeline.export import export as run

    cfg = _config(config, set_ or [], model)
    source, adapter = cfg.export.source, None
    if source == "adapter":  # one pass: the LoRA is merged into the base as it is exported
        source, adapter = _checkpoint(cfg), cfg.output_path(cfg.merge.adapter)
    elif source == "merged":
        source = cfg.output_path(cfg.merge.out)
    else:
        source = _checkpoint_for(cfg, source)
    out = _run_stage(run, source, cfg.output_path(cfg.export.out), cfg.export.batch_size, adapter,
                     cfg.export.device)
    print(f"exported {source}{f' with {adapter} merged in' if adapter else ''} to {out} "
          f"(moshi-server config: {out / 'moshi-server.toml'})")


@task(help={"model": "what to serve: an exported folder (e.g. artifacts/export) or any checkpoint (preset, "
                     "directory, repo id), exported first (default: serve.model, the `server` preset)",
            "port": "port on 127.0.0.1 (default: serve.port)", **HELP}, iterable=["set_"])
def serve(c, config=None, set_=None, model=None, port=None):
    """Serve a model with Kyutai's moshi-server on 127.0.0.1 until Ctrl-C."""
    from pipeline.export import SERVER_CONFIG
    from pipeline.export import export as run_export
    from pipeline.serve import serve as run

    cfg = _config(config, set_ or [])
    source = model or cfg.serve.model
    folder = cfg.output_path(source)
    if not (folder / SERVER_CONFIG).is_file():  # a checkpoint, not an export: export it first
        ckpt = _checkpoint_for(cfg, source)
        folder = _run_stage(run_export, ckpt, cfg.output_path("serve") / f"{ckpt.path.name}-export",
                            0, None, cfg.serve.device)
    _run_stage(run, folder, cfg.output_path("serve"), int(port or cfg.serve.port),
               cfg.serve.batch_size or None, cfg.serve.device == "cpu")


@task(name="eval", help={"candidate": "shortcut for --set eval.candidate=...: 'merged', 'export' or a checkpoint",
                         "data": "shortcut for --set eval.data=...: dataset folder, or audio files with .txt "
                                 "transcripts",
                         "rescore": "score the saved report in DIR again (its traces, today's definitions) "
                                    "into eval.out instead of streaming; with --data if its eval data moved", **HELP, **MODEL_HELP}, iterable=["set_"])
def eval_(c, config=None, set_=None, model=None, candidate=None, data=None, rescore=None):
    """A/B report of base vs fine-tuned: digit form, raw WER, premature VAD cut-offs, end of turn (HTML + PNGs)."""
    from pathlib import Path

    from pipeline import eval as stage

    extra = ([f"eval.candidate={candidate}"] if candidate else []) + ([f"eval.data={data}"] if data else [])
    cfg = _config(config, list(set_ or []) + extra, model)
    if rescore:  # --data: where the report's eval data is now, if it moved
        out = _run_stage(stage.rescore, Path(rescore), cfg.output_path(cfg.eval.out), stage.rules_of(cfg),
                         cfg.eval.plots, cfg.output_path(data) if data else None)
    else:
        out = _run_stage(stage.evaluate, cfg)
    print(stage.summary_table(out))
    print(f"report: {out / 'index.html'}")


@task(help={"what": "comma-separated benchmarks: data, export, stream, train, ddp, serve (default: all; train "
                    "and serve need CUDA, ddp 2+ GPUs)", **HELP, **MODEL_HELP}, iterable=["set_"])
def bench(c, config=None, set_=None, model=None, what=None):
    """Benchmarks (figures, not tests): data synthesis and Whisper speed/accuracy, merge+export vs a
    plain copy, Candle vs PyTorch streaming (1b shape, CPU), GPU training against the moshi peer,
    real-time streams per GPU of moshi-server (CUDA) against PyTorch's batched streaming."""
    from pipeline.bench import BENCHES, run_benchmarks

    cfg = _config(config, set_ or [], model)
    chosen = [w.strip() for w in what.split(",") if w.strip()] if what else list(BENCHES)
    log = _run_stage(run_benchmarks, cfg, chosen, lambda: _checkpoint_for(cfg, "1b"), explicit=what is not None)
    print(f"figures appended to {log}")


@task(name="verify-candle", **COMMON)
def verify_candle(c, config=None, set_=None, model=None):
    """Load the model in Kyutai's Rust runtime and report tensor names, shapes and dtypes."""
    from pipeline.verify import verify_candle as run

    cfg = _config(config, set_ or [], model)
    _run_stage(run, _checkpoint(cfg), cfg.verify.lm_dtype, None, cfg.verify.server, cfg.verify.device)


@task(name="load-check", **COMMON)
def load_check(c, config=None, set_=None, model=None):
    """Load the model in PyTorch (moshi loaders) and in Candle; print time and peak RAM of each."""
    from pipeline.verify import measure_loads

    cfg = _config(config, set_ or [], model)
    ckpt = _checkpoint(cfg)
    for r in _run_stage(measure_loads, ckpt):
        params = f", {r['lm_params'] / 1e6:.1f} M LM parameters" if r["lm_params"] else ""
        print(f"{r['runtime']:>6}: loaded {ckpt} in {r['seconds']:.2f} s, peak RAM {r['peak_rss_mib']} MiB{params}")


@task(name="all", **COMMON)
def all_(c, config=None, set_=None, model=None):
    """The whole pipeline on the configured model (default: the tiny checkpoint, offline):
    data -> train -> merge -> export -> verify-candle -> eval. A finished training run in
    train.out is reused (resumed at its last step), so `invoke all` can be run again."""
    cfg = _config(config, set_ or [], model)
    common = {"config": config, "set_": set_ or [], "model": model}
    for title, stage, extra in (("data", data, {}), ("train", train, {"resume": True}),
                                ("merge", merge, {}), ("export", export, {})):
        print(f"\n== invoke {title}", flush=True)
        stage(c, **common, **extra)
    print("\n== invoke verify-candle (the exported model)", flush=True)
    verify_candle(c, config=config, set_=set_ or [], model=str(cfg.output_path(cfg.export.out)))
    print("\n== invoke eval", flush=True)
    eval_(c, **common)


@task(name="ship-organism", help={
    "heldout": "the eval of the new organism's base and fine-tune on the held-out set (heldout.json of "
               "`invoke eval`; default: <eval.out>/heldout.json)",
    "allow_worse": "comma-separated rows (e.g. candidate.wer_no_numbers) that may get worse than the shipped table",
    "card": "the GPU that trained it, for the manifest (e.g. 'NVIDIA H100 80GB HBM3')",
    "command": "a command that made it, for the manifest (repeatable; default: the organism recipe's)",
    **HELP}, iterable=["set_", "command"])
def ship_organism(c, config=None, set_=None, heldout=None, allow_worse="", card="", command=None):
    """Replace the shipped organism (models/organism/) with a newly trained one: its base (model.source),
    its LoRA (merge.adapter) and its distilled Mimi, only if its held-out table is at least as good on
    every row (or the worse rows are named by --allow-worse). Writes docs/organism/heldout.json too."""
    import json
    import time
    from pathlib import Path

    from pipeline.config import render_config
    from pipeline.distill import distill_paths
    from pipeline.merge import read_adapter
    from pipeline.shipped import ship

    cfg = _config(config, set_ or [])
    heldout = Path(heldout) if heldout else cfg.output_path(cfg.eval.out) / "heldout.json"
    if not heldout.is_file():
        raise Exit(f"error: {heldout}: missing; run `invoke eval` of the new base and fine-tune first", code=2)
    meta = json.loads((heldout.parent / "metrics.json").read_text())["meta"] if (heldout.parent / "metrics.json").is_file() else {}
    lora = _run_stage(read_adapter, cfg.output_path(cfg.merge.adapter))[0].parent
    d = cfg.data
    made = {"date": time.strftime("%Y-%m-%d"), "card": card,
            "commands": list(command or [f"invoke organism --config {config}", f"invoke train --config {config}"]),
            "data": {"seed": d.seed, "count": d.count, "eval_fraction": d.eval_fraction,
                     "piper_fraction": d.piper_fraction, "french_fraction": d.french_fraction,
                     "eval_voices": d.eval_voices, "augment_copies": d.augment_copies},
            "eval": {k: meta.get(k) for k in ("runtime", "text", "data", "split", "base", "candidate", "created")},
            "config": render_config(cfg)}
    worse = _run_stage(ship, cfg.output_path(cfg.model.source), lora, distill_paths(cfg)["mimi"], heldout, made,
                       tuple(w for w in allow_worse.split(",") if w))
    print(f"shipped the new organism to models/organism/ (rows allowed worse: {', '.join(worse) or 'none'}); "
          "commit models/ and docs/organism/heldout.json")


@task(help={"k": "only run tests matching this pytest expression"})
def test(c, k=None):
    """Every test: pytest (Python stages, Candle bridge from Python) and cargo test (Rust loader)."""
    pytest = [sys.executable, "-m", "pytest", "-q"] + (["-k", k] if k else [])
    for cmd in (pytest, ["cargo", "test", "--release", "--quiet", "--workspace"]):
        print("+", " ".join(cmd), flush=True)
        if subprocess.run(cmd, env=os.environ).returncode != 0:
            raise Exit(f"failed: {' '.join(cmd)}", code=1)
