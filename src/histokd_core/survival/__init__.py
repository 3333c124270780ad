"""Survival analysis: Cox and discrete-time losses, time bins, C-index, Kaplan-Meier curves and log-rank."""

from histokd_core.survival.bins import assign_bins, survival_bin_edges
from histokd_core.survival.km import KMResult, km_logrank, plot_km
from histokd_core.survival.losses import cox_nll, discrete_nll, discrete_risk
from histokd_core.survival.metrics import c_index

__all__ = [
    "KMResult",
    "assign_bins",
    "c_index",
    "cox_nll",
    "discrete_nll",
    "discrete_risk",
    "km_logrank",
    "plot_km",
    "survival_bin_edges",
]
