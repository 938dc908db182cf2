"""Atomic outputs: write to a temporary path beside the target, then rename.

A crash, a full disk or Ctrl-C never leaves a half-written file or folder under the real name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
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

    def writer(fh) -> None:
        while (block := blocks.get()) is not None:
            if not failure:
                try:
                    digest.update(block)
                    fh.write(block)
                except BaseException as e:  # handed to the caller below
                    failure.append(e)

    with open(path, "wb") as fh:
        thread = threading.Thread(target=writer, args=(fh,), daemon=True)
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
    if (left := next(expected, None)) is not None:
        raise ValueError(f"{path}: no data for tensor {left[0]}")
    return digest.hexdigest()
