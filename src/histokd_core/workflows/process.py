"""Run a workflow in a child process that reports through a queue (the Train dock's subprocess mode).

The parent creates a ``multiprocessing`` (spawn) queue and event and starts
``Process(target=run_in_process, args=(queue, cancel_event, workflow, kwargs))``. The child runs
``workflow(**kwargs, progress=..., cancel=...)`` and puts on the queue:

- ``("progress", ProgressEvent.as_dict())`` while it runs;
- then one of ``("done", result)``, ``("cancelled", message)`` or
  ``("error", {"type": name, "message": text, "histokd": bool})``.

Setting the event cancels at the workflow's next check (the run keeps its last epoch for
``resume``). Results cross the process boundary pickled: a :class:`RunResult` becomes its metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def run_in_process(queue: Any, cancel_event: Any, workflow: Callable[..., Any], kwargs: dict) -> None:
    """Child-process entry point (see the module docstring)."""
    from histokd_core.cancel import CancelToken
    from histokd_core.errors import Cancelled, HistoKDError
    from histokd_core.progress import QueueProgress

    try:
        result = workflow(**kwargs, progress=QueueProgress(queue), cancel=CancelToken(cancel_event.is_set))
    except Cancelled as exc:
        queue.put(("cancelled", str(exc)))
        return
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the parent as a message
        queue.put(("error", {"type": type(exc).__name__, "message": str(exc),
                             "histokd": isinstance(exc, HistoKDError)}))
        return
    queue.put(("done", getattr(result, "metrics", result)))
