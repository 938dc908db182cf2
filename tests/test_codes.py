"""Training audio is read strictly: anything but finite mono 24 kHz audio is refused by name
(the one `read_audio`, with `repair=False`)."""

import numpy as np
import pytest
import soundfile as sf

from pipeline.codes import training_audio as read_audio


def _write(path, audio, rate):
    sf.write(str(path), audio, rate)
    return path


def test_mono_24k_is_read(tmp_path):
    audio = read_audio(_write(tmp_path / "ok.wav", np.zeros(2400, dtype=np.float32), 24000))
    assert audio.shape == (1, 1, 2400)


@pytest.mark.parametrize("name, audio, rate, message", [
    ("stereo.wav", np.zeros((2400, 2), dtype=np.float32), 24000, "with 2 channel"),
    ("16k.wav", np.zeros(1600, dtype=np.float32), 16000, "16000 Hz"),
    ("empty.wav", np.zeros(0, dtype=np.float32), 24000, "holds no audio"),
    ("nan.wav", np.full(2400, np.nan, dtype=np.float32), 24000, "contains NaN or infinite samples"),
])
def test_bad_audio_is_refused_by_name(tmp_path, name, audio, rate, message):
    path = tmp_path / name
    sf.write(str(path), audio, rate, subtype="FLOAT")
    with pytest.raises(ValueError, match=message) as err:
        read_audio(path)
    assert name in str(err.value)


def test_corrupt_file_is_refused_by_name(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF\x00\x00not audio")
    with pytest.raises(ValueError, match="corrupt.wav: cannot decode audio"):
        read_audio(path)


def _utterance(path, words):
    from types import SimpleNamespace

    alignments = [(w, (0.1 + i * 0.3, 0.35 + i * 0.3), "SPEAKER_MAIN") for i, w in enumerate(words)]
    return SimpleNamespace(path=path, alignments=alignments, category="order", voice="espeak:en",
                           number_spans=[{"first": 1, "last": 2, "written": "12", "kind": "order"}])


def test_code_pack_round_trips_codes_and_labels(tmp_path, tiny_ckpt):
    import torch

    from pipeline.checkpoint import Checkpoint
    from pipeline.codes import read_pack, write_pack
    from pipeline.train import sample_of

    mimi_file = Checkpoint.open(tiny_ckpt).files["mimi"]
    codes = [torch.randint(0, 64, (8, n)) for n in (5, 9)]
    utts = [_utterance(tmp_path / f"{i}.wav", ["order", "one", "two."]) for i in range(2)]
    firsts = [torch.randint(0, 64, (8,)) for _ in codes]
    pack = write_pack(tmp_path / "train.pack.safetensors", utts, codes, firsts, mimi_file, text_delay=0.5)
    labels, read, read_firsts, delay = read_pack(pack, mimi_file)
    assert [c.tolist() for c in read] == [c.tolist() for c in codes] and delay == 0.5
    assert [f.tolist() for f in read_firsts] == [f.tolist() for f in firsts]
    sample = sample_of(labels[1], read[1], "digits")
    assert [w.text for w in sample.words] == ["order", "12."] and sample.numbers == [(0.4, 0.95)]


def test_code_pack_from_another_mimi_is_refused(tmp_path, tiny_ckpt):
    import torch

    from pipeline.checkpoint import Checkpoint
    from pipeline.codes import read_pack, write_pack

    pack = write_pack(tmp_path / "p.safetensors", [_utterance(tmp_path / "a.wav", ["a", "one", "two"])],
                      [torch.zeros(8, 3, dtype=torch.long)], [torch.zeros(8, dtype=torch.long)],
                      Checkpoint.open(tiny_ckpt).files["mimi"])
    other = tmp_path / "other-mimi.safetensors"
    other.write_bytes(b"not the same weights")
    with pytest.raises(ValueError, match="another Mimi"):
        read_pack(pack, other)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="junk.safetensors: not a readable code pack"):
        read_pack(tmp_path / "junk.safetensors", other)


def test_clips_encoded_in_a_padded_batch_get_the_codes_they_get_alone(tmp_path, tiny_ckpt):
    """Batched encoding (the GPU default) zero-pads each clip to the batch's longest: Mimi is
    causal and pads with zeros itself, so every clip keeps its frame count and its latents (to
    float rounding: other shapes, other summation orders). The lengths cut frames mid-way, land on
    a frame boundary and hold less than one frame. The tiny random Mimi has near-ties, where that
    rounding may flip a code (1 of 536 here), so codes are compared as a share."""
    import torch

    from pipeline.checkpoint import Checkpoint
    from pipeline.codes import CodeCache, training_audio
    from pipeline.presets import synthetic_audio

    ckpt = Checkpoint.open(tiny_ckpt)
    lengths = [1920 * 4, 24000 + 7, 1000, 3 * 24000 - 5, 1920 * 10 + 1919]
    paths = [_write(tmp_path / f"{i}.wav", synthetic_audio(n / 24000 + 0.1, seed=i)[:n], 24000)
             for i, n in enumerate(lengths)]
    mimi, mimi_file = ckpt.load_mimi(), ckpt.files["mimi"]
    alone = CodeCache(mimi, mimi_file, tmp_path / "alone").encode_all(paths, batch_size=1)
    batched = CodeCache(mimi, mimi_file, tmp_path / "batched").encode_all(paths, batch_size=3)
    assert [c.shape for c in alone] == [c.shape for c in batched]
    assert [c.shape[1] for c in alone] == [4, 13, 1, 38, 11]
    same = sum(int((a == b).sum()) for a, b in zip(alone, batched))
    assert same / sum(c.numel() for c in alone) >= 0.99
    again = CodeCache(mimi, mimi_file, tmp_path / "batched").encode_all(paths, batch_size=3)  # from the cache
    assert all(torch.equal(a, b) for a, b in zip(again, batched))

    clip = training_audio(paths[1])
    padded = torch.zeros(3, 1, lengths[3])
    padded[1, :, :lengths[1]] = clip[0]
    with torch.no_grad():
        own = mimi._encode_to_unquantized_latent(clip)
        in_batch = mimi._encode_to_unquantized_latent(padded)[1:2, :, :own.shape[-1]]
    assert (own - in_batch).abs().max() <= 1e-5 * own.abs().max()  # 6.7e-8 of 0.11 when written


def test_augmented_copies_are_encoded_from_their_recipe_cached_apart_and_read_ahead_by_threads(tmp_path, tiny_ckpt):
    """A copy's codes are those of the audio `augment` makes from (file name, copy, seed): the
    threads that read ahead change nothing, each copy has its own cache entry, and another seed
    is another entry with other audio."""
    import numpy as np
    import torch

    from pipeline.checkpoint import Checkpoint
    from pipeline.codes import Clip, CodeCache
    from pipeline.data.audio import read_audio
    from pipeline.data.augment import AugmentConfig, augment, draw, generator
    from pipeline.presets import synthetic_audio

    ckpt = Checkpoint.open(tiny_ckpt)
    mimi, mimi_file = ckpt.load_mimi(), ckpt.files["mimi"]
    paths = [_write(tmp_path / f"{i}.wav", synthetic_audio(1.2 + 0.3 * i, seed=i), 24000) for i in range(3)]
    cfg = AugmentConfig()
    clips = [Clip(p) for p in paths] + [Clip(p, 1, cfg, 0) for p in paths]
    inline = CodeCache(mimi, mimi_file, tmp_path / "inline").encode_all(clips, batch_size=1, workers=1)
    threaded = CodeCache(mimi, mimi_file, tmp_path / "threaded").encode_all(clips, batch_size=1, workers=3)
    assert all(torch.equal(a, b) for a, b in zip(inline, threaded))

    rng = generator(paths[2].name, 1, 0)
    wave = augment(read_audio(paths[2], repair=False), draw(rng, cfg), rng)
    with torch.no_grad():
        direct = mimi.encode(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None, None])[0]
    assert torch.equal(inline[5], direct.long()) and inline[5].shape != inline[2].shape  # the speed changed

    cache = CodeCache(mimi, mimi_file, tmp_path / "inline")
    assert len(list(cache.folder.glob("*.safetensors"))) == 6
    other_seed = cache.encode_all([Clip(paths[2], 1, cfg, 1)], batch_size=1)[0]
    assert len(list(cache.folder.glob("*.safetensors"))) == 7 and not torch.equal(other_seed, inline[5])


def test_a_fresh_stream_given_the_served_first_frame_streams_what_moshi_server_streams(tiny_ckpt):
    """moshi-server's slot reset changes a new connection's first Mimi frame and nothing else: a
    fresh Candle stream whose frame 0 is `served_first_frame`'s gives the server-semantics
    streamer's pause probabilities and text exactly (that streamer equals the real server, bit
    for bit: tests/test_server.py), while the fresh stream's own frame 0 does not."""
    import numpy as np
    import torch

    import candle_bridge
    from pipeline.checkpoint import Checkpoint
    from pipeline.codes import served_first_frame
    from pipeline.constants import FRAME_SAMPLES
    from pipeline.presets import synthetic_audio
    from pipeline.verify import candle_stream

    ckpt = Checkpoint.open(tiny_ckpt)
    audio = np.concatenate([synthetic_audio(4.0, seed=3), np.zeros(30 * FRAME_SAMPLES)]).astype(np.float32)
    audio = audio[:len(audio) // FRAME_SAMPLES * FRAME_SAMPLES]
    server = candle_bridge.ServerStreamer(str(ckpt), ckpt.delay_frames)
    server.new_connection()
    text_inputs, served_pause, _ = server.step_pcm(audio)

    fresh = np.asarray(candle_bridge.Streamer(str(ckpt), "f32", "cpu").encode_pcm(audio))
    first = served_first_frame(ckpt.load_mimi(), torch.from_numpy(audio)[None, None])
    assert first.shape == (1, fresh.shape[1]) and first[0].tolist() != fresh[0].tolist()
    as_served = fresh.copy()
    as_served[0] = first[0].numpy()
    for codes, equal in ((as_served, True), (fresh, False)):
        out = candle_stream(ckpt, codes)
        delta = float(np.abs(out.pause - np.asarray(served_pause)).max())
        same_text = out.tokens[:-1].tolist() == np.asarray(text_inputs)[1:].tolist()  # the server feeds back its own
        assert (delta <= 1e-6 and same_text) if equal else delta > 1e-2, (equal, delta)


def test_the_cache_keeps_the_served_first_frame_and_fills_in_entries_written_without_it(tmp_path, tiny_ckpt):
    import torch
    from safetensors.torch import load_file, save_file

    from pipeline.checkpoint import Checkpoint
    from pipeline.codes import CodeCache, served_first_frame, training_audio
    from pipeline.presets import synthetic_audio

    ckpt = Checkpoint.open(tiny_ckpt)
    mimi, mimi_file = ckpt.load_mimi(), ckpt.files["mimi"]
    paths = [_write(tmp_path / f"{i}.wav", synthetic_audio(1.0 + 0.5 * i, seed=i), 24000) for i in range(3)]
    cache = CodeCache(mimi, mimi_file, tmp_path / "cache")
    encoded = cache.encode_with_served_first(paths, batch_size=2)
    for path, (codes, first) in zip(paths, encoded):
        assert first.tolist() == served_first_frame(mimi, training_audio(path))[0].tolist()
        assert codes.shape[0] == first.shape[0] == 8
    entry = next(cache.folder.glob("*.safetensors"))
    save_file({"codes": load_file(str(entry))["codes"]}, str(entry))  # as written before: codes alone
    again = CodeCache(mimi, mimi_file, tmp_path / "cache").encode_with_served_first(paths, batch_size=2)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(again, encoded)) and "served_first" in load_file(str(entry))
