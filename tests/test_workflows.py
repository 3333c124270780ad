"""The workflow layer: structured progress of a run, one cancel token, child-process reporting."""

from __future__ import annotations

import queue
import threading

import pytest
from test_train_cv import METHOD, TinyCohort, cfg

from histokd_core.cancel import CancelToken
from histokd_core.errors import Cancelled, DataError
from histokd_core.progress import ProgressEvent
from histokd_core.train import run_cv
from histokd_core.train.callbacks import Progress, ProgressCallback
from histokd_core.workflows import run_in_process


def test_progress_fraction_by_hand():
    # fold 2 of 4 (position 1), stage 2 of 3 (index 1), epoch 3 of 10, step 5 of 10
    p = Progress("student", 3, 10, step=5, n_steps=10, fold=7, n_folds=4, stage_index=1, n_stages=3,
                 fold_index=1)
    assert p.fraction() == pytest.approx((1 + (1 + 2.5 / 10) / 3) / 4)
    assert p.fraction(stage_done=True) == pytest.approx((1 + 2 / 3) / 4)
    assert p.where() == "fold 7 student epoch 3/10"


def test_run_reports_monotone_structured_progress(tmp_path):
    events: list[ProgressEvent] = []
    run_cv(METHOD, {"models": ["abmil", "omics_only"]}, TinyCohort(n_folds=2, per_fold=8), tmp_path / "run",
           cfg(epochs=2), callbacks=[ProgressCallback(events.append, every_s=0.0)])
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    epochs = [(e.fold, e.stage, e.epoch) for e in events if e.kind == "epoch"]
    assert epochs == [(f, s, e) for f in (0, 1) for s in ("abmil", "omics_only") for e in (1, 2)]
    assert all("train_loss" in e.metrics for e in events if e.kind == "epoch")
    folds = [e for e in events if e.kind == "fold"]
    assert [e.fold for e in folds] == [0, 1] and "abmil/c_index" in folds[0].metrics
    assert [e.stage for e in events if e.kind == "stage"] == ["abmil", "omics_only"] * 2


def test_one_token_from_an_event_a_callable_or_itself():
    event = threading.Event()
    token = CancelToken.of(event)
    assert not token.cancelled()
    event.set()
    with pytest.raises(Cancelled, match="during step 3"):
        token.check("step 3")
    flag = [False]
    polled = CancelToken.of(lambda: flag[0])
    assert CancelToken.of(polled) is polled and not polled.cancelled()
    polled.cancel()
    assert polled.cancelled()
    polled.reset()
    flag[0] = True
    assert polled.cancelled()
    with pytest.raises(TypeError):
        CancelToken("yes")


def _workflow(outcome: str, progress, cancel):
    progress(ProgressEvent("message", 0.5, "half way"))
    if outcome == "data":
        raise DataError("cohort.csv: column 'event' missing")
    if outcome == "bug":
        raise ZeroDivisionError("division by zero")
    cancel.check("the second half")
    return {"done": True}


@pytest.mark.parametrize("outcome, cancelled, last", [
    ("ok", False, ("done", {"done": True})),
    ("ok", True, ("cancelled", "cancelled during the second half")),
    ("data", False, ("error", {"type": "DataError", "message": "cohort.csv: column 'event' missing",
                               "histokd": True})),
    ("bug", False, ("error", {"type": "ZeroDivisionError", "message": "division by zero",
                              "histokd": False})),
])
def test_child_process_entry_point_reports_every_outcome(outcome, cancelled, last):
    """run_in_process's messages, run in this process (a spawned child runs the same function;
    tests/test_widgets_train.py runs it in a real child process)."""
    messages: queue.Queue = queue.Queue()
    stop = threading.Event()
    if cancelled:
        stop.set()
    run_in_process(messages, stop, _workflow, {"outcome": outcome})
    got = [messages.get_nowait() for _ in range(messages.qsize())]
    assert got[0] == ("progress", ProgressEvent("message", 0.5, "half way").as_dict())
    assert got[1:] == [last]
