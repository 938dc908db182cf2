"""Atomic outputs: write to a temporary path beside the target, then rename.

A crash, a full disk or Ctrl-C never leaves a half-written file or folder under the real name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import mmap
import os
import queue
import shutil
import struct
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `path` (an old one is removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; outputs are meant to be shared
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                      torch.uint8: "U8", torch.bool: "BOOL"}
TORCH_DTYPES = {name: dtype for dtype, name in SAFETENSORS_DTYPES.items()}


class SafetensorsFile:
    """A .safetensors file read with plain reads, one tensor at a time, instead of a memory map.

    A mapped file's pages count in the process's resident memory as they are read, so streaming
    a 2 GB checkpoint through safetensors' `safe_open` peaks at its size; here a tensor's bytes
    live only as long as the tensor. The subset of `safe_open`'s interface the stages use:
    `keys()`, `get_slice(k).get_dtype()` / `.get_shape()` and `get_tensor(k)`. The header is JSON
    (no pickle); a malformed file is a ValueError naming it."""

    MAX_HEADER = 100 << 20

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh = open(self.path, "rb")
        try:
            (size,) = struct.unpack("<Q", self._fh.read(8))
            if size > self.MAX_HEADER:
                raise ValueError(f"header of {size} bytes")
            header = json.loads(self._fh.read(size))
            header.pop("__metadata__", None)
            end = 8 + size + max((v["data_offsets"][1] for v in header.values()), default=0)
            if end > self.path.stat().st_size:
                raise ValueError(f"tensors end at byte {end}, the file has {self.path.stat().st_size}")
        except (ValueError, KeyError, TypeError, AttributeError, struct.error) as e:
            self._fh.close()
            raise ValueError(f"{self.path}: not a readable .safetensors file ({e}); re-create it") from None
        self._header, self._data_start = header, 8 + size

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()

    def keys(self) -> list[str]:
        return list(self._header)

    def get_slice(self, key: str) -> _TensorInfo:
        return _TensorInfo(self._header[key])

    def get_tensor(self, key: str) -> torch.Tensor:
        entry = self._header[key]
        lo, hi = entry["data_offsets"]
        dtype, shape = TORCH_DTYPES[entry["dtype"]], entry["shape"]
        if hi == lo:
            return torch.empty(shape, dtype=dtype)
        data = bytearray(hi - lo)
        self._fh.seek(self._data_start + lo)
        if self._fh.readinto(data) != hi - lo:
            raise ValueError(f"{self.path}: tensor {key} is cut short; re-create the file")
        return torch.frombuffer(data, dtype=dtype).reshape(shape)


class _TensorInfo:
    def __init__(self, entry: dict):
        self._entry = entry

    def get_dtype(self) -> str:
        return self._entry["dtype"]

    def get_shape(self) -> list[int]:
        return list(self._entry["shape"])


def cast_specs(f, dtype: torch.dtype | None, keys: Iterable[str] | None = None) -> dict[str, tuple[torch.dtype, list[int]]]:
    """(dtype, shape) of tensors `keys` (default: all) of the open safetensors file `f`, floats
    cast to `dtype` (None: as stored), widest dtype first so that every tensor stays aligned:
    the specs `write_safetensors` needs for a converted copy."""
    specs = {}
    for key in f.keys() if keys is None else keys:
        view = f.get_slice(key)
        stored = TORCH_DTYPES[view.get_dtype()]
        specs[key] = (dtype if dtype is not None and stored.is_floating_point else stored, view.get_shape())
    return dict(sorted(specs.items(), key=lambda item: -item[1][0].itemsize))


STAGE_BYTES = 8 << 20  # the direct writer's staging buffer: a multiple of the 4 KiB alignment
_ALIGN = 4096


class WeightFile:
    """A big file written front to back. Where the OS and the filesystem allow it (Linux: ext4,
    xfs), it writes with O_DIRECT through one reused, page-aligned staging buffer, so the bytes go
    to the disk without a page-cache copy; elsewhere (tmpfs, macOS) with plain writes.

    Why: on this project's 2-core VM, a buffered write of a 2 GB checkpoint spent 6-14 s of kernel
    time getting page-cache memory, a direct one 0.4-0.8 s (`dd`, synced, 2026-12-02), and a
    checkpoint just written is not read again soon enough to want the cache. `.direct` says
    whether O_DIRECT is in use. Call `finish()` after the last write, then `close()`."""

    def __init__(self, path: str | Path, direct: bool = True):
        flags, o_direct = os.O_WRONLY | os.O_CREAT | os.O_TRUNC, getattr(os, "O_DIRECT", 0)
        self.fd, self.direct = -1, bool(direct and o_direct)
        if self.direct:
            try:
                self.fd = os.open(path, flags | o_direct, 0o666)
            except OSError as e:  # EINVAL: this filesystem has no direct I/O
                if e.errno != errno.EINVAL:
                    raise
                self.direct = False
        if self.fd < 0:
            self.fd = os.open(path, flags, 0o666)
        self.stage = mmap.mmap(-1, STAGE_BYTES) if self.direct else None
        self.view = memoryview(self.stage) if self.stage is not None else None
        self.fill = self.flushed = 0

    def write(self, data) -> None:
        data = memoryview(data).cast("B")
        if not self.direct:
            self._write_all(data)
            return
        while len(data):
            n = min(len(data), STAGE_BYTES - self.fill)
            self.view[self.fill:self.fill + n] = data[:n]
            self.fill, data = self.fill + n, data[n:]
            if self.fill == STAGE_BYTES:
                self._flush(STAGE_BYTES)

    def finish(self) -> None:
        """Write what the staging buffer holds: the tail padded to the alignment, then cut back."""
        if self.direct and self.fill:
            size, padded = self.flushed + self.fill, -(-self.fill // _ALIGN) * _ALIGN
            self.view[self.fill:padded] = bytes(padded - self.fill)
            self._flush(padded)
            os.ftruncate(self.fd, size)

    def close(self) -> None:
        os.close(self.fd)
        if self.stage is not None:
            self.view.release()
            self.stage.close()

    def _flush(self, n: int) -> None:
        try:
            self._write_all(self.view[:n])
        except OSError as e:
            # Some filesystems accept O_DIRECT at open and refuse the write; nothing has reached
            # the file yet (the first flush holds it all from byte 0), so go on with plain writes.
            if e.errno != errno.EINVAL or self.flushed:
                raise
            import fcntl

            fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            os.lseek(self.fd, 0, os.SEEK_SET)
            os.ftruncate(self.fd, 0)
            self._write_all(self.view[:n])
        self.flushed, self.fill = self.flushed + n, 0

    def _write_all(self, data: memoryview) -> None:
        while len(data):
            data = data[os.write(self.fd, data):]


def write_safetensors(path: str | Path, specs: Mapping[str, tuple[torch.dtype, Sequence[int]]],
                      tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A .safetensors file written one tensor at a time, so a checkpoint is never held whole in
    memory (safetensors' own `save_file` needs every tensor at once, plus a copy of their bytes).
    `specs` (name -> dtype, shape, in file order) makes the header; `tensors` then yields each
    (name, tensor) in that order. A tensor that differs from its spec is an error naming it. Put
    wider dtypes first, as safetensors does, so every tensor starts at a multiple of its width.
    Returns the file's hex sha256, hashed as it is written (no second read for a manifest)."""
    header, offset = {}, 0
    for name, (dtype, shape) in specs.items():
        size = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8 bytes
    expected = iter(specs.items())
    digest = hashlib.sha256()
    # A writer thread hashes and writes while the caller produces the next tensor (file writes
    # and sha256 release the GIL): the wall time is the slower of the two, not their sum. The
    # queue holds at most two tensors, so memory stays bounded.
    blocks: queue.Queue = queue.Queue(maxsize=2)
    failure: list[BaseException] = []

    def writer(out: WeightFile) -> None:
        while (block := blocks.get()) is not None:
            if not failure:
                try:
                    digest.update(block)
                    out.write(block)
                except BaseException as e:  # handed to the caller below
                    failure.append(e)

    out = WeightFile(path)
    try:
        thread = threading.Thread(target=writer, args=(out,), daemon=True)
        thread.start()
        try:
            blocks.put(struct.pack("<Q", len(blob)) + blob)
            for name, tensor in tensors:
                want = next(expected, None)
                if want is None or want[0] != name or want[1][0] != tensor.dtype \
                        or tuple(want[1][1]) != tuple(tensor.shape):
                    raise ValueError(f"{path}: tensor {name} {tensor.dtype} {tuple(tensor.shape)} does not match "
                                     f"the header's next entry {want}")
                if failure:
                    break
                blocks.put(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)
        finally:
            blocks.put(None)
            thread.join()
        if failure:
            raise failure[0]
        out.finish()
    finally:
        out.close()
    if (left := next(expected, None)) is not None:
        raise ValueError(f"{path}: no data for tensor {left[0]}")
    return digest.hexdigest()
