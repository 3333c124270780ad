"""Per-gene standardisation fitted on the training fold only (no leakage into val/test)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from histokd_core.errors import DataError


@dataclass
class Standardizer:
    """Per-gene z-score: ``(x - mean) / std`` with mean and std of the training cases.

    Genes constant on the training fold get ``std = 1`` (they are centred, not blown up).
    ``log1p`` first applies ``log(1 + x)`` (for raw counts/TPM; leave off for tables that are
    already log-transformed or z-scored, such as the TCGA ``_rnaseq`` columns).
    """

    log1p: bool = False
    genes: list[str] = field(default_factory=list)
    mean_: np.ndarray | None = None
    std_: np.ndarray | None = None

    def _prepare(self, x: pd.DataFrame) -> np.ndarray:
        values = x.to_numpy(dtype=np.float64)
        if self.log1p:
            if (values < 0).any():
                raise DataError(
                    "Standardizer(log1p=True): expression has negative values; log1p needs >= 0")
            values = np.log1p(values)
        return values

    def fit(self, train: pd.DataFrame) -> Standardizer:
        """Fit on the training fold's ``(n_train, g)`` table; returns ``self``."""
        if len(train) == 0:
            raise DataError("Standardizer.fit: the training table is empty")
        values = self._prepare(train)
        self.genes = [str(g) for g in train.columns]
        self.mean_ = values.mean(axis=0)
        std = values.std(axis=0)
        self.std_ = np.where(std > 1e-8, std, 1.0)
        return self

    def transform(self, x: pd.DataFrame) -> pd.DataFrame:
        """Standardise ``(n, g)`` rows with the training statistics (float32, same index and
        columns)."""
        if self.mean_ is None:
            raise DataError("Standardizer.transform called before fit")
        missing = [g for g in self.genes if g not in x.columns]
        if missing:
            raise DataError(
                f"Standardizer.transform: table lacks fitted gene(s) {', '.join(missing[:8])}")
        x = x[self.genes]
        z = (self._prepare(x) - self.mean_) / self.std_
        return pd.DataFrame(z.astype(np.float32), index=x.index, columns=self.genes)

    def fit_transform(self, train: pd.DataFrame) -> pd.DataFrame:
        return self.fit(train).transform(train)
