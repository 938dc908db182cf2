"""Atomic outputs: write to a temporary path beside the target, then rename.

A crash, a full disk or Ctrl-C never leaves a half-written file or folder under the real name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import struct
import tempfile
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
                      tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """A .safetensors file written one tensor at a time, so a checkpoint is never held whole in
    memory (safetensors' own `save_file` needs every tensor at once, plus a copy of their bytes).
    `specs` (name -> dtype, shape, in file order) makes the header; `tensors` then yields each
    (name, tensor) in that order. A tensor that differs from its spec is an error naming it. Put
    wider dtypes first, as safetensors does, so every tensor starts at a multiple of its width."""
    header, offset = {}, 0
    for name, (dtype, shape) in specs.items():
        size = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8 bytes
    expected = iter(specs.items())
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)) + blob)
        for name, tensor in tensors:
            want = next(expected, None)
            if want is None or want[0] != name or want[1][0] != tensor.dtype or tuple(want[1][1]) != tuple(tensor.shape):
                raise ValueError(f"{path}: tensor {name} {tensor.dtype} {tuple(tensor.shape)} does not match the "
                                 f"header's next entry {want}")
            fh.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)
    if (left := next(expected, None)) is not None:
        raise ValueError(f"{path}: no data for tensor {left[0]}")
