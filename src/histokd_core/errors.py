"""Errors with messages meant for people: they name the file or field and what was expected."""


class HistoKDError(Exception):
    """Base class of every error histokd raises on purpose (bad input, bad configuration)."""


class SlideError(HistoKDError):
    """A slide file cannot be opened or read (corrupt, truncated, not a slide)."""


class MissingMppError(HistoKDError):
    """An operation needs microns-per-pixel and the slide has none; pass ``--mpp``."""


class DataError(HistoKDError):
    """A cohort table, omics table, gene-set file or feature store is invalid."""


class CheckpointError(HistoKDError):
    """A checkpoint is missing, corrupt, or was written by an incompatible version."""
