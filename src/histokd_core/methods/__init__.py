"""Distillation methods: one subpackage each (``amkd``, ``momkd``, ``subspace``, ``baselines``)."""
