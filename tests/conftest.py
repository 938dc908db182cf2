"""Shared fixtures: one tiny checkpoint per test session, built the way users get it, and a
folder per test module for the module's shared fixtures.

Disk: the suite builds several standard-Mimi checkpoints and exports (0.4 to 1 GB each), and CI's
disk is not large. Each test's `tmp_path` goes when the test passes (`tmp_path_retention_policy`
in pyproject.toml) and each module's shared folder when its tests are done, so the peak is about
one module's fixtures plus one test's files, not the sum of the suite's (5.6 GB before)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from pipeline.presets import make_checkpoint


DISK_NEEDED_GIB = 3.0  # the suite's measured peak under the temp folder was 1.6 GB (2026-12-06)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Say up front when the disk is too full: the failure it would cause later reads as a bug."""
    tmp = tempfile.gettempdir()
    free = shutil.disk_usage(tmp).free / 2**30
    if free < DISK_NEEDED_GIB:
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            f"warning: {free:.1f} GiB free under {tmp}; the tests write up to about 2 GiB there "
            "(free some space, or point TMPDIR at a larger disk)")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A freshly built tiny checkpoint. Treat as read-only; use `tiny_copy` to modify."""
    return make_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request) -> Path:
    """A folder for one module's shared fixtures (put each in its own subfolder), removed once the
    module's tests are done, unless one failed: then it stays for a look, as a failed test's does."""
    path = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    failed_before = request.session.testsfailed
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tiny_copy(tiny_ckpt, tmp_path) -> Path:
    """A private copy of the tiny checkpoint that a test may break."""
    return Path(shutil.copytree(tiny_ckpt, tmp_path / "tiny"))
