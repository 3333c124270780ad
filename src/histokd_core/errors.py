"""Every error histokd raises on purpose, in one place.

Messages are meant for people: they name the file, field or setting and say what was expected.
The CLI prints any :class:`HistoKDError` without a traceback (exit code 2); the docks show it as a
notification. Bad *data* (a table, a feature file) is a :class:`DataError`; a bad *setting* (a
config value, a device name, a method or encoder name) is a :class:`ConfigError`.
"""


class HistoKDError(Exception):
    """Base class of every error histokd raises on purpose (bad input, bad configuration)."""


class SlideError(HistoKDError):
    """A slide file cannot be opened or read (corrupt, truncated, not a slide)."""


class MissingMppError(HistoKDError):
    """An operation needs microns-per-pixel and the slide has none; pass ``--mpp``."""


class DataError(HistoKDError):
    """A cohort table, omics table, gene-set file or feature store is invalid."""


class ConfigError(HistoKDError):
    """A setting is invalid: a config field, a device, a method, task or run-folder choice."""


class EncoderError(HistoKDError):
    """An encoder spec is unknown, its weights file is missing/invalid, or a dependency is absent."""


class CheckpointError(HistoKDError):
    """A checkpoint is missing, corrupt, or was written by an incompatible version."""


class RunDirError(HistoKDError):
    """A run directory cannot be used (not a run, another configuration, or --resume missing)."""


class TrainingError(HistoKDError):
    """Training cannot go on (a non-finite loss, no training cases)."""


class Cancelled(HistoKDError):
    """The user cancelled a long job (training, analysis, extraction); finished work is kept."""
