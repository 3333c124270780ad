"""A dask.distributed client for cohort-scale work (extraction, cohort maps): one function.

:func:`dask_client` connects to an existing scheduler or starts a :class:`distributed.LocalCluster`
of worker *processes* (one thread each, so one slide per process) and returns the client with the
cluster it started, which the caller closes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import warnings

from histokd_core.errors import DataError


def dask_client(scheduler: str | None, n_workers: int):
    """A dask client: ``(Client, LocalCluster or None)``.

    Parameters
    ----------
    scheduler : address of an existing scheduler (``"tcp://host:8786"``), whose workers must see the
        same files; None starts a LocalCluster of ``n_workers`` non-daemonic processes (so they may
        start tile-loader processes), one thread each, no dashboard.
    n_workers : worker processes of the LocalCluster (ignored with ``scheduler``).

    Returns
    -------
    The client and the cluster it runs on (None for an existing scheduler); close both when done.
    """
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as exc:
            raise DataError(f"cannot connect to the dask scheduler at {scheduler}: {exc}") from exc
    # The workers start with SIGINT ignored (inherited through exec): Ctrl-C in a terminal reaches
    # the whole process group, and only this process should answer it, by closing the cluster.
    _quiet_resource_tracker()
    with dask.config.set({"distributed.worker.daemon": False}), _sigint_ignored(), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Port \d+ is already in use")
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    return Client(cluster), cluster


@contextlib.contextmanager
def _sigint_ignored():
    """Ignore SIGINT while child processes start (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker with its stderr on ``/dev/null``.

    Its only output is a warning about semaphores left by a worker killed mid-slide (on Ctrl-C
    the cluster kills busy workers); the tracker removes them either way. No-op when it runs.
    """
    from multiprocessing import resource_tracker

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        resource_tracker.ensure_running()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
