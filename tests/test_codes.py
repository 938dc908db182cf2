"""Training audio is read strictly: anything but finite mono 24 kHz audio is refused by name."""

import numpy as np
import pytest
import soundfile as sf

from pipeline.codes import read_audio


def _write(path, audio, rate):
    sf.write(str(path), audio, rate)
    return path


def test_mono_24k_is_read(tmp_path):
    audio = read_audio(_write(tmp_path / "ok.wav", np.zeros(2400, dtype=np.float32), 24000))
    assert audio.shape == (1, 1, 2400)


@pytest.mark.parametrize("name, audio, rate, message", [
    ("stereo.wav", np.zeros((2400, 2), dtype=np.float32), 24000, "with 2 channel"),
    ("16k.wav", np.zeros(1600, dtype=np.float32), 16000, "16000 Hz"),
    ("empty.wav", np.zeros(0, dtype=np.float32), 24000, "empty or contains NaN"),
    ("nan.wav", np.full(2400, np.nan, dtype=np.float32), 24000, "empty or contains NaN"),
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
    with pytest.raises(ValueError, match="corrupt.wav: cannot read audio"):
        read_audio(path)
