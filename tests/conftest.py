"""Shared fixtures: the real reference data beside the repository, display handling, one torch
thread for tiny models."""

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


@pytest.fixture(scope="session")
def cohort_dir(tmp_path_factory) -> Path:
    """A synthetic feature cohort on disk (24 cases, 12 patches each, 8-d features, omics, gene sets)."""
    from histokd_core.synthetic.cohort import make_feature_cohort

    root = tmp_path_factory.mktemp("cli") / "cohort"
    make_feature_cohort(root, n_cases=24, n_patches=12, feat_dim=8, seed=0)
    return root


@pytest.fixture(scope="session")
def run_dir(cohort_dir, tmp_path_factory) -> Path:
    """A ``histokd train`` run of the baselines (abmil, omics_only) on ``cohort_dir``: 3 folds, 2 epochs."""
    from histokd_core.cli import main

    out = tmp_path_factory.mktemp("runs") / "run"
    rc = main(["train", "--method", "baselines", "--cohort", str(cohort_dir / "cohort.csv"),
               "--features", str(cohort_dir / "features"), "--omics", str(cohort_dir / "omics.csv"),
               "--gene-sets", str(cohort_dir / "gene_sets.gmt"), "--out", str(out), "--folds", "3",
               "--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--device", "cpu", "--threads", "1"])
    assert rc == 0
    return out


CMU_SVS = "slides/CMU-1-Small-Region.svs"


def planted_label() -> "np.ndarray":
    """A slide label with a dark bar standing in for a patient name (it must never be shown)."""
    import numpy as np

    label = np.full((120, 300, 3), 235, np.uint8)
    label[40:80, 20:280] = (20, 20, 160)
    return label


@pytest.fixture(scope="session")
def cmu_level0(shared_data):
    """Level 0 of the real CMU-1-Small-Region.svs, ``(2967, 2220, 3)`` uint8 (via tifffile)."""
    import tifffile

    with tifffile.TiffFile(shared_data / CMU_SVS) as tf:
        return tf.series[0].levels[0].asarray()


@pytest.fixture(scope="session")
def mirax_cmu(tmp_path_factory, cmu_level0):
    """A lossless (PNG) 3-level MIRAX slide of the real CMU pixels, cropped to whole camera
    images (2048 x 2816 px, 0.499 um/px), with a planted label and a macro image."""
    from histokd_core.synthetic.mirax import write_mirax

    folder = tmp_path_factory.mktemp("mirax")
    image = cmu_level0[:2816, :2048]
    return write_mirax(
        folder / "CMU-1.mrxs", image, mpp=0.499, image_format="PNG",
        label=planted_label(), macro=image[::8, ::8],
    )


@pytest.fixture(scope="session")
def dicom_cmu(tmp_path_factory, shared_data):
    """The real CMU SVS converted to a DICOM WSI folder by wsidicomizer (4 instances).

    wsidicomizer needs Debian's libturbojpeg0 (installed by .ci/run); without it this fails.
    """
    from wsidicomizer import WsiDicomizer

    folder = tmp_path_factory.mktemp("dicom") / "CMU-1"
    WsiDicomizer.convert(shared_data / CMU_SVS, folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def encoder_cache(tmp_path_factory) -> Path:
    """Exported encoder graphs go to a per-session folder, never the user's ~/.cache."""
    path = tmp_path_factory.mktemp("histokd-cache")
    old = os.environ.get("HISTOKD_CACHE")
    os.environ["HISTOKD_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("HISTOKD_CACHE", None)
    else:
        os.environ["HISTOKD_CACHE"] = old


@pytest.fixture
def one_thread():
    """Run the test on one torch thread: tiny models run fastest so, and do not fight other
    processes for the cores."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def load_bench():
    """``load_bench(name)``: the benchmark script ``bench/<name>.py`` imported as a module (the
    scripts are not a package), for tests of their pure functions."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
