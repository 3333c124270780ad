"""Safe file output: atomic writes (temp file + rename) and no silent overwrites."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from histokd_core.errors import HistoKDError


def check_writable(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Return ``path`` as a Path; refuse an existing file unless ``overwrite`` is set."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise HistoKDError(f"{path} already exists; refusing to overwrite it (pass overwrite=True / --overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    Works for files and for directories (e.g. a zarr group): whatever the caller creates at the
    temporary path replaces ``path`` only when the ``with`` block ends without an exception, so a
    crash never leaves a half-written output under the final name.
    """
    path = check_writable(path, overwrite=overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.is_dir():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)
