"""Dock widgets; each is thin and calls histokd_core."""
