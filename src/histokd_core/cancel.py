"""Cancellation of long jobs (training, analysis, extraction): one token type, one error.

A GUI makes a :class:`CancelToken`, hands it to a worker and calls :meth:`CancelToken.cancel`;
the job calls :meth:`CancelToken.check` between steps, which raises
:class:`~histokd_core.errors.Cancelled`. Jobs also accept a ``threading.Event`` or a zero-argument
callable returning True to stop, through :meth:`CancelToken.of`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from histokd_core.errors import Cancelled


class CancelToken:
    """Whether a job should stop.

    Parameters
    ----------
    source : None (a fresh token, stopped by :meth:`cancel`), a ``threading.Event`` (stops when
        set) or a zero-argument callable (stops when it returns True).
    """

    def __init__(self, source: threading.Event | Callable[[], bool] | None = None) -> None:
        self._poll: Callable[[], bool] | None = None
        if source is None:
            self._event = threading.Event()
        elif isinstance(source, threading.Event):
            self._event = source
        elif callable(source):
            self._event = threading.Event()
            self._poll = source
        else:
            raise TypeError("cancel must be a CancelToken, a threading.Event or a callable returning bool")

    @classmethod
    def of(cls, cancel: CancelToken | threading.Event | Callable[[], bool] | None) -> CancelToken:
        """``cancel`` itself when it is a token, else a token over it."""
        return cancel if isinstance(cancel, CancelToken) else cls(cancel)

    def cancel(self) -> None:
        """Ask the job to stop at its next check."""
        self._event.set()

    def reset(self) -> None:
        """Clear a cancellation (before the token is reused for another job)."""
        self._event.clear()

    def cancelled(self) -> bool:
        """True once cancellation was requested."""
        return self._event.is_set() or (self._poll is not None and bool(self._poll()))

    def check(self, where: str) -> None:
        """Raise :class:`~histokd_core.errors.Cancelled` naming ``where`` when cancelled."""
        if self.cancelled():
            raise Cancelled(f"cancelled during {where}")
