"""Train a cohort: a method cross-validated on a cohort table, features, omics and gene sets."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from histokd_core.cancel import CancelToken
from histokd_core.progress import ProgressFn

if TYPE_CHECKING:
    from histokd_core.train.callbacks import Callback
    from histokd_core.train.cv import RunResult

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


def train_cohort(
    method: str,
    cohort: PathLike,
    features: PathLike,
    out: PathLike,
    *,
    omics: PathLike | None = None,
    gene_sets: PathLike | None = None,
    tumor_genes: PathLike | Sequence[str] | None = None,
    tme_genes: PathLike | Sequence[str] | None = None,
    task: str | None = None,
    label_column: str | None = None,
    n_folds: int = 5,
    folds_csv: PathLike | None = None,
    only_folds: Sequence[int] | None = None,
    epochs: int = 100,
    batch_size: int | None = None,
    grad_accum: int = 1,
    lr: float = 5e-5,
    weight_decay: float = 1e-5,
    patience: int = 10,
    seed: int = 0,
    device: str = "auto",
    threads: int | None = None,
    method_config: dict[str, Any] | None = None,
    resume: bool = False,
    min_test_events: int | None = None,
    monitor: str = "loss",
    swap_diagnostic: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelToken | threading.Event | Callable[[], bool] | None = None,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Cross-validate ``method`` on a cohort and write the run to ``out``.

    Parameters
    ----------
    method : a registered method (``amkd``, ``momkd``, ``subspace``, ``baselines``).
    cohort : cohort table (``case_id``, ``slide_id``, ``survival_months`` + ``event`` or
        ``censorship``, or a label column).
    features : feature store root or folder of CLAM/TRIDENT ``.h5`` / ``.pt`` bags.
    out : run directory (``config.yaml``, ``fold_<i>/<stage>.safetensors``, ``metrics.json``,
        ``history.json``, ``km.png``).
    omics, gene_sets : expression table and gene sets (GMT or SurvPath CSV), when the method
        uses them.
    tumor_genes, tme_genes : the tumour / TME gene lists of the subspace method (default: from
        the MSigDB Hallmark sets in ``gene_sets``). Each is a sequence of gene symbols, or a
        string: a text file of gene symbols, or comma-separated names of sets in ``gene_sets``
        (:func:`~histokd_core.omics.read_gene_list`).
    task : ``"survival"`` or ``"classification"``; None = the method's default.
    label_column : the classification label column (default ``label``).
    n_folds, folds_csv : number of stratified folds (seeded by ``seed``), or a folds CSV /
        CLAM ``splits_<k>.csv`` folder to use instead; only_folds : fold indices to run.
    epochs, batch_size, grad_accum, lr, weight_decay, patience, seed, device, threads : see
        :class:`~histokd_core.train.trainer.TrainConfig` (``threads`` caps torch CPU threads).
    method_config : fields of the method's ``Config`` (defaults for the others).
    resume : continue an interrupted run in ``out``.
    min_test_events : survival: fewest events a fold's test split must hold (default
        :data:`~histokd_core.cohort.MIN_TEST_EVENTS`); folds with fewer, a cohort without events,
        or (classification) a fold missing a class are refused before anything trains
        (:func:`~histokd_core.cohort.check_evaluable`).
    monitor : model selection on the validation task loss (``"loss"``) or C-index / AUC
        (``"metric"``), see :class:`~histokd_core.train.trainer.TrainConfig`.
    swap_diagnostic : write the teachers' swap diagnostic into ``metrics.json``
        (:func:`~histokd_core.train.swap.model_swap_diagnostic`).
    progress : receives :class:`~histokd_core.progress.ProgressEvent` s (steps at most every
        0.1 s, every epoch, stage and fold), from the calling thread.
    cancel : stops at the next step with :class:`~histokd_core.errors.Cancelled`, keeping the
        last epoch's state for ``resume``.
    callbacks : further trainer callbacks (the CLI logs epochs with a LoggingCallback).
    """
    from histokd_core.cohort import MIN_TEST_EVENTS, check_evaluable, load_cohort
    from histokd_core.dataset import CohortData
    from histokd_core.errors import ConfigError, DataError
    from histokd_core.methods.registry import check_task
    from histokd_core.omics import default_tumor_tme_lists, read_gene_list, read_gene_sets
    from histokd_core.train import TrainConfig, run_cv
    from histokd_core.train.callbacks import ProgressCallback

    task = check_task(method, task)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
                         weight_decay=weight_decay, patience=patience, seed=seed, device=device,
                         num_threads=threads, monitor=monitor)
    token = CancelToken.of(cancel)
    sets = None if gene_sets is None else read_gene_sets(gene_sets)
    lists = {}
    for option, spec in (("--tumor-genes", tumor_genes), ("--tme-genes", tme_genes)):
        if spec is None:
            lists[option] = None
        elif isinstance(spec, (str, os.PathLike)):
            lists[option] = read_gene_list(spec, sets, option)
        else:
            lists[option] = [str(g) for g in spec]
    if omics is None and any(v is not None for v in lists.values()):
        raise ConfigError("--tumor-genes / --tme-genes split the expression: pass --omics too")
    if method == "subspace" and None in lists.values():
        try:
            default_tumor_tme_lists(sets or {})
        except DataError as exc:
            raise ConfigError(f"subspace method: {exc} (--tumor-genes and --tme-genes: set names "
                              "or text files of gene symbols)") from None
    data = CohortData(load_cohort(cohort, task=task, label_column=label_column), features,
                      omics=omics, gene_sets=sets, folds=folds_csv, n_folds=n_folds, seed=seed,
                      tumor_genes=lists["--tumor-genes"], tme_genes=lists["--tme-genes"])
    check_evaluable(data.cohort, data.folds,
                    MIN_TEST_EVENTS if min_test_events is None else min_test_events)
    log.info("%r", data)
    callbacks = list(callbacks)
    if progress is not None:
        callbacks.append(ProgressCallback(progress))
    return run_cv(method, method_config, data, out, config,
                  folds=None if only_folds is None else list(only_folds),
                  callbacks=callbacks, cancel=token, resume=resume,
                  swap_diagnostic=swap_diagnostic)
