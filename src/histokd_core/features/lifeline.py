"""No orphans: helper processes of an extraction end when the process that owns them dies.

``histokd extract`` starts dask worker processes, each of which starts a multiprocessing fork
server and tile-loader processes (:func:`histokd_core.features.extract.loader_context`). When the
command is killed (``SIGKILL``, a closed terminal) nothing runs its clean-up, and loader processes
forked by the fork server do not notice: their parent, the fork server, is still alive. So every
such process runs a *lifeline*: a daemon thread that polls whether the owning process still lives
(every :data:`INTERVAL` s) and ends this process with ``os._exit`` when it does not. The owner is
named by the environment variable :data:`ENV` (set by the CLI and inherited by every descendant)
and, for loader processes, also by the process that created the loader.

Importing this module starts the lifeline of :data:`ENV` (the fork server imports it through its
preload list), so a process started under the CLI is covered from its first import on.
"""

from __future__ import annotations

import os
import threading
import time

#: Environment variable holding the pid of the process that owns the extraction.
ENV = "HISTOKD_LIFELINE"
#: Seconds between two checks of the owner.
INTERVAL = 0.5

_watching: set[tuple[int, int]] = set()
_lock = threading.Lock()


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (killed, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): signal 0 tells whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X")


def _watch_loop(pid: int, interval: float) -> None:
    while alive(pid):
        time.sleep(interval)
    os._exit(1)


def watch(pid: int, interval: float = INTERVAL) -> None:
    """End this process (``os._exit(1)``) once process ``pid`` is gone; idempotent per process."""
    pid = int(pid)
    if pid <= 0 or pid == os.getpid():
        return
    key = (os.getpid(), pid)
    with _lock:
        if key in _watching:
            return
        _watching.add(key)
    threading.Thread(target=_watch_loop, args=(pid, interval), name=f"histokd-lifeline-{pid}",
                     daemon=True).start()


def watch_owner() -> None:
    """Start the lifeline of the owner named by :data:`ENV`, when it is set."""
    owner = os.environ.get(ENV, "")
    if owner.isdigit():
        watch(int(owner))


def loader_worker_init(creator_pid: int, _worker_id: int = 0) -> None:
    """``worker_init_fn`` of tile loaders: follow the loader's creator and the owner."""
    watch(creator_pid)
    watch_owner()


watch_owner()
