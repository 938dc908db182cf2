"""distill: the organism's Mimi, taught to hear phonemes by Whisper tiny.en (issue #16).

Kyutai's Mimi gets a semantic first codebook by distilling WavLM into it. The organism does the
same with what ships offline, in two steps that may run on different machines:

    prepare_distill(cfg)  (here, CPU)   train.ogg / eval.ogg: dataset speech end to end (Opus),
                                        words.json: every word's span in those streams,
                                        whisper-encoder.safetensors: the teacher (fp16)
    distill_mimi(cfg)     (GPU box)     mimi/: the trained Mimi (bf16 shards) and figures.json

Conventions (written once, used by the training and the figures):
- A stream is cut into 30 s windows, Whisper's input; one window is 375 Mimi frames (80 ms).
- Teacher: Whisper's encoder states of a window (50 Hz) mean-pooled by 4, so Mimi frame k
  (samples [1920 k, 1920 (k+1))) is paired with Whisper frames 4k..4k+3. Whisper is non-causal
  and the Mimi causal: the student at frame k has heard audio up to the end of frame k and
  learns what of the teacher it can predict from that.
- Semantic loss: cosine distance between a learned projection of the first codebook's
  quantized latent and the teacher (the Mimi recipe, WavLM replaced by Whisper).
- Reconstruction: an auxiliary head, not shipped, predicts each frame's 8 Whisper log-mel frames
  (80 bins, 10 ms) from all codebooks' latents (L1), so the acoustic codebooks carry sound.
  The Mimi's own decoder stays untrained: speech-to-text never runs it.
- Word probe: a linear classifier from a word's codes (mean one-hot per codebook over the frames
  it spans) to the word, over the 50 most frequent training words; trained on training voices,
  scored on held-out voices, for the distilled Mimi and for the k-means one it replaces.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import Config
from .constants import FRAME_RATE, FRAME_SAMPLES, SAMPLE_RATE
from .errors import StageError
from .io import atomic_dir, atomic_file
from .train import warmup_cosine

WINDOW_S = 30.0
FRAME = FRAME_SAMPLES                           # 1920 samples, the stream format's frame
WINDOW_FRAMES = int(WINDOW_S * FRAME_RATE)      # 375
WHISPER_RATE = 16_000
MELS_PER_FRAME = 8                              # Whisper's 10 ms mel frames per 80 ms Mimi frame
PROBE_WORDS = 50
WARMUP = 100                                    # learning-rate warm-up steps of the distillation
PACE_FROM = 20                                  # with a time limit, steps PACE_FROM..WARMUP time the pace
SHARD_BYTES = 15 * 2**20                        # the GPU box returns files of at most 16 MiB


def distill_paths(cfg: Config) -> dict[str, Path]:
    root = cfg.output_path(cfg.organism.out) / "distill"
    return {"root": root, "prepared": root / "prepared", "mimi": root / "mimi"}


# --- preparing the carry (CPU) --------------------------------------------------------------------

def _word(text: str) -> str:
    return re.sub(r"[^\w']", "", text.lower())


def _stream(utterances, seconds: float) -> tuple[np.ndarray, list]:
    """Clips end to end up to `seconds` (whole windows), and each word's (word, start, end) in it."""
    from .data.audio import read_audio

    clips, words, at = [], [], 0
    limit = int(seconds // WINDOW_S * WINDOW_S * SAMPLE_RATE)
    for u in utterances:
        clip = read_audio(u.path, repair=False)
        clip = clip[: limit - at]
        offset = at / SAMPLE_RATE
        words += [[_word(w), s + offset, e + offset] for w, (s, e), *_ in u.alignments
                  if e + offset <= (at + len(clip)) / SAMPLE_RATE and _word(w)]
        clips.append(clip)
        at += len(clip)
        if at >= limit:
            break
    if at < WINDOW_S * SAMPLE_RATE:
        raise StageError(f"the dataset has only {at / SAMPLE_RATE:.0f} s of speech; the distillation needs "
                         f"at least one {WINDOW_S:.0f} s window: raise data.count")
    audio = np.concatenate(clips)
    return audio[: len(audio) // int(WINDOW_S * SAMPLE_RATE) * int(WINDOW_S * SAMPLE_RATE)], words


def prepare_distill(cfg: Config) -> Path:
    """The files the distillation reads, small enough to travel to a GPU box (Opus audio)."""
    import soundfile as sf
    from safetensors.torch import save_file

    from .data import read_split
    from .data.whisper_model import dims_of, load_whisper

    o, paths = cfg.organism, distill_paths(cfg)
    if (paths["prepared"] / "words.json").is_file():
        return paths["prepared"]
    data = cfg.output_path(cfg.data.out)
    words = {}
    with atomic_dir(paths["prepared"]) as tmp:
        for split, seconds in (("train", o.distill_train_seconds), ("eval", o.distill_eval_seconds)):
            audio, words[split] = _stream(read_split(data, split), seconds)
            sf.write(tmp / f"{split}.ogg", audio, SAMPLE_RATE, format="OGG", subtype="OPUS",
                     compression_level=o.distill_opus_level)
        (tmp / "words.json").write_text(json.dumps(words))
        whisper = load_whisper(cfg.data.whisper, cfg.artifacts_dir / "whisper")
        encoder = {k: v.half().contiguous() for k, v in whisper.encoder.state_dict().items()}
        save_file(encoder, str(tmp / "whisper-encoder.safetensors"), metadata={"dims": json.dumps(dims_of(whisper))})
    return paths["prepared"]


# --- the teacher ----------------------------------------------------------------------------------

def load_teacher(path: Path, device: str):
    from safetensors import safe_open
    from whisper.model import AudioEncoder

    with safe_open(str(path), "pt") as f:
        dims = json.loads(f.metadata()["dims"])
        state = {k: f.get_tensor(k).float() for k in f.keys()}
    encoder = AudioEncoder(dims["n_mels"], dims["n_audio_ctx"], dims["n_audio_state"], dims["n_audio_head"],
                           dims["n_audio_layer"])
    encoder.load_state_dict(state)
    return encoder.to(device).eval(), dims["n_mels"]


@torch.no_grad()
def teacher_targets(encoder, n_mels: int, audio24: np.ndarray, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """([windows, 375, d] pooled encoder states, [windows, 375, 8 * n_mels] log-mel) of a stream."""
    from whisper.audio import log_mel_spectrogram

    from .data.audio import resample

    audio16 = torch.from_numpy(resample(audio24, SAMPLE_RATE, WHISPER_RATE))
    per_window = int(WINDOW_S * WHISPER_RATE)
    states, mels = [], []
    for w in range(len(audio16) // per_window):
        chunk = audio16[w * per_window:(w + 1) * per_window].to(device)
        mel = log_mel_spectrogram(chunk, n_mels)[:, : WINDOW_FRAMES * MELS_PER_FRAME]   # Whisper's own scaling
        state = encoder(mel[None])[0]                                                    # [1500, d]
        states.append(state.view(WINDOW_FRAMES, 4, -1).mean(1).half())
        mels.append(mel.T.reshape(WINDOW_FRAMES, MELS_PER_FRAME * n_mels).half())
    return torch.stack(states), torch.stack(mels)


# --- voices the student was not given -------------------------------------------------------------
#
# Each of the student's crops may be heard in another voice: its pitch and formants scaled by a
# factor, its timing kept, while the teacher's states of the unshifted audio stay the target. So
# what the semantic codebook learns to carry is what Whisper hears in every voice, the words, and
# not the voice (ContentVec's speaker perturbation; VTLP in older ASR). The mel head's target is
# the shifted crop's own log-mel: the acoustic codebooks carry the sound they were given.

STRETCH_FFT, STRETCH_HOP = 1024, 256            # phase vocoder at 24 kHz: 43 ms windows, 11 ms hops
# Half the crops keep their own voice: the held-out streams the Mimi will encode carry no
# phase-vocoder sound, so the student still trains on speech as recorded. (A first run shifted
# every crop, by up to 20 %, and its codebooks collapsed: README, 2026-12-06.)
VOICE_SHIFT_SHARE = 0.5


def fft_resample(x: torch.Tensor, length: int) -> torch.Tensor:
    """[..., N] -> [..., length]: band-limited resampling (the spectrum cut or zero-padded)."""
    spectrum = torch.fft.rfft(x)
    bins = length // 2 + 1
    spectrum = spectrum[..., :bins] if bins <= spectrum.shape[-1] else F.pad(spectrum, (0, bins - spectrum.shape[-1]))
    return torch.fft.irfft(spectrum, length) * (length / x.shape[-1])


def time_stretch(x: torch.Tensor, length: int) -> torch.Tensor:
    """[N] -> [length] with the pitch kept: a phase vocoder (magnitudes interpolated between
    analysis frames, phases advanced by each bin's measured frequency)."""
    window = torch.hann_window(STRETCH_FFT, device=x.device)
    spec = torch.stft(x, STRETCH_FFT, STRETCH_HOP, window=window, return_complex=True)   # [bins, frames]
    rate = len(x) / length
    at = torch.arange(0, spec.shape[-1], rate, device=x.device)
    spec = F.pad(spec, (0, 2))
    left, alpha = at.floor().long(), (at - at.floor())
    a, b = spec[:, left], spec[:, left + 1]
    magnitude = (1 - alpha) * a.abs() + alpha * b.abs()
    expected = torch.linspace(0, math.pi * STRETCH_HOP, spec.shape[0], device=x.device)[:, None]
    advance = b.angle() - a.angle() - expected
    advance = advance - 2 * math.pi * torch.round(advance / (2 * math.pi)) + expected
    phase = torch.cat([spec[:, :1].angle(), torch.cumsum(advance, -1)[:, :-1] + spec[:, :1].angle()], -1)
    return torch.istft(torch.polar(magnitude, phase), STRETCH_FFT, STRETCH_HOP, window=window, length=length)


def shift_voice(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """[B, N] crops with pitch and formants scaled by `factors` [B] (1.2: 20 % higher), the same
    length and timing: resampled to N / factor samples (played at the same rate: higher and
    shorter), then stretched back to N by the phase vocoder."""
    n = x.shape[-1]
    return torch.stack([crop if f == 1 else time_stretch(fft_resample(crop, round(n / f)), n)
                        for crop, f in zip(x, factors.tolist())])


def shifted_crops(x: torch.Tensor, mel: torch.Tensor, shift: float, gen: torch.Generator):
    """A random VOICE_SHIFT_SHARE of the crops [B, N] in other voices, and the log-mel targets of
    all of them, one layout. Each factor is log-uniform in [1/(1+shift), 1+shift], rounded so the
    resampled crop is whole frames: few distinct lengths, so the FFT plans are reused."""
    frames = x.shape[-1] // FRAME
    draw = torch.exp((2 * torch.rand(len(x), generator=gen) - 1) * math.log1p(shift))
    chosen = torch.rand(len(x), generator=gen) < VOICE_SHIFT_SHARE
    factors = torch.where(chosen, frames / torch.round(frames / draw).clamp(min=1), torch.ones(len(x)))
    x = shift_voice(x, factors)
    return x, crop_mels(x, mel.shape[-1] // MELS_PER_FRAME)


def crop_mels(x: torch.Tensor, n_mels: int) -> torch.Tensor:
    """[B, frames * 1920] at 24 kHz -> [B, frames, 8 * n_mels]: Whisper's log-mel of each crop,
    in the layout `teacher_targets` gives the unshifted stream's."""
    from whisper.audio import log_mel_spectrogram

    frames = x.shape[-1] // FRAME
    audio16 = fft_resample(x.float(), x.shape[-1] * WHISPER_RATE // SAMPLE_RATE)
    return torch.stack([log_mel_spectrogram(a, n_mels)[:, : frames * MELS_PER_FRAME].T.reshape(frames, -1)
                        for a in audio16])


# --- the student ----------------------------------------------------------------------------------

def organism_mimi_config(cfg: Config) -> dict:
    """The organism's Mimi architecture (organism.mimi_arch) as a moshi config dict."""
    from .presets import small_mimi_config, standard_mimi_config

    o = cfg.organism
    if o.mimi_arch == "standard":
        return standard_mimi_config()  # 32 codebooks, of which the organism reads (and trains) n_q
    return small_mimi_config(o.n_q, o.card, o.mimi_filters, o.mimi_dim, o.mimi_layers, o.mimi_heads)


def organism_mimi(cfg: Config, seed: int):
    """The organism's Mimi architecture with seeded random weights, and its config."""
    from moshi.models import loaders

    torch.manual_seed(seed)
    config = organism_mimi_config(cfg)
    return loaders.get_mimi(None, config, num_codebooks=cfg.organism.n_q), config


class Heads(torch.nn.Module):
    """What the distillation trains beside the Mimi and then drops."""

    def __init__(self, dim: int, teacher_dim: int, mel_dim: int):
        super().__init__()
        self.semantic = torch.nn.Linear(dim, teacher_dim)
        self.mel = torch.nn.Sequential(torch.nn.Conv1d(dim, 2 * dim, 3, padding=1), torch.nn.GELU(),
                                       torch.nn.Conv1d(2 * dim, mel_dim, 1))


def student_forward(mimi, audio: torch.Tensor):
    """(semantic latent, all codebooks' latent, commitment penalty, codes) for [B, 1, samples].
    The quantizer runs in float32 also under autocast: its EMA codebook updates are float32."""
    q = mimi.quantizer
    emb = mimi._encode_to_unquantized_latent(audio)
    with torch.autocast(device_type=audio.device.type, enabled=False):
        emb = emb.float()
        first, rest = q.rvq_first(emb, FRAME_RATE), q.rvq_rest(emb, FRAME_RATE)
    return first.x, first.x + rest.x, (first.penalty + rest.penalty) / 2, torch.cat([first.codes, rest.codes], 1)


def train_student(cfg: Config, mimi, heads: Heads, audio: torch.Tensor, states: torch.Tensor, mels: torch.Tensor,
                  device: str) -> dict:
    """Crops of `crop` frames from random windows; returns what the run did."""
    from tqdm import tqdm

    o = cfg.organism
    autocast = device.startswith("cuda")
    gen = torch.Generator().manual_seed(o.seed)
    crop = int(o.distill_crop_seconds * FRAME_RATE)
    windows = audio.view(-1, WINDOW_FRAMES * FRAME)
    params = [p for n, p in mimi.named_parameters() if not n.startswith(("decoder", "upsample"))]
    optimizer = torch.optim.AdamW(params + list(heads.parameters()), lr=o.distill_lr, weight_decay=0.01)
    mimi.train()
    start, losses = time.time(), []
    planned = o.distill_steps
    bar = tqdm(range(o.distill_steps), desc="distilling Mimi", unit="step")
    for step in bar:
        if step == PACE_FROM:
            paced = time.time()
        if step == WARMUP and o.distill_time_limit_s:
            # Fit the cosine to the time limit, from the pace after the first (slower) steps, so a
            # run the limit cuts short still anneals its learning rate and codebooks.
            pace = (time.time() - paced) / (WARMUP - PACE_FROM)
            left = o.distill_time_limit_s - (time.time() - start)
            planned = min(o.distill_steps, WARMUP + max(1, int(0.97 * left / pace)))
            bar.total = planned
        w = torch.randint(len(windows), (o.distill_batch_size,), generator=gen)
        s = torch.randint(WINDOW_FRAMES - crop + 1, (o.distill_batch_size,), generator=gen)
        x = torch.stack([windows[a, b * FRAME:(b + crop) * FRAME] for a, b in zip(w.tolist(), s.tolist())])
        target = torch.stack([states[a, b:b + crop] for a, b in zip(w.tolist(), s.tolist())]).float()
        mel = torch.stack([mels[a, b:b + crop] for a, b in zip(w.tolist(), s.tolist())]).float()
        x = x.to(device)
        if o.distill_voice_shift:
            x, mel = shifted_crops(x, mel, o.distill_voice_shift, gen)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=autocast):
            semantic, latent, penalty, _ = student_forward(mimi, x[:, None])
            pred = heads.semantic(semantic.transpose(1, 2)).float()
            mel_pred = heads.mel(latent).transpose(1, 2).float()
        sem_loss = 1 - F.cosine_similarity(pred, target.to(device), dim=-1).mean()
        rec_loss = (mel_pred - mel.to(device)).abs().mean()
        loss = sem_loss + rec_loss + o.distill_commitment * penalty.float()
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step, planned, o.distill_lr, warmup=WARMUP)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 50 == 0 or step == planned - 1:
            losses.append({"step": step, "semantic": round(sem_loss.item(), 4), "mel_l1": round(rec_loss.item(), 4),
                           "commitment": round(penalty.item(), 4)})
            bar.set_postfix(sem=losses[-1]["semantic"], mel=losses[-1]["mel_l1"])
        if step + 1 == planned:
            break
        if o.distill_time_limit_s and time.time() - start > o.distill_time_limit_s:
            print(f"distill_time_limit_s reached after {step + 1} steps")
            break
    mimi.eval()
    return {"steps": step + 1, "planned_steps": planned, "seconds": round(time.time() - start, 1), "losses": losses}


# --- figures --------------------------------------------------------------------------------------

@torch.no_grad()
def stream_codes(mimi, heads: Heads | None, audio: torch.Tensor, device: str, states=None, mels=None) -> dict:
    """Codes of a stream window by window, and (with heads) the held-out losses."""
    codes, sem, rec = [], [], []
    for w, window in enumerate(audio.view(-1, WINDOW_FRAMES * FRAME)):
        semantic, latent, _, c = student_forward(mimi, window[None, None].to(device))
        codes.append(c[0].cpu())
        if heads is not None:
            sem.append(F.cosine_similarity(heads.semantic(semantic.transpose(1, 2))[0], states[w].to(device).float(),
                                           dim=-1).mean().item())
            rec.append((heads.mel(latent)[0].T - mels[w].to(device).float()).abs().mean().item())
    out = {"codes": torch.cat(codes, dim=1)}
    if heads is not None:
        out["semantic_cosine"], out["mel_l1"] = float(np.mean(sem)), float(np.mean(rec))
    return out


def perplexity(codes: torch.Tensor, card: int) -> list[float]:
    """exp(entropy) of each codebook's code histogram (card = every code used equally)."""
    out = []
    for row in codes:
        p = torch.bincount(row.long(), minlength=card).double()
        p = p[p > 0] / p.sum()
        out.append(round(float(torch.exp(-(p * p.log()).sum())), 1))
    return out


def _bags(codes: torch.Tensor, words: list, vocab: dict, card: int, codebooks: int):
    """EmbeddingBag inputs (indices, offsets) and labels of the words in `vocab`."""
    idx, offsets, labels, at = [], [], [], 0
    frames = codes.shape[1]
    for word, start, end in words:
        if word not in vocab:
            continue
        a = min(int(start * FRAME_RATE), frames - 1)
        b = max(a + 1, min(math.ceil(end * FRAME_RATE), frames))
        offsets.append(at)
        at += codebooks * (b - a)
        cells = codes[:codebooks, a:b].long() + torch.arange(codebooks)[:, None] * card
        idx.append(cells.flatten())
        labels.append(vocab[word])
    return torch.cat(idx), torch.tensor(offsets), torch.tensor(labels)


def word_probe(train_codes, train_words, eval_codes, eval_words, card: int, codebooks: int, device: str,
               steps: int = 300) -> float:
    """Held-out accuracy of a linear word classifier on a word's mean one-hot codes."""
    counts: dict[str, int] = {}
    for w, *_ in train_words:
        counts[w] = counts.get(w, 0) + 1
    vocab = {w: i for i, w in enumerate(sorted(counts, key=lambda w: (-counts[w], w))[:PROBE_WORDS])}
    xi, xo, y = (t.to(device) for t in _bags(train_codes, train_words, vocab, card, codebooks))
    ei, eo, ey = (t.to(device) for t in _bags(eval_codes, eval_words, vocab, card, codebooks))
    torch.manual_seed(0)
    probe = torch.nn.EmbeddingBag(codebooks * card, len(vocab), mode="mean").to(device)
    bias = torch.zeros(len(vocab), device=device, requires_grad=True)
    optimizer = torch.optim.Adam(list(probe.parameters()) + [bias], lr=0.05)
    for _ in range(steps):
        loss = F.cross_entropy(probe(xi, xo) + bias, y) + 1e-4 * probe.weight.square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float(((probe(ei, eo) + bias).argmax(-1) == ey).float().mean())


# --- the stage ------------------------------------------------------------------------------------

def save_shards(state: dict[str, torch.Tensor], folder: Path, stem: str) -> list[str]:
    """bf16 safetensors files of at most SHARD_BYTES each (what comes back from the GPU box)."""
    from safetensors.torch import save_file

    shards, current, size = [], {}, 0
    for name in sorted(state):
        t = state[name].to(torch.bfloat16).contiguous()
        if current and size + t.numel() * 2 > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[name], size = t, size + t.numel() * 2
    shards.append(current)
    names = []
    for i, shard in enumerate(shards):
        names.append(f"{stem}-{i:02d}.safetensors")
        save_file(shard, str(folder / names[-1]))
    return names


def load_shards(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("mimi-*.safetensors"))
    if not files:
        raise StageError(f"{folder}: no mimi-*.safetensors shards; run `invoke organism --stage distill` first")
    state = {}
    for f in files:
        state.update({k: v.float() for k, v in load_file(str(f)).items()})
    return state


def whole_windows(audio: np.ndarray) -> np.ndarray:
    """A decoded Opus stream back to the whole windows it was written with (the codec pads or
    trims a few ms at the ends)."""
    per_window = WINDOW_FRAMES * FRAME
    n = max(1, round(len(audio) / per_window)) * per_window
    return np.pad(audio, (0, max(0, n - len(audio))))[:n]


def _streams(prepared: Path, device: str, teacher: bool) -> dict:
    """split -> (audio, teacher states, log-mel) on `device` (the teacher's parts None without it)."""
    import soundfile as sf

    encoder, n_mels = load_teacher(prepared / "whisper-encoder.safetensors", device) if teacher else (None, 0)
    streams, started = {}, time.time()
    for split in ("train", "eval"):
        audio, _ = sf.read(prepared / f"{split}.ogg", dtype="float32")
        audio = whole_windows(audio)
        targets = teacher_targets(encoder, n_mels, audio, device) if teacher else (None, None)
        streams[split] = (torch.from_numpy(audio).to(device), *targets)
    if teacher:
        print(f"teacher targets in {time.time() - started:.0f} s", flush=True)
    return streams


def _reset_codebook_caches(mimi) -> None:
    for module in mimi.modules():
        if hasattr(module, "_embedding"):
            module._embedding = None  # moshi caches each codebook's centroids


def distill_mimi(cfg: Config, device: str | None = None) -> Path:
    """Train the organism's Mimi on the prepared streams and write its shards (kept when they
    exist), then its figures (`distill_figures`)."""
    paths = distill_paths(cfg)
    if list(paths["mimi"].glob("mimi-*.safetensors")):
        return paths["mimi"]
    prepared = prepare_distill(cfg)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    o = cfg.organism
    streams = _streams(prepared, device, teacher=True)
    mimi, mimi_config = organism_mimi(cfg, o.seed + 1)
    mimi = mimi.to(device)
    heads = Heads(mimi_config["seanet"]["dimension"], streams["train"][1].shape[-1], streams["train"][2].shape[-1])
    heads = heads.to(device)
    run = train_student(cfg, mimi, heads, *streams["train"], device)

    # The Mimi that ships is the bf16-rounded one: every figure is measured on it.
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.bfloat16).float() for k, v in mimi.state_dict().items()}
    with atomic_dir(paths["mimi"]) as tmp:   # before the figures: a GPU call out of time still brings it back
        save_shards(state, tmp, "mimi")
        save_file({k: v.detach().float().contiguous() for k, v in heads.state_dict().items()},
                  str(tmp / "heads.safetensors"))
        (tmp / "mimi-config.json").write_text(json.dumps(mimi_config, indent=2) + "\n")
        (tmp / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    print(f"distilled in {run['seconds']} s ({run['steps']} steps); measuring the figures", flush=True)
    distill_figures(cfg, device, streams)
    return paths["mimi"]


def _code_figures(codes: dict, words: dict, card: int, n_q: int, device: str) -> dict:
    """Codebook perplexity on the held-out stream and the word probe (all codebooks, the first alone)."""
    def probe(codebooks: int) -> float:
        return round(word_probe(codes["train"], words["train"], codes["eval"], words["eval"], card, codebooks,
                                device), 4)

    return {"perplexity_eval": perplexity(codes["eval"], card), "word_probe_eval": probe(n_q),
            "word_probe_eval_first_codebook": probe(1)}


def baseline_figures(cfg: Config, device: str | None = None, streams: dict | None = None) -> dict:
    """The figures of the Mimi the distilled one replaces: the same architecture with random
    weights, codebooks fitted by k-means on `organism.fit_seconds` of the training stream."""
    from .presets import fit_mimi_codebooks

    paths, o = distill_paths(cfg), cfg.organism
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    streams = streams or _streams(paths["prepared"], device, teacher=False)
    words = json.loads((paths["prepared"] / "words.json").read_text())
    baseline, _ = organism_mimi(cfg, o.seed + 1)
    baseline = baseline.to(device).eval()
    fit_mimi_codebooks(baseline, streams["train"][0][: int(o.fit_seconds * SAMPLE_RATE)].cpu().numpy(), 10, o.seed)
    codes = {split: stream_codes(baseline, None, s[0], device)["codes"] for split, s in streams.items()}
    return _code_figures(codes, words, o.card, o.n_q, device)


def distill_figures(cfg: Config, device: str | None = None, streams: dict | None = None) -> Path:
    """figures.json of the distilled Mimi (held-out streams) beside the k-means Mimi it replaces.
    The semantic and mel figures need the training heads (heads.safetensors) and the teacher."""
    from safetensors.torch import load_file

    paths = distill_paths(cfg)
    folder, o = paths["mimi"], cfg.organism
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    has_heads = (folder / "heads.safetensors").is_file()
    streams = streams or _streams(paths["prepared"], device, teacher=has_heads)
    words = json.loads((paths["prepared"] / "words.json").read_text())
    mimi, config = organism_mimi(cfg, o.seed + 1)
    mimi.load_state_dict(load_shards(folder))
    _reset_codebook_caches(mimi)
    mimi = mimi.to(device).eval()
    heads = None
    if has_heads:
        heads = Heads(config["seanet"]["dimension"], streams["train"][1].shape[-1], streams["train"][2].shape[-1])
        heads.load_state_dict(load_file(str(folder / "heads.safetensors")))
        heads = heads.to(device).eval()
    figures = {"run": json.loads((folder / "run.json").read_text()), "mimi": {}, "baseline": {}}
    started = time.time()
    held = {split: stream_codes(mimi, heads, s[0], device, s[1], s[2]) for split, s in streams.items()}
    # How fast this Mimi encodes (one 30 s window at a time, heads included): what packing costs.
    encoded_s = sum(len(s[0]) for s in streams.values()) / SAMPLE_RATE
    figures["encode_x_real_time"] = round(encoded_s / (time.time() - started), 1)

    codes = {split: h["codes"] for split, h in held.items()}
    figures["mimi"] = _code_figures(codes, words, o.card, o.n_q, device)
    if heads is not None:
        mean_mel = streams["train"][2].float().mean((0, 1))
        figures["mimi"].update(
            semantic_cosine_eval=round(held["eval"]["semantic_cosine"], 4), mel_l1_eval=round(held["eval"]["mel_l1"], 4),
            mel_l1_eval_of_the_mean=round(float((streams["eval"][2].float() - mean_mel).abs().mean()), 4))
    print(json.dumps(figures["mimi"]), flush=True)
    figures["baseline"] = baseline_figures(cfg, device, streams)
    figures["streams_s"] = {split: round(len(s[0]) / SAMPLE_RATE) for split, s in streams.items()}
    figures["probe_words"] = {split: len(w) for split, w in words.items()}
    figures["figures_device"] = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    with atomic_file(folder / "figures.json") as tmp:
        tmp.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k != "run"}, indent=2))
    return folder
