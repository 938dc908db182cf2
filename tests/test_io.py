"""Atomic outputs: a failed write leaves neither a partial file nor a temporary behind."""

import pytest

from pipeline.io import atomic_dir, atomic_file


def test_failed_file_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"good")
    with pytest.raises(OSError, match="No space left"):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(28, "No space left on device (simulated)")
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_failed_folder_write_keeps_the_old_folder(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / "a").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text("new")
            raise KeyboardInterrupt
    assert (target / "a").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_successful_folder_write_replaces_the_old_one(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / "stale").write_text("x")
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_written_files_are_readable_by_others_as_the_umask_allows(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.bin").stat().st_mode & 0o777 == 0o644


def test_write_safetensors_streams_tensors_that_safetensors_reads_back(tmp_path):
    import torch
    from safetensors.torch import load_file

    from pipeline.io import write_safetensors

    tensors = {"w": torch.randn(3, 5), "h": torch.randn(7).bfloat16(), "ids": torch.arange(4),
               "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3)}
    specs = {k: (v.dtype, v.shape) for k, v in tensors.items()}
    write_safetensors(tmp_path / "a.safetensors", specs, tensors.items())
    back = load_file(str(tmp_path / "a.safetensors"))
    assert set(back) == set(tensors)
    assert all(torch.equal(back[k], v) for k, v in tensors.items())

    wrong = dict(tensors, h=torch.randn(7))  # float32 where the header says bf16
    with pytest.raises(ValueError, match="tensor h"):
        write_safetensors(tmp_path / "b.safetensors", specs, wrong.items())
    with pytest.raises(ValueError, match="no data for tensor empty"):
        write_safetensors(tmp_path / "c.safetensors", specs, list(tensors.items())[:-1])


def test_write_safetensors_returns_the_files_sha256_and_reports_a_failed_write(tmp_path, monkeypatch):
    import torch

    from pipeline.io import sha256_file, write_safetensors

    tensors = {"w": torch.randn(300, 70), "h": torch.randn(7).bfloat16()}
    specs = {k: (v.dtype, v.shape) for k, v in tensors.items()}
    digest = write_safetensors(tmp_path / "a.safetensors", specs, tensors.items())
    assert digest == sha256_file(tmp_path / "a.safetensors")

    class FullDisk(Exception):
        pass

    def produce():  # the writer thread fails on the second block: the caller hears of it
        yield "w", tensors["w"]
        yield "h", tensors["h"]

    from pipeline.io import WeightFile

    real_write, writes = WeightFile.write, []

    def failing_write(self, block):
        writes.append(len(block))
        if len(writes) == 2:
            raise FullDisk("no space left")
        real_write(self, block)

    monkeypatch.setattr(WeightFile, "write", failing_write)
    with pytest.raises(FullDisk):
        write_safetensors(tmp_path / "b.safetensors", specs, produce())


def _chunks(seed: int) -> list[bytes]:
    """Odd-sized blocks: some smaller than the alignment, one across several staging buffers."""
    import random

    rng = random.Random(seed)
    return [rng.randbytes(n) for n in (1, 4095, 4097, 3 * 8192 + 5, 0, 8192, 777)]


@pytest.mark.parametrize("direct", [True, False])
def test_weight_file_writes_exactly_the_bytes_given(tmp_path, monkeypatch, direct):
    """Direct writes go through an aligned staging buffer (made small here so blocks cross it)
    and pad the tail to the alignment; the file must still hold exactly the bytes, no padding."""
    from pipeline import io

    monkeypatch.setattr(io, "STAGE_BYTES", 8192)
    chunks = _chunks(1)
    f = io.WeightFile(tmp_path / "w.bin", direct=direct)
    if direct and not f.direct:
        f.close()
        pytest.skip("tmp_path's filesystem has no O_DIRECT")
    for c in chunks:
        f.write(c)
    f.finish()
    f.close()
    assert (tmp_path / "w.bin").read_bytes() == b"".join(chunks)


def test_weight_file_goes_on_with_plain_writes_where_the_filesystem_refuses_direct_io(tmp_path, monkeypatch):
    """A filesystem that accepts O_DIRECT at open and fails the write with EINVAL: the first flush
    is written again without it, from byte 0."""
    import errno
    import os

    from pipeline import io

    monkeypatch.setattr(io, "STAGE_BYTES", 8192)
    f = io.WeightFile(tmp_path / "w.bin")
    if not f.direct:
        f.close()
        pytest.skip("tmp_path's filesystem has no O_DIRECT")
    real_write, calls = os.write, []

    def refusing_write(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(io.os, "write", refusing_write)
    chunks = _chunks(2)
    for c in chunks:
        f.write(c)
    f.finish()
    f.close()
    assert (tmp_path / "w.bin").read_bytes() == b"".join(chunks)
    assert len(calls) > 2  # refused once, then every later flush went through


def test_safetensors_file_reads_what_safetensors_writes_without_a_memory_map(tmp_path):
    import torch
    from safetensors.torch import save_file

    from pipeline.io import SafetensorsFile

    tensors = {"w": torch.randn(3, 5), "h": torch.randn(7).bfloat16(), "ids": torch.arange(4),
               "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3), "flags": torch.tensor([True, False])}
    save_file(tensors, str(tmp_path / "a.safetensors"), metadata={"format": "pt"})
    with SafetensorsFile(tmp_path / "a.safetensors") as f:
        assert sorted(f.keys()) == sorted(tensors)
        for key, want in tensors.items():
            got = f.get_tensor(key)
            assert got.dtype == want.dtype and torch.equal(got, want), key
            assert f.get_slice(key).get_shape() == list(want.shape)
        assert f.get_slice("h").get_dtype() == "BF16"

    data = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-8])
    with pytest.raises(ValueError, match=r"cut.safetensors: not a readable .safetensors file \(tensors end at byte"):
        SafetensorsFile(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match="junk.safetensors: not a readable .safetensors file"):
        SafetensorsFile(tmp_path / "junk.safetensors")
