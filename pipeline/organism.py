"""organism: a small STT trained here from scratch that has Kyutai's number habit (issue #7).

Kyutai's weights cannot be downloaded here, so the claim "word-form fine-tuning stops the
premature cut-offs" is measured on a model that has the same failure:

    data.out (word-form labels)  ->  init/: random LM in the stt-1b-en_fr-candle layout, a small
                                     real-architecture Mimi whose codebooks are fitted on the
                                     dataset's speech, a tokenizer trained on its labels
                                 ->  train.pack.safetensors: codes + labels (trains anywhere)
                                 ->  run/: every weight trained with number_form = digits
                                 ->  model/: the base the fine-tune pipeline then starts from

With digit-form labels a dictated number is written only once it is complete ("1296803." at
the last digit, labels.digit_form), so the pause targets say "pause" during the dictation and
the trained 2-second head fires mid-number: the DSM#152 failure. Every step is skipped when its
output exists, so a pack and init/ made here can be carried to a GPU box and trained there.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from .config import Config
from .constants import SAMPLE_RATE
from .distill import distill_paths, load_shards, organism_mimi_config
from .errors import StageError
from .io import atomic_dir, atomic_file
from .labels import Word, digit_form
from .presets import PRESETS, Preset, build_checkpoint


def organism_paths(cfg: Config) -> dict[str, Path]:
    root = cfg.output_path(cfg.organism.out)
    return {"root": root, "init": root / "init", "pack": root / "train.pack.safetensors",
            "run": root / "run", "model": root / "model"}


def organism_preset(cfg: Config) -> Preset:
    o = cfg.organism
    # A standard Mimi is written as Kyutai's checkpoints name it, with no mimi_config: moshi-server
    # builds Config::v0_1 and loads it (`invoke serve` refuses a checkpoint that names one).
    standard = o.mimi_arch == "standard"
    return Preset(dim=o.dim, num_heads=o.num_heads, num_layers=o.num_layers, n_q=o.n_q, card=o.card,
                  text_card=o.text_card, mimi=None if standard else organism_mimi_config(cfg),
                  mimi_name=PRESETS["server"].mimi_name if standard else "mimi-organism.safetensors",
                  tokenizer_name="tokenizer_organism.model", fit_seconds=o.fit_seconds, kmeans_iters=10)


def label_corpus(utterances) -> list[str]:
    """Every training label twice: numbers as spoken words and as written digits."""
    corpus = []
    for u in utterances:
        words = [Word(w, s, e) for w, (s, e), *_ in u.alignments]
        spans = [(s.first, s.last, s.written) for s in u.number_spans]
        corpus.append(" ".join(w.text for w in words))
        if spans:
            corpus.append(" ".join(w.text for w in digit_form(words, spans)))
    return corpus


def fitting_speech(utterances, seconds: float) -> np.ndarray:
    """The first `seconds` of training speech, end to end (what the Mimi codebooks are fitted on)."""
    from .data.audio import read_audio

    clips, total = [], 0
    for u in utterances:
        clip = read_audio(u.path, repair=False)
        clips.append(clip)
        total += len(clip)
        if total >= seconds * SAMPLE_RATE:
            break
    return np.concatenate(clips)[: int(seconds * SAMPLE_RATE)]


def organism_train_config(cfg: Config) -> Config:
    """cfg with the from-scratch training settings: every weight, digit-form labels, fresh stream
    starts only (as Kyutai's base knows them: train.served_starts is the fine-tune's to set)."""
    o, paths = cfg.organism, organism_paths(cfg)
    train = dataclasses.replace(cfg.train, data=str(paths["pack"].resolve()), out=str(paths["run"].resolve()),
                                method="full", number_form="digits", steps=o.steps, lr=o.lr,
                                batch_size=o.batch_size, warmup_steps=o.warmup_steps, seed=o.seed,
                                schedule="cosine", head_loss="supervised", codebook_dropout=o.codebook_dropout,
                                served_starts=0.0)
    return dataclasses.replace(cfg, train=train)


STAGES = ("prepare-distill", "distill", "pack", "restore-mimi", "all")


def restore_mimi(cfg: Config) -> Path:
    """model/'s Mimi file, rebuilt from the distilled shards: a base trained on the GPU box comes
    back without its standard Mimi (385 MB in float32; the box returns 64 MiB a call), which is
    the distilled shards (bf16) in float32. The rebuilt file must hash as the box's did
    (model.mimi.sha256, written beside model/ by `scripts/remote-gpu/organism_gpu.sh bundle`)."""
    from .checkpoint import Checkpoint
    from .io import sha256_file
    from .presets import write_mimi

    paths = organism_paths(cfg)
    name = organism_preset(cfg).mimi_name
    if not (paths["model"] / "config.json").is_file():
        raise StageError(f"{paths['model']}: no trained base (config.json) to restore the Mimi of; "
                         "unpack the GPU box's bundle first")
    out, expected = paths["model"] / name, paths["root"] / "model.mimi.sha256"
    with atomic_file(out) as tmp:
        write_mimi(load_shards(distill_paths(cfg)["mimi"]), tmp)
        if expected.is_file() and (want := expected.read_text().split()[0]) != (got := sha256_file(tmp)):
            raise StageError(f"{out}: rebuilt from {distill_paths(cfg)['mimi']} it hashes {got[:16]}..., the box's "
                             f"hashed {want[:16]}... ({expected}); those are not the shards the base was trained with")
    Checkpoint.open(paths["model"])  # every file the config names is there
    return out


def build_organism(cfg: Config, prepare_only: bool = False, stage: str = "all") -> Path:
    """`invoke organism`: dataset -> [distilled Mimi] -> init checkpoint -> code pack -> trained
    base; returns model/. `stage` stops early and returns that stage's output: 'prepare-distill'
    (the streams and teacher to carry to a GPU box), 'distill' (the trained Mimi), 'pack' (the
    pack: carry it and init/ to a GPU machine and train there; `prepare_only` is the same);
    'restore-mimi' only rebuilds a box-trained base's Mimi file (`restore_mimi`)."""
    from .codes import pack_utterances
    from .data import build_dataset, dataset_text_delay, read_split
    from .data.augment import augment_config
    from .distill import distill_figures, distill_mimi, prepare_distill
    from .train import train

    if stage not in STAGES:
        raise StageError(f"unknown organism stage {stage!r}; choose one of {', '.join(STAGES)}")
    stage = "pack" if prepare_only and stage == "all" else stage
    if stage == "restore-mimi":
        return restore_mimi(cfg)
    paths = organism_paths(cfg)
    data = cfg.output_path(cfg.data.out)
    distilled = cfg.organism.mimi == "distilled" or stage in ("prepare-distill", "distill")

    def dataset() -> None:
        if not (data / "manifest.json").is_file():
            print(f"building the organism's dataset in {data}")
            build_dataset(cfg)

    if distilled and (stage in ("prepare-distill", "distill") or not (paths["init"] / "config.json").is_file()):
        if not (distill_paths(cfg)["prepared"] / "words.json").is_file():  # the GPU box has no dataset
            dataset()
        prepared = prepare_distill(cfg)
        if stage == "prepare-distill":
            return prepared
        mimi_folder = distill_mimi(cfg)
        if stage == "distill":
            if not (mimi_folder / "figures.json").is_file():
                distill_figures(cfg)
            return mimi_folder
    if not paths["pack"].is_file():
        dataset()
        utterances = read_split(data, "train")
        if not utterances:
            raise StageError(f"{data}/train.jsonl lists no utterances; raise data.count")
        if not (paths["init"] / "config.json").is_file():
            print(f"building the untrained organism in {paths['init']}")
            speech = None if distilled else fitting_speech(utterances, cfg.organism.fit_seconds)
            mimi_state = load_shards(distill_paths(cfg)["mimi"]) if distilled else None
            build_checkpoint(organism_preset(cfg), "organism", paths["init"], cfg.organism.seed,
                             fit_audio=speech, corpus=label_corpus(utterances), mimi_state=mimi_state)
        pack_utterances(paths["init"], utterances, paths["pack"], cfg.artifacts_dir / "cache" / "codes",
                        dataset_text_delay(data), cfg.data.augment_copies, augment_config(cfg.data), cfg.data.seed)
    if stage == "pack":
        return paths["pack"]
    run = train(organism_train_config(cfg), paths["init"], resume=True)
    with atomic_dir(paths["model"]) as tmp:
        shutil.copytree(run / "final", tmp, dirs_exist_ok=True)
    return paths["model"]
