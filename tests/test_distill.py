"""The Mimi distillation's conventions (pipeline/distill.py), checked with known answers: the
frame pairing of teacher and student, the Opus round trip of whole windows, word spans across
packed clips and the window cut, the probe's bags, perplexity and the shards' round trip."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline import distill
from pipeline.config import load_config
from pipeline.constants import SAMPLE_RATE


def test_a_window_is_whispers_30_s_and_375_mimi_frames():
    assert distill.FRAME == 1920 and distill.WINDOW_FRAMES == 375
    assert distill.WINDOW_FRAMES * distill.FRAME == distill.WINDOW_S * SAMPLE_RATE
    assert distill.WINDOW_FRAMES * distill.MELS_PER_FRAME == 3000  # Whisper's mel frames per window


class FrameIndex(torch.nn.Module):
    """A stand-in teacher whose state at Whisper frame j is j."""

    def forward(self, mel):
        return torch.arange(1500, dtype=torch.float32)[None, :, None].expand(1, 1500, 2)


def test_mimi_frame_k_is_paired_with_whisper_frames_4k_to_4k_plus_3():
    from whisper.audio import log_mel_spectrogram

    audio = np.random.default_rng(0).normal(0, 0.1, 2 * 720_000).astype(np.float32)
    states, mels = distill.teacher_targets(FrameIndex(), 80, audio, "cpu")
    assert states.shape == (2, 375, 2) and mels.shape == (2, 375, 640)
    assert states[1, 0, 0] == 1.5 and states[1, 374, 0] == 4 * 374 + 1.5   # mean of 4k..4k+3
    # The log-mel of Mimi frame k is Whisper's mel frames 8k..8k+7 of that window.
    from pipeline.data.audio import resample

    window = torch.from_numpy(resample(audio, SAMPLE_RATE, 16_000))[480_000:]
    mel = log_mel_spectrogram(window, 80)
    assert torch.allclose(mels[1, 10].float(), mel[:, 80:88].T.reshape(-1).half().float())


def test_a_decoded_opus_stream_is_cut_back_to_its_whole_windows(tmp_path):
    audio = np.random.default_rng(1).normal(0, 0.1, 720_000).astype(np.float32)
    sf.write(tmp_path / "a.ogg", audio, SAMPLE_RATE, format="OGG", subtype="OPUS")
    decoded, rate = sf.read(tmp_path / "a.ogg", dtype="float32")
    assert rate == SAMPLE_RATE and abs(len(decoded) - 720_000) < 2000
    assert len(distill.whole_windows(decoded)) == 720_000
    assert len(distill.whole_windows(decoded[:-5000])) == 720_000     # a codec's short end is padded
    assert len(distill.whole_windows(np.zeros(720_000 + 3000))) == 720_000


def _utterance(path: Path, seconds: float, words: list) -> SimpleNamespace:
    sf.write(path, np.zeros(int(seconds * SAMPLE_RATE), np.float32), SAMPLE_RATE, subtype="FLOAT")
    return SimpleNamespace(path=path, alignments=[[w, (s, e), "SPEAKER_MAIN"] for w, s, e in words])


def test_words_of_packed_clips_are_offset_and_the_window_cut_drops_the_last(tmp_path):
    first = _utterance(tmp_path / "a.wav", 20.0, [("Order", 0.5, 0.9), ("seven.", 19.0, 19.5)])
    second = _utterance(tmp_path / "b.wav", 20.0, [("Nine,", 1.0, 1.4), ("two", 9.0, 9.6), ("four", 10.5, 11.0)])
    audio, words = distill._stream([first, second], 40.0)   # whole windows: 30 s
    assert len(audio) == 30 * SAMPLE_RATE
    assert words == [["order", 0.5, 0.9], ["seven", 19.0, 19.5], ["nine", 21.0, 21.4], ["two", 29.0, 29.6]]


def test_a_word_bag_holds_every_codebook_of_the_frames_it_spans():
    codes = torch.arange(3 * 10).view(3, 10) % 7                         # [codebooks, frames]
    words = [["a", 0.0, 0.16], ["zzz", 0.2, 0.3], ["b", 0.72, 0.9]]       # b's end is past the last frame
    idx, offsets, labels = distill._bags(codes, words, {"a": 0, "b": 1}, card=7, codebooks=2)
    assert labels.tolist() == [0, 1] and offsets.tolist() == [0, 4]
    assert idx[:4].tolist() == [0, 1, 7 + 10 % 7, 7 + 11 % 7]            # frames 0-1, codebooks 0 and 1
    assert idx[4:].tolist() == [9 % 7, 7 + 19 % 7]                      # frame 9 only


def test_perplexity_is_the_number_of_codes_in_equal_use():
    codes = torch.stack([torch.arange(64) % 16, torch.zeros(64, dtype=torch.long)])
    assert distill.perplexity(codes, 16) == [16.0, 1.0]


def test_the_word_probe_reads_words_from_codes_and_not_from_noise():
    gen = torch.Generator().manual_seed(0)
    frames = 2000
    label = torch.randint(5, (frames // 4,), generator=gen).repeat_interleave(4)
    words = [[f"w{int(label[4 * i])}", 4 * i / 12.5, (4 * i + 4) / 12.5] for i in range(frames // 4)]
    telling = torch.stack([label, torch.randint(8, (frames,), generator=gen)])
    noise = torch.randint(8, (2, frames), generator=gen)
    half = frames // 2 / 12.5
    train = [w for w in words if w[2] <= half]
    held = [[w, s - half, e - half] for w, s, e in words if s >= half]
    cut = frames // 2
    assert distill.word_probe(telling[:, :cut], train, telling[:, cut:], held, 8, 2, "cpu") == 1.0
    assert distill.word_probe(noise[:, :cut], train, noise[:, cut:], held, 8, 2, "cpu") < 0.45


def test_shards_stay_under_the_limit_and_load_back_as_bf16_values(tmp_path, monkeypatch):
    monkeypatch.setattr(distill, "SHARD_BYTES", 3000)
    state = {f"layer{i}.weight": torch.randn(30, 20) for i in range(4)}
    names = distill.save_shards(state, tmp_path, "mimi")
    assert len(names) == 2   # 1,200 bytes of bf16 per tensor: two fit under 3,000
    assert all((tmp_path / n).stat().st_size < 3000 + 500 for n in names)  # + the safetensors header
    back = distill.load_shards(tmp_path)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k].bfloat16().float()) for k in state)


def test_a_missing_distilled_mimi_says_which_stage_makes_it(tmp_path):
    with pytest.raises(Exception, match="--stage distill"):
        distill.load_shards(tmp_path)


def test_the_organism_mimi_follows_its_config():
    cfg = load_config(None, ["organism.mimi_dim=32", "organism.mimi_layers=2", "organism.mimi_heads=4",
                             "organism.card=16", "organism.n_q=4"])
    mimi, config = distill.organism_mimi(cfg, 0)
    assert config["transformer"]["num_layers"] == 2 and config["transformer"]["num_heads"] == 4
    assert mimi.num_codebooks == 4 and mimi.cardinality == 16
    assert json.loads(json.dumps(config)) == config


def test_the_standard_mimi_is_kyutais_own_config():
    """organism.mimi_arch=standard builds exactly the Mimi moshi builds with no config (the one
    moshi-server builds, Config::v0_1), and the organism's checkpoint then names no mimi_config,
    so `invoke serve` does not refuse it (pipeline.serve.unservable reads that key)."""
    from moshi.models import loaders

    from pipeline.organism import organism_preset
    from pipeline.presets import lm_config

    cfg = load_config(None, ["organism.mimi_arch=standard", "organism.card=2048", "organism.n_q=8"])
    mimi, config = distill.organism_mimi(cfg, 0)
    assert config == json.loads(json.dumps(loaders._mimi_config))
    assert mimi.num_codebooks == 8 and mimi.cardinality == 2048
    assert set(mimi.state_dict()) == set(loaders.get_mimi(None, num_codebooks=8).state_dict())
    preset = organism_preset(cfg)
    assert preset.mimi is None and "mimi_config_name" not in lm_config(preset, "organism", 0)
    custom = organism_preset(load_config(None, []))
    assert "mimi_config_name" in lm_config(custom, "organism", 0)


def test_a_standard_mimi_with_another_codebook_size_is_refused():
    with pytest.raises(Exception, match="organism.card=2048"):
        load_config(None, ["organism.mimi_arch=standard", "organism.card=256"])
    with pytest.raises(Exception, match="organism.mimi_arch"):
        load_config(None, ["organism.mimi_arch=large"])


def test_a_bad_mimi_source_is_refused():
    with pytest.raises(Exception, match="organism.mimi"):
        load_config(None, ["organism.mimi=wavlm"])


def _spoken_stream(seconds: float, seed: int) -> tuple[np.ndarray, list]:
    """espeak-ng sentences end to end at 24 kHz, with their word spans (a stand-in dataset)."""
    import random

    from pipeline.data.audio import resample
    from pipeline.data.espeak import Espeak

    rng = random.Random(seed)
    vocab = "one two three four five six seven eight nine zero order number code please".split()
    audio, words, at = [], [], 0.0
    while at < seconds:
        sentence = [rng.choice(vocab) for _ in range(6)]
        out = Espeak().synthesize(sentence, rng.choice(["en-us", "en", "en-029"]), rate=rng.randint(140, 200))
        clip = resample(out.audio, out.sample_rate, SAMPLE_RATE)
        words += [[w, at + s, at + e] for w, (s, e) in zip(sentence, out.timings)]
        audio.append(clip)
        at += len(clip) / SAMPLE_RATE
    stream = np.concatenate(audio)[: int(seconds * SAMPLE_RATE)]
    return stream, [w for w in words if w[2] <= seconds]


def _prepare(cfg, tmp_path: Path) -> None:
    """The distillation's carry, made from espeak-ng streams (30 s each) instead of a dataset."""
    from safetensors.torch import save_file

    from pipeline.data.whisper_model import dims_of, load_whisper

    prepared = distill.distill_paths(cfg)["prepared"]
    prepared.mkdir(parents=True)
    words = {}
    for split, seed in (("train", 0), ("eval", 1)):
        audio, words[split] = _spoken_stream(30.0, seed)
        sf.write(prepared / f"{split}.ogg", audio, SAMPLE_RATE, format="OGG", subtype="OPUS")
    (prepared / "words.json").write_text(json.dumps(words))
    whisper = load_whisper("tiny.en", tmp_path / "whisper")
    save_file({k: v.half().contiguous() for k, v in whisper.encoder.state_dict().items()},
              str(prepared / "whisper-encoder.safetensors"), metadata={"dims": json.dumps(dims_of(whisper))})


def test_the_distillation_learns_the_teacher_and_ships_a_complete_mimi(tmp_path):
    """A CPU-sized run, its crops in shifted voices: the semantic loss falls, every figure is
    written, and the shards load into the organism's Mimi with no tensor missing or extra."""
    cfg = load_config(None, [f"artifacts={tmp_path}", "organism.out=o", "organism.mimi=distilled",
                             "organism.mimi_dim=64", "organism.card=32", "organism.n_q=4",
                             "organism.distill_steps=40", "organism.distill_batch_size=4",
                             "organism.distill_crop_seconds=2", "organism.distill_lr=2e-3", "organism.fit_seconds=30",
                             "organism.distill_voice_shift=0.2"])
    _prepare(cfg, tmp_path)
    folder = distill.distill_mimi(cfg, "cpu")
    losses = json.loads((folder / "run.json").read_text())["losses"]
    assert losses[-1]["semantic"] < losses[0]["semantic"] - 0.05
    figures = json.loads((folder / "figures.json").read_text())
    for key in ("perplexity_eval", "word_probe_eval", "word_probe_eval_first_codebook", "semantic_cosine_eval",
                "mel_l1_eval", "mel_l1_eval_of_the_mean"):
        assert key in figures["mimi"], key
    assert len(figures["mimi"]["perplexity_eval"]) == 4 and "word_probe_eval" in figures["baseline"]
    mimi, _ = distill.organism_mimi(cfg, 5)
    assert set(distill.load_shards(folder)) == set(mimi.state_dict())


def _tone(hz: float, seconds: float = 4.0, on: tuple[float, float] = (1.0, 3.0)) -> torch.Tensor:
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return torch.sin(2 * np.pi * hz * t) * ((t > on[0]) & (t < on[1])).float()


def _peak_hz(x: torch.Tensor) -> float:
    return torch.fft.rfft(x * torch.hann_window(len(x))).abs().argmax().item() * SAMPLE_RATE / len(x)


def _burst(x: torch.Tensor) -> tuple[float, float]:
    """First and last 10 ms block where the signal is on."""
    on = (x.abs().unfold(0, 240, 240).amax(1) > 0.3).nonzero()
    return on[0].item() / 100, on[-1].item() / 100


def test_a_shifted_voice_moves_pitch_by_its_factor_and_keeps_the_timing():
    """shift_voice: a 440 Hz tone burst (1-3 s of a 4 s crop) comes out at 440 x factor, the same
    length, starting and ending within 20 ms of where it did; factor 1 leaves the crop as it is."""
    crops = torch.stack([_tone(440.0)] * 3)
    shifted = distill.shift_voice(crops, torch.tensor([1.0, 1.2, 0.85]))
    assert shifted.shape == crops.shape and torch.equal(shifted[0], crops[0])
    for crop, factor in zip(shifted[1:], (1.2, 0.85)):
        assert abs(_peak_hz(crop) - 440 * factor) < 2
        start, end = _burst(crop)
        assert abs(start - 1.0) <= 0.02 and abs(end - 2.99) <= 0.02
    # The phase vocoder alone, at rate 1, gives the signal back (away from the edges).
    tone = _tone(300.0)
    assert (distill.time_stretch(tone, len(tone)) - tone)[2000:-2000].abs().max() < 1e-2


def test_about_half_the_crops_are_shifted_each_by_a_whole_frame_ratio():
    """shifted_crops: a share VOICE_SHIFT_SHARE of the crops changes, the rest is bit-equal; each
    changed crop is shift_voice by (frames / whole frames) within the range; the mels are each
    crop's own."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 25 * distill.FRAME, generator=gen) * 0.1
    shifted, mels = distill.shifted_crops(x, torch.zeros(64, 25, 640), 0.2, torch.Generator().manual_seed(1))
    kept = [torch.equal(a, b) for a, b in zip(shifted, x)]
    assert 20 <= sum(kept) <= 44 and distill.VOICE_SHIFT_SHARE == 0.5
    assert mels.shape == (64, 25, 640)
    assert torch.allclose(mels[3], distill.crop_mels(shifted[3:4], 80)[0], atol=1e-4)
    ratios = [25 / k for k in range(1, 60) if 1 / 1.2 <= 25 / k <= 1.2]
    for a, b in zip(shifted, x):
        if not torch.equal(a, b):
            assert any(torch.allclose(a, distill.shift_voice(b[None], torch.tensor([r]))[0], atol=1e-5) for r in ratios)
            break


def test_a_crops_log_mel_is_laid_out_as_the_teachers():
    """crop_mels of a whole window equals the teacher's log-mel of it (frame k: Whisper's mel
    frames 8k..8k+7), up to the resampler (an FFT here, soxr there)."""
    audio = (0.3 * _tone(500.0, 30.0, (2.0, 20.0)) + 0.05 * torch.randn(720_000, generator=torch.Generator().manual_seed(0)))
    _, mels = distill.teacher_targets(FrameIndex(), 80, audio.numpy(), "cpu")
    crop = distill.crop_mels(audio[None, : 50 * distill.FRAME], 80)
    assert crop.shape == (1, 50, 640)
    assert (crop[0] - mels[0, :50].float()).abs().mean() < 0.02


def test_voice_shift_is_a_share_of_a_factor_below_one():
    assert load_config(None, ["organism.distill_voice_shift=0.2"]).organism.distill_voice_shift == 0.2
    for bad in ("1.0", "-0.1"):
        with pytest.raises(Exception, match="organism.distill_voice_shift"):
            load_config(None, [f"organism.distill_voice_shift={bad}"])


def test_a_time_limited_distillation_fits_its_schedule_to_the_limit(monkeypatch):
    """With organism.distill_time_limit_s, the cosine is planned after the warm-up from the pace of
    the steps so far, and the run ends on its planned last step (learning rate at its floor) before
    the limit; without one, every step runs. A fake clock advances one second per reading."""
    import itertools

    clock = itertools.count()
    monkeypatch.setattr(distill.time, "time", lambda: float(next(clock)))
    cfg = load_config(None, ["organism.mimi_dim=32", "organism.mimi_heads=2", "organism.card=16", "organism.n_q=2",
                             "organism.distill_steps=1000", "organism.distill_batch_size=2",
                             "organism.distill_crop_seconds=0.4", "organism.distill_time_limit_s=160"])
    torch.manual_seed(0)
    audio = torch.randn(2 * distill.WINDOW_FRAMES * distill.FRAME) * 0.1
    states = torch.randn(2, distill.WINDOW_FRAMES, 8)
    mels = torch.randn(2, distill.WINDOW_FRAMES, 16)
    mimi, config = distill.organism_mimi(cfg, 0)
    heads = distill.Heads(config["seanet"]["dimension"], 8, 16)
    lrs = []
    step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: (lrs.append(self.param_groups[0]["lr"]),
                                                                         step(self, *a, **k))[1])
    run = distill.train_student(cfg, mimi, heads, audio, states, mels, "cpu")
    assert distill.WARMUP < run["planned_steps"] < 1000 and run["steps"] == run["planned_steps"]
    assert run["seconds"] <= 160
    assert lrs[-1] < 1e-3 * cfg.organism.distill_lr  # annealed to the end


def test_a_distilled_standard_mimi_makes_an_organism_kyutais_runtime_loads(tmp_path, monkeypatch):
    """organism.mimi_arch=standard, two distillation steps: the organism's checkpoint holds
    Kyutai's Mimi under Kyutai's name, its export passes the Rust tensor report (the 24 codebooks
    past n_q = 8 unread) and moshi-server is not refused it."""
    from pipeline.export import export
    from pipeline.organism import organism_preset
    from pipeline.presets import build_checkpoint
    from pipeline.serve import unservable
    from pipeline.verify import candle_report

    cfg = load_config(None, [f"artifacts={tmp_path}", "organism.out=o", "organism.mimi=distilled",
                             "organism.mimi_arch=standard", "organism.card=2048", "organism.n_q=8",
                             "organism.dim=32", "organism.num_layers=1", "organism.num_heads=2",
                             "organism.text_card=500", "organism.distill_steps=2", "organism.distill_batch_size=1",
                             "organism.distill_crop_seconds=0.4", "organism.fit_seconds=30"])
    _prepare(cfg, tmp_path)
    # The distillation's clock, one second a reading: the encoding speed is then the seconds of
    # audio encoded between two readings (the two 30 s streams: 60 s of audio per second).
    from types import SimpleNamespace
    import itertools

    clock = itertools.count()
    monkeypatch.setattr(distill, "time", SimpleNamespace(time=lambda: float(next(clock))))
    folder = distill.distill_mimi(cfg, "cpu")
    figures = json.loads((folder / "figures.json").read_text())
    assert figures["streams_s"] == {"train": 30, "eval": 30} and figures["encode_x_real_time"] == 60.0
    # One perplexity per codebook read (n_q = 8), each between 1 (one code) and the eval stream's
    # 375 frames (every frame a different code), for both Mimis.
    for mimi in ("mimi", "baseline"):
        assert len(figures[mimi]["perplexity_eval"]) == 8
        assert all(1.0 <= p <= 375 for p in figures[mimi]["perplexity_eval"]), figures[mimi]["perplexity_eval"]
    assert figures["run"]["steps"] == 2
    init = build_checkpoint(organism_preset(cfg), "organism", tmp_path / "init", 0,
                            mimi_state=distill.load_shards(folder))
    config = json.loads((init / "config.json").read_text())
    assert "mimi_config_name" not in config and config["mimi_name"].startswith("mimi-pytorch-")
    out = export(init, tmp_path / "export", device="cpu")
    report = candle_report(out, "bf16")
    assert report["ok"], (report["lm"]["unexpected"][:3], report["mimi"]["unexpected"][:3])
    assert len(report["mimi"]["unread_codebooks"]) == 3 * (32 - 8)
    assert unservable(out) is None
    # A base trained on the GPU box comes back without its Mimi: rebuilt from the shards, byte for byte.
    import shutil

    from safetensors.torch import load_file, save_file

    from pipeline.io import sha256_file
    from pipeline.organism import organism_paths, restore_mimi

    model = shutil.copytree(init, organism_paths(cfg)["model"])
    mimi_file = model / config["mimi_name"]
    (model.parent / "model.mimi.sha256").write_text(f"{sha256_file(mimi_file)}  {mimi_file.name}\n")
    want = mimi_file.read_bytes()
    mimi_file.unlink()
    assert restore_mimi(cfg) == mimi_file and mimi_file.read_bytes() == want
    shard = sorted(folder.glob("mimi-*.safetensors"))[0]
    tensors = load_file(str(shard))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    save_file(tensors, str(shard))
    mimi_file.unlink()
    with pytest.raises(Exception, match="not the shards the base was trained with"):
        restore_mimi(cfg)
    assert not mimi_file.exists() and not list(model.glob(".*.tmp"))
