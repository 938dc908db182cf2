"""Shared fixtures: one tiny checkpoint per test session, built the way users get it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.presets import make_checkpoint


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A freshly built tiny checkpoint. Treat as read-only; use `tiny_copy` to modify."""
    return make_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


@pytest.fixture
def tiny_copy(tiny_ckpt, tmp_path) -> Path:
    """A private copy of the tiny checkpoint that a test may break."""
    return Path(shutil.copytree(tiny_ckpt, tmp_path / "tiny"))
