"""Shared fixtures: the real reference data beside the repository, and display handling."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HISTOKD_SHARED_DATA", REPO.parent / "shared" / "data"))

try:  # tqdm's monitor thread causes intermittent segfaults with Qt (magicgui, napari do this too)
    import tqdm

    tqdm.tqdm.monitor_interval = 0
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (override with HISTOKD_SHARED_DATA); tests needing it skip if absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    """GUI tests need a display; pytest-xvfb provides one when Xvfb is installed."""
    has_display = bool(os.environ.get("DISPLAY")) or shutil.which("Xvfb") is not None
    if has_display:
        return
    skip = pytest.mark.skip(reason="no display: install xvfb (see README) to run GUI tests")
    for item in items:
        if "gui" in item.keywords:
            item.add_marker(skip)
