"""Method registry: name -> subpackage exposing ``Config`` (a dataclass), ``TASKS`` and ``stages``.

``stages(config) -> list[Stage]`` lists the models trained in each fold, in order (teacher first,
then students, ablations and baselines). Stage builders must also work with ``trained={}``, which
is how a checkpoint is rebuilt for inference (a student then predicts without its teacher).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from histokd_core.errors import HistoKDError

METHODS: dict[str, str] = {
    "amkd": "histokd_core.methods.amkd",
    "momkd": "histokd_core.methods.momkd",
    "subspace": "histokd_core.methods.subspace",
}


def get_method(name: str) -> ModuleType:
    """The method's subpackage; a clear error for unknown names."""
    if name not in METHODS:
        raise HistoKDError(f"unknown method {name!r}; expected one of {sorted(METHODS)}")
    return importlib.import_module(METHODS[name])
