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
import shutil
import struct
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping, NamedTuple, Sequence

if TYPE_CHECKING:  # torch is imported where a tensor is made: merge and export run without it
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


DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype name ("BF16" -> torch.bfloat16)."""
    import torch

    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
            "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
            "U8": torch.uint8, "BOOL": torch.bool}[name]


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
        import torch

        entry = self._header[key]
        lo, hi = entry["data_offsets"]
        dtype, shape = torch_dtype(entry["dtype"]), entry["shape"]
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


def cast_specs(f, dtype: str | None, keys: Iterable[str] | None = None) -> dict[str, tuple[str, list[int]]]:
    """(dtype, shape) of tensors `keys` (default: all) of the open safetensors file `f`, dtypes by
    their safetensors names ("BF16"), floats cast to `dtype` (None: as stored), widest dtype first
    so that every tensor stays aligned: the layout of a converted copy."""
    specs = {}
    for key in f.keys() if keys is None else keys:
        view = f.get_slice(key)
        stored = view.get_dtype()
        specs[key] = (dtype if dtype is not None and stored in FLOAT_DTYPES else stored, view.get_shape())
    return dict(sorted(specs.items(), key=lambda item: -DTYPE_BYTES[item[1][0]]))


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


class Rewrite(NamedTuple):
    """One tensor of a rewritten safetensors file: tensor `key` of the source, written as `name`
    with `dtype` and `shape`. `kind` "base": the source tensor cast to `dtype`; "merge": plus
    scaling * B @ A, `a` and `b` naming the adapter's A and B; "table": the adapter's tensor `a`
    (in the source tensor's dtype, then `dtype`)."""
    name: str
    key: str
    dtype: str
    shape: Sequence[int]
    kind: str = "base"
    a: str = ""
    b: str = ""


def safetensors_header(specs: Mapping[str, tuple[str, Sequence[int]]]) -> bytes:
    """The 8-byte length and JSON header of a file holding `specs` (name -> dtype, shape) in that
    order, padded to 8 bytes as the format asks."""
    header, offset = {}, 0
    for name, (dtype, shape) in specs.items():
        size = math.prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob


def rewrite_safetensors(src: str | Path, dst: str | Path, entries: Sequence[Rewrite], adapter: str | Path | None = None,
                        scaling: float = 1.0) -> tuple[str, tuple[float, float, float]]:
    """Write `dst` tensor by tensor from `src` (and the adapter file for merges and tables), the
    entries in file order (put wider dtypes first, as safetensors does). Returns the file's hex
    sha256, hashed as it is written, and the squared norms of the merges: the update, what of it
    survived rounding, the rounding error (summed over tensors).

    The bytes are done by `candle_bridge.rewrite_safetensors` (candle_bridge/src/weights.rs): on
    the project's 2-core box the same loop in PyTorch took 4.5x a plain copy of a 1B model."""
    try:
        import candle_bridge
    except ImportError:
        from .errors import StageError

        raise StageError("the candle_bridge extension is not built, and merge and export write weights with it; "
                         "run `bash bootstrap.sh --no-run` (or `pip install -e .`) to build it") from None
    header = safetensors_header({e.name: (e.dtype, e.shape) for e in entries})
    sha256, *sums = candle_bridge.rewrite_safetensors(
        str(src), str(dst), header, [(e.name, e.key, e.dtype.lower(), e.kind, e.a, e.b) for e in entries],
        None if adapter is None else str(adapter), scaling)
    return sha256, tuple(sums)
