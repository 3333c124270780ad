"""The npe2 manifest napari really loads: editable install and a built wheel both validate."""

from __future__ import annotations

import importlib.resources
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from npe2 import PluginManifest

from conftest import REPO

NPE2 = Path(sys.executable).with_name("npe2")


def test_installed_manifest_resolves_to_the_repository_file():
    pm = PluginManifest.from_distribution("napari-histokd")
    assert pm.name == "napari-histokd"
    # the editable install's package file is the repository's top-level manifest (symlink)
    package_yaml = Path(importlib.resources.files("napari_histokd") / "napari.yaml")
    assert package_yaml.resolve() == (REPO / "napari.yaml").resolve()
    assert PluginManifest.from_file(package_yaml) == pm
    pm.validate_imports()  # every python_name imports and exists
    ids = {c.id for c in pm.contributions.commands}
    assert {"napari-histokd.get_slide_reader", "napari-histokd.synthetic_slide"} <= ids
    assert pm.contributions.readers and pm.contributions.sample_data


@pytest.mark.skipif(not NPE2.exists(), reason="npe2 command not installed beside this Python")
def test_npe2_validate_command_passes_for_the_install():
    command = [str(NPE2), "validate", "napari-histokd"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_built_wheel_ships_the_manifest_as_a_real_file(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("napari_histokd-*.whl")
    out = tmp_path / "unpacked"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = zf.getinfo("napari_histokd/napari.yaml")
        assert (info.external_attr >> 16) & 0o170000 != 0o120000, "manifest must not be a symlink"
        zf.extractall(out)
    yaml_path = out / "napari_histokd" / "napari.yaml"
    assert yaml_path.read_text() == (REPO / "napari.yaml").read_text()
    entry_points = next(out.glob("*.dist-info/entry_points.txt")).read_text()
    assert "napari-histokd = napari_histokd:napari.yaml" in entry_points
    pm = PluginManifest.from_file(yaml_path)
    assert pm.name == "napari-histokd"
    for command in pm.contributions.commands:
        module = command.python_name.split(":")[0].replace(".", "/")
        assert f"{module}.py" in names or f"{module}/__init__.py" in names, command.python_name
    result = subprocess.run([str(NPE2), "validate", str(yaml_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
