"""Atomic outputs, the direct-I/O writer, reading safetensors without a memory map, and
rewriting a safetensors file (casts, LoRA merges, tables) through candle_bridge."""

from pathlib import Path

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


def _rewrite(tmp_path, tensors, entries, adapter=None, scaling=1.0, folder=None):
    """Save `tensors` (and `adapter`), rewrite them per `entries` (name, key, dtype, kind, a, b),
    return the new file's tensors, the sha256 and the merge sums."""
    from safetensors.torch import load_file, save_file

    from pipeline.io import Rewrite, rewrite_safetensors, sha256_file

    save_file(tensors, str(tmp_path / "src.safetensors"))
    if adapter is not None:
        save_file(adapter, str(tmp_path / "adapter.safetensors"))
    plan = [Rewrite(name, key, dtype, list(tensors[key].shape), *rest) for name, key, dtype, *rest in entries]
    dst = (folder or tmp_path) / "dst.safetensors"
    sha256, sums = rewrite_safetensors(tmp_path / "src.safetensors", dst, plan,
                                       None if adapter is None else tmp_path / "adapter.safetensors", scaling)
    assert sha256 == sha256_file(dst)
    return load_file(str(dst)), sums


def _tmpfs_or_skip():
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm")
    return shm


@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_rewrite_copies_and_casts_every_dtype_exactly_across_blocks(tmp_path, where):
    """Tensors bigger than the writer's 8 MiB blocks, odd sizes, empty ones, integers: each comes
    back with the bytes PyTorch would give it. On tmpfs the writer has no O_DIRECT (or on newer
    kernels, has it): the bytes must be the same either way."""
    import tempfile

    import torch

    torch.manual_seed(0)
    tensors = {"big": torch.randn(3_000_001), "big16": torch.randn(5_000_003).bfloat16(), "h": torch.randn(7).bfloat16(),
               "ids": torch.arange(5), "flags": torch.tensor([True, False, True]), "scalar": torch.tensor(2.5),
               "empty": torch.zeros(0, 3), "half": torch.randn(33).half()}
    entries = [("big_as_bf16", "big", "BF16"), ("ids", "ids", "I64"), ("h_as_f32", "h", "F32"), ("big16", "big16", "BF16"),
               ("half_as_f32", "half", "F32"), ("scalar", "scalar", "F32"), ("empty", "empty", "F32"),
               ("flags", "flags", "BOOL")]
    with tempfile.TemporaryDirectory(dir=_tmpfs_or_skip() if where == "tmpfs" else tmp_path) as folder:
        back, sums = _rewrite(tmp_path, tensors, entries, folder=Path(folder))
    assert list(back) == [e[0] for e in entries]
    assert torch.equal(back["big_as_bf16"], tensors["big"].bfloat16())
    assert torch.equal(back["h_as_f32"], tensors["h"].float())
    assert torch.equal(back["half_as_f32"], tensors["half"].float())
    for same in ("ids", "big16", "scalar", "empty", "flags"):
        assert back[same].dtype == tensors[same].dtype and torch.equal(back[same], tensors[same]), same
    assert sums == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("stored, out", [("BF16", "BF16"), ("F32", "BF16"), ("BF16", "F32"), ("F32", "F32")])
def test_rewrite_merges_in_float32_and_rounds_to_nearest_even_as_pytorch_does(tmp_path, stored, out):
    """W + scaling * B @ A with B and A on coarse grids, so the float32 sums are exact in any
    order and the result must equal PyTorch's bit for bit; the first rows are exact ties."""
    import torch

    from pipeline.io import torch_dtype

    gen = torch.Generator().manual_seed(1)
    rows, cols, rank = 150, 70, 8  # 150 rows: more than one chunk of 64
    w = torch.randn(rows, cols, generator=gen).bfloat16().to(torch_dtype(stored))
    b = torch.randint(-2, 3, (rows, rank), generator=gen).float() / 256
    a = torch.randint(-3, 4, (rank, cols), generator=gen).float() / 64
    # Ties: 1 + 2^-8 is halfway between bf16's 1 and 1 + 2^-7 (goes down, to the even one);
    # (1 + 2^-7) + 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6 (goes up, to the even one).
    w[0, :2] = torch.tensor([1.0, 1.0 + 2 ** -7])
    b[0], a[:, :2] = 0, 0
    b[0, 0], a[0, :2] = 2 ** -8 / 2, 1.0  # scaling 2 below: the update is 2^-8 in both
    back, sums = _rewrite(tmp_path, {"w": w, "bias": torch.randn(cols)},
                          [("w.merged", "w", out, "merge", "A", "B"), ("bias", "bias", "F32")],
                          adapter={"A": a, "B": b}, scaling=2.0)
    exact = w.float() + (2.0 * b) @ a
    want = exact.to(torch_dtype(out))
    assert torch.equal(back["w.merged"], want)
    if out == "BF16":
        assert back["w.merged"][0, :2].tolist() == [1.0, 1.0 + 2 ** -6]
    update, kept = (2.0 * b) @ a, want.float() - w.float()
    assert sums == pytest.approx((update.square().sum().item(), kept.square().sum().item(),
                                  (kept - update).square().sum().item()), rel=1e-5, abs=1e-12)


def test_rewrite_puts_an_adapter_table_in_the_bases_dtype(tmp_path):
    import torch

    base = {"emb": torch.randn(11, 6).bfloat16()}
    table = torch.randn(11, 6)
    back, _ = _rewrite(tmp_path, base, [("emb", "emb", "F32", "table", "emb.new")], adapter={"emb.new": table})
    assert torch.equal(back["emb"], table.bfloat16().float())  # rounded to the base's bf16 first


def test_rewrite_refuses_a_plan_that_does_not_fit_its_files(tmp_path):
    import torch
    from safetensors.torch import save_file

    from pipeline.io import Rewrite, rewrite_safetensors

    save_file({"w": torch.zeros(4, 3)}, str(tmp_path / "src.safetensors"))
    save_file({"A": torch.zeros(2, 5), "B": torch.zeros(4, 2)}, str(tmp_path / "lora.safetensors"))
    src, dst = tmp_path / "src.safetensors", tmp_path / "dst.safetensors"
    with pytest.raises(ValueError, match=r"tensor w .* does not match its header entry"):
        rewrite_safetensors(src, dst, [Rewrite("w", "w", "F32", [3, 4])])
    with pytest.raises(ValueError, match=r"src.safetensors: no tensor missing"):
        rewrite_safetensors(src, dst, [Rewrite("w", "missing", "F32", [4, 3])])
    with pytest.raises(ValueError, match=r"LoRA for w: A \[2, 5\], B \[4, 2\]"):
        rewrite_safetensors(src, dst, [Rewrite("w", "w", "F32", [4, 3], "merge", "A", "B")], tmp_path / "lora.safetensors")


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


def test_rewrite_without_the_extension_says_how_to_build_it(tmp_path, monkeypatch):
    import sys

    from pipeline.errors import StageError
    from pipeline.io import rewrite_safetensors

    monkeypatch.setitem(sys.modules, "candle_bridge", None)  # an import of it now fails
    with pytest.raises(StageError, match="candle_bridge extension is not built.*bootstrap.sh"):
        rewrite_safetensors(tmp_path / "a.safetensors", tmp_path / "b.safetensors", [])
    assert not (tmp_path / "b.safetensors").exists()
