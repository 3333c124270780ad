"""The method registry: every trainable method by name, with its config class, tasks and stages.

A method is a module exposing

- ``Config``: a dataclass of its settings (checked in ``__post_init__``, raising
  :class:`~histokd_core.errors.ConfigError`);
- ``TASKS``: the tasks it supports, the default first (``"survival"``, ``"classification"``);
- ``stages(config) -> list[Stage]``: the models trained in each fold, in order (teacher first,
  then students, ablations and baselines). Stage builders must also work with ``trained={}``,
  which is how a checkpoint is rebuilt for inference (a student then predicts without its
  teacher).

The CLI, the cross-validation runner, the checkpoint loader and the Train dock all read this
registry; :func:`register_method` adds a method defined outside this package.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

from histokd_core.errors import ConfigError

if TYPE_CHECKING:
    from histokd_core.methods.base import Stage

#: Method name -> module path, in the order the Train dock lists them.
METHODS: dict[str, str] = {
    "amkd": "histokd_core.methods.amkd",
    "momkd": "histokd_core.methods.momkd",
    "subspace": "histokd_core.methods.subspace",
    "baselines": "histokd_core.methods.baselines",
}


def available_methods() -> list[str]:
    """Registered method names, in registration order."""
    return list(METHODS)


def register_method(name: str, module_path: str) -> None:
    """Register a method module (``Config``, ``TASKS``, ``stages``) under ``name``."""
    module = importlib.import_module(module_path)
    missing = [a for a in ("Config", "TASKS", "stages") if not hasattr(module, a)]
    if missing:
        raise ConfigError(f"{module_path!r} is not a method module (missing {', '.join(missing)})")
    METHODS[name] = module_path


def method_name(name: str) -> str:
    """The registered name of ``name``, which may also be a registered module's path (older runs
    recorded ``histokd_core.methods.baselines``)."""
    if name in METHODS:
        return name
    for key, path in METHODS.items():
        if name == path:
            return key
    raise ConfigError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")


def get_method(name: str) -> ModuleType:
    """The module of method ``name`` (see :func:`method_name`)."""
    return importlib.import_module(METHODS[method_name(name)])


def method_tasks(name: str) -> tuple[str, ...]:
    """Tasks method ``name`` supports; the first is its default."""
    return tuple(get_method(name).TASKS)


def check_task(name: str, task: str | None) -> str:
    """``task``, or the method's default when None; ConfigError when the method lacks it."""
    tasks = method_tasks(name)
    task = task or tasks[0]
    if task not in tasks:
        raise ConfigError(f"method {name} supports {', '.join(tasks)}, not task {task!r}")
    return task


def make_config(name: str, values: Any = None) -> Any:
    """The method's ``Config`` from a dict of its fields (as stored in checkpoints and
    ``config.yaml``), or ``values`` itself when it already is one; ``None`` gives the defaults."""
    config_cls = get_method(name).Config
    if isinstance(values, config_cls):
        return values
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown {method_name(name)} config fields {unknown}; expected {sorted(names)}")
    return config_cls(**values)


def method_stages(name: str, config: Any = None) -> list[Stage]:
    """The stages of method ``name`` for ``config`` (a ``Config``, a dict of fields or None)."""
    return get_method(name).stages(make_config(name, config))
