"""Presets and test fixtures: checkpoints in the exact layout of `kyutai/stt-1b-en_fr-candle`,
with weights made here (the shipping stages never import this module; `pipeline.checkpoint`
opens what it writes).

Real Kyutai weights cannot be downloaded on the machines this project is tested on, so every
test runs on checkpoints this module writes:

- `tiny`: small dimensions and a tiny Mimi (described by `mimi_config_name`), built in seconds
  on a CPU; the default model of every stage and of the tests.
- `server`: the `tiny` LM over the real Mimi architecture (8 codebooks), the smallest
  checkpoint Kyutai's moshi-server can load (it builds only the standard Mimi).
- `1b`: the real stt-1b-en_fr shapes and the real Mimi architecture, random weights in bf16,
  for scale, speed and parity work.

A directory holds `config.json`, `model.safetensors` (LM in bf16), the Mimi weights (float32),
both with attention tensors under the legacy names Kyutai's files use (`in_proj_weight`,
`out_proj.weight`: the Rust crate reads only these, PyTorch maps them with a load hook) and a SentencePiece tokenizer trained here on generated English and
French text, with Kyutai's special ids (0 = end of padding, 3 = padding, text_card = start).

Random Mimi weights alone would map every input to code 0 (moshi's codebooks start at zero and
are only filled by k-means during training), making every code-level check compare zeros with
zeros. The codebooks are therefore fitted here on the Mimi's own latents of synthetic,
speech-like audio (see `fit_mimi_codebooks`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from num2words import num2words
from safetensors.torch import save_file
from tqdm import tqdm

from .checkpoint import NON_LM_KEYS, ModelError, to_legacy_names
from .constants import DEFAULT_TEXT_DELAY, FRAME_RATE, SAMPLE_RATE
from .io import atomic_dir

TEXT_PADDING_ID = 3
END_OF_PADDING_ID = 0


@dataclass(frozen=True)
class Preset:
    dim: int
    num_heads: int
    num_layers: int
    n_q: int
    card: int
    text_card: int
    mimi: dict | None  # None: the real Mimi architecture (moshi's default config)
    mimi_name: str
    tokenizer_name: str
    fit_seconds: float  # synthetic audio used to fit the Mimi codebooks
    kmeans_iters: int


def small_mimi_config(n_q: int, bins: int, filters: int = 4, dim: int = 32, layers: int = 1, heads: int = 2,
                      feedforward: int | None = None) -> dict:
    """The real Mimi architecture (SEANet, transformer, split RVQ) at a small width
    (`feedforward`: the transformer's hidden width, 2 * dim unless given)."""
    seanet = {
        "channels": 1, "dimension": dim, "causal": True, "n_filters": filters, "n_residual_layers": 1,
        "activation": "ELU", "compress": 2, "dilation_base": 2, "disable_norm_outer_blocks": 0,
        "kernel_size": 7, "residual_kernel_size": 3, "last_kernel_size": 3, "norm": "none",
        "pad_mode": "constant", "ratios": [8, 6, 5, 4], "true_skip": True,
    }
    transformer = {
        "d_model": dim, "num_heads": heads, "num_layers": layers, "causal": True, "layer_scale": 0.01,
        "context": 250, "conv_layout": True, "max_period": 10000, "gating": "none",
        "norm": "layer_norm", "positional_embedding": "rope", "dim_feedforward": feedforward or 2 * dim,
        "input_dimension": dim, "output_dimensions": [dim],
    }
    quantizer = {"dimension": dim // 2, "n_q": n_q, "bins": bins, "input_dimension": dim, "output_dimension": dim}
    return {"sample_rate": SAMPLE_RATE, "channels": 1, "frame_rate": FRAME_RATE,
            "seanet": seanet, "quantizer": quantizer, "transformer": transformer}


# Kyutai's Mimi (moshi's `loaders._mimi_config`, Rust's `mimi::Config::v0_1`): the only one
# moshi-server builds. Its file holds all 32 codebooks; a model reads the first n_q of them.
# tests/test_distill.py checks these numbers against moshi's own config.
STANDARD_MIMI = {"n_q": 32, "bins": 2048, "filters": 64, "dim": 512, "layers": 8, "heads": 8, "feedforward": 2048}


def standard_mimi_config() -> dict:
    """The standard Mimi as a config dict (what moshi builds when given none)."""
    return small_mimi_config(**STANDARD_MIMI)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        dim=64, num_heads=4, num_layers=2, n_q=8, card=64, text_card=1000,
        mimi=small_mimi_config(n_q=8, bins=64), mimi_name="mimi-tiny.safetensors",
        tokenizer_name="tokenizer_en_fr_audio_1000.model", fit_seconds=120.0, kmeans_iters=10,
    ),
    # The standard Mimi (what moshi-server builds for every ASR model) under a tiny LM: the
    # smallest checkpoint Kyutai's server can load, for the server tests and `invoke serve`.
    "server": Preset(
        dim=64, num_heads=4, num_layers=2, n_q=8, card=2048, text_card=1000,
        mimi=None, mimi_name="mimi-pytorch-e351c8d8@125.safetensors",
        tokenizer_name="tokenizer_en_fr_audio_1000.model", fit_seconds=60.0, kmeans_iters=6,
    ),
    "1b": Preset(
        dim=2048, num_heads=16, num_layers=16, n_q=32, card=2048, text_card=8000,
        mimi=None, mimi_name="mimi-pytorch-e351c8d8@125.safetensors",
        tokenizer_name="tokenizer_en_fr_audio_8000.model", fit_seconds=120.0, kmeans_iters=6,
    ),
}


def lm_config(preset: Preset, name: str, seed: int) -> dict:
    """config.json with the keys of kyutai/stt-1b-en_fr-candle."""
    cfg = {
        "card": preset.card, "n_q": preset.n_q, "dep_q": 0, "delays": [0] * (preset.n_q + 1),
        "dim": preset.dim, "text_card": preset.text_card, "existing_text_padding_id": TEXT_PADDING_ID,
        "num_heads": preset.num_heads, "num_layers": preset.num_layers, "hidden_scale": 4.125,
        "causal": True, "layer_scale": None, "context": 750, "max_period": 100000.0,
        "gating": "silu", "norm": "rms_norm_f32", "positional_embedding": "rope",
        # Unused with dep_q = 0, but kept as in Kyutai's file: with `depformer_multi_linear`
        # moshi creates no `depformer_in` layer, so the state dict has exactly the file's tensors.
        "depformer_dim": 1024, "depformer_num_heads": 16, "depformer_num_layers": 6,
        "depformer_dim_feedforward": 4224, "depformer_multi_linear": True,
        "depformer_pos_emb": "none", "depformer_weights_per_step": True,
        "extra_heads_num_heads": 4, "extra_heads_dim": 6,
        "conditioners": {}, "cross_attention": False,
        "model_id": {"origin": f"stt-numerals preset '{name}', random weights, seed {seed}"},
        "lm_gen_config": {"temp": 0.0, "temp_text": 0.0, "top_k": 250, "top_k_text": 50},
        "stt_config": {"audio_delay_seconds": DEFAULT_TEXT_DELAY, "audio_silence_prefix_seconds": 0.0},
        "model_type": "stt",
        "mimi_name": preset.mimi_name,
        "tokenizer_name": preset.tokenizer_name,
    }
    if preset.mimi is not None:
        cfg["mimi_config_name"] = Path(preset.mimi_name).with_suffix(".json").name
    return cfg


# --- text tokenizer -------------------------------------------------------------------------

_EN_SENTENCES = [
    "my order number is {d}", "the location code is {d}", "please call me back at {d}",
    "i would like to check the status of order {d}", "can you read that back to me",
    "the reference is {d} and the postcode is {d}", "thank you very much for your help today",
    "i need to change the delivery address", "my account was charged twice last week",
    "hello i am calling about my recent order", "yes that is correct", "no that is not right",
    "could you spell that for me", "it was {n} dollars", "we have {n} items in stock",
    "the meeting is on the {o} floor", "extension {d} please", "my phone number is plus one {d}",
]
_FR_SENTENCES = [
    "mon numéro de commande est {d}", "le code du magasin est {d}", "rappelez-moi au {d}",
    "je voudrais connaître l'état de ma commande", "merci beaucoup pour votre aide",
    "pouvez-vous répéter s'il vous plaît", "oui c'est exact", "non ce n'est pas ça",
    "il y a {n} articles en stock", "la référence est {d}", "bonjour j'appelle pour ma commande",
]


def tokenizer_corpus(seed: int, lines: int = 20_000) -> list[str]:
    """Generated English/French sentences with numbers as digits, digit words and values."""
    rng = random.Random(seed)
    corpus = []
    for i in range(lines):
        lang = "fr" if i % 3 == 2 else "en"
        template = rng.choice(_FR_SENTENCES if lang == "fr" else _EN_SENTENCES)
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 10)))
        style = rng.random()
        if style < 0.4:  # dictated digit by digit, the form the fine-tune teaches
            d = " ".join(num2words(int(c), lang=lang) for c in digits)
        elif style < 0.7:
            d = digits
        else:
            d = num2words(int(digits[:4]), lang=lang)
        n = num2words(rng.randint(0, 2000), lang=lang)
        o = num2words(rng.randint(1, 40), lang=lang, to="ordinal")
        sentence = template.format(d=d, n=n, o=o)
        corpus.append(sentence.capitalize() + rng.choice([".", "?", "", ","]))
    return corpus


def train_tokenizer(path: Path, vocab_size: int, seed: int, corpus: list[str] | None = None) -> None:
    """SentencePiece unigram model with Kyutai's special ids (0 unk/end-of-padding, 3 pad),
    trained on `corpus` or on generated sentences."""
    import io

    import sentencepiece as spm

    # Sentences from an iterator and the model into memory: no temp paths end up recorded
    # in the model's trainer spec, so the same seed gives a byte-identical file.
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus or tokenizer_corpus(seed, lines=max(5_000, 3 * vocab_size))),
        model_writer=model, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, byte_fallback=True,
        hard_vocab_limit=False, unk_id=END_OF_PADDING_ID, bos_id=1, eos_id=2,
        pad_id=TEXT_PADDING_ID, num_threads=2, minloglevel=2,
    )
    path.write_bytes(model.getvalue())


# --- Mimi with fitted codebooks ---------------------------------------------------------------

def synthetic_audio(seconds: float, seed: int) -> np.ndarray:
    """Speech-like test signal: voiced glides with harmonics, noise bursts and silences."""
    rng = np.random.default_rng(seed)
    out, total = [], int(seconds * SAMPLE_RATE)
    while sum(len(x) for x in out) < total:
        n = int(rng.uniform(0.05, 0.4) * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        kind = rng.random()
        if kind < 0.55:
            f0 = rng.uniform(80, 300) * (1 + rng.uniform(-0.3, 0.3) * t / t[-1])
            phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
            seg = sum(rng.uniform(0, 1) / k * np.sin(k * phase) for k in range(1, 12))
        elif kind < 0.85:
            seg = rng.standard_normal(n) * np.hanning(n)
            seg = np.convolve(seg, np.ones(rng.integers(1, 12)) / 6, mode="same")
        else:
            seg = np.zeros(n)
        out.append(seg * rng.uniform(0.02, 0.3) * np.hanning(n))
    audio = np.concatenate(out)[:total]
    return audio.astype(np.float32)


def _kmeans(x: torch.Tensor, k: int, iters: int, gen: torch.Generator) -> torch.Tensor:
    """k-means with farthest-point initialisation, so centroids are well separated.

    Random-weight Mimi latents of quiet audio are nearly identical; centroids spent on them
    sit almost on top of each other and the argmin between them is decided by rounding noise,
    so PyTorch and Candle (or batch and streaming encodes) would disagree on those codes.
    Spreading the centroids first keeps every decision clear of such near-ties.
    """
    means = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    means[0] = x[torch.randint(len(x), (1,), generator=gen)]
    nearest = torch.cdist(x, means[:1])[:, 0]
    for i in range(1, k):
        means[i] = x[nearest.argmax()]
        nearest = torch.minimum(nearest, torch.cdist(x, means[i:i + 1])[:, 0])
    for _ in range(iters):
        assign = torch.cdist(x, means).argmin(dim=1)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(means).index_add_(0, assign, x)
        updated = sums / counts.clamp(min=1).unsqueeze(1).to(x.dtype)
        means = torch.where((counts > 0)[:, None], updated, means)  # empty clusters stay put
    return means


MIN_LATENTS_PER_CODE = 16  # fewer and k-means memorises the data: deep residuals vanish


def _gaussian_codebook(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Random centroids with the data's mean and spread: well separated in high dimension. Drawn
    on the generator's device (the CPU), then moved to the data's (a Mimi fitted on a GPU)."""
    return x.mean(0) + x.std(0) * torch.randn(k, x.shape[1], generator=gen).to(x.device)


@torch.no_grad()
def fit_mimi_codebooks(mimi, audio: np.ndarray, iters: int, seed: int) -> None:
    """Fill every codebook from the residuals of the Mimi's own latents on `audio` (24 kHz):
    k-means where there are enough latents per code (tiny), otherwise Gaussian centroids
    matched to the residual (the 1b preset's 2048 codes would need hours of audio)."""
    audio = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    window = 10 * SAMPLE_RATE
    chunks = audio[: len(audio) // window * window].view(-1, 1, window)
    device = next(mimi.parameters()).device
    latent = torch.cat([mimi._encode_to_unquantized_latent(c[None].to(device)) for c in chunks], dim=-1)
    gen = torch.Generator().manual_seed(seed)
    quantizer = mimi.quantizer
    layers = [(rvq, layer) for rvq in (quantizer.rvq_first, quantizer.rvq_rest) for layer in rvq.vq.layers]
    residual, current = None, None
    for rvq, layer in tqdm(layers, desc="fitting Mimi codebooks", unit="codebook", leave=False):
        if rvq is not current:
            current, residual = rvq, rvq.input_proj(latent)
        x = layer.project_in(residual.transpose(1, 2))
        x = x.reshape(-1, x.shape[-1])
        k = layer.codebook_size
        if len(x) >= MIN_LATENTS_PER_CODE * k:
            centroids = _kmeans(x, k, iters, gen)
        else:
            centroids = _gaussian_codebook(x, k, gen)
        codebook = layer._codebook
        codebook.embedding_sum.copy_(centroids)
        codebook.cluster_usage.fill_(1.0)
        codebook._initialized.fill_(1.0)
        codebook._embedding = None  # drop moshi's cached embedding so the new values are used
        residual = residual - layer.decode(layer.encode(residual))


# --- the checkpoint -------------------------------------------------------------------------

def make_checkpoint(preset_name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a complete checkpoint directory for `preset_name` (atomic: temp dir, then rename)."""
    if preset_name not in PRESETS:
        raise ModelError(f"unknown preset {preset_name!r}; choose one of {sorted(PRESETS)}")
    return build_checkpoint(PRESETS[preset_name], preset_name, out_dir, seed)


def write_mimi(mimi_state: dict[str, torch.Tensor], path: Path) -> Path:
    """A Mimi state as the checkpoints here hold it: float32, under the legacy tensor names. The
    same state always gives the same bytes (the organism's Mimi is rebuilt from its shards so)."""
    save_file(to_legacy_names({k: v.float().contiguous() for k, v in mimi_state.items()}), str(path))
    return Path(path)


def build_checkpoint(preset: Preset, name: str, out_dir: str | Path, seed: int = 0,
                     fit_audio: np.ndarray | None = None, corpus: list[str] | None = None,
                     mimi_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Random LM weights, a Mimi with fitted codebooks and a trained tokenizer, as a directory.

    `fit_audio` (24 kHz speech) replaces the synthetic signal the codebooks are fitted on and
    `corpus` the generated sentences the tokenizer learns from (the model organism uses its own
    dataset for both); `mimi_state` is a trained Mimi (the organism's distilled one) used as is."""
    from moshi.models import loaders

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        config = lm_config(preset, name, seed)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if preset.mimi is not None:
            (tmp / config["mimi_config_name"]).write_text(json.dumps(preset.mimi, indent=2) + "\n")

        torch.manual_seed(seed)
        lm_kwargs = {k: v for k, v in config.items() if k not in NON_LM_KEYS}
        lm = loaders.get_moshi_lm(None, lm_kwargs=lm_kwargs, dtype=torch.float32)
        state = {k: v.to(torch.bfloat16).contiguous() for k, v in lm.state_dict().items()}
        del lm
        save_file(to_legacy_names(state), str(tmp / "model.safetensors"))
        del state

        if mimi_state is None:
            torch.manual_seed(seed + 1)
            mimi = loaders.get_mimi(None, preset.mimi, num_codebooks=preset.n_q)
            if fit_audio is None:
                fit_audio = synthetic_audio(preset.fit_seconds, seed)
            fit_mimi_codebooks(mimi, fit_audio, preset.kmeans_iters, seed)
            mimi_state = mimi.state_dict()
        write_mimi(mimi_state, tmp / preset.mimi_name)

        train_tokenizer(tmp / preset.tokenizer_name, preset.text_card, seed, corpus)
    return out_dir
