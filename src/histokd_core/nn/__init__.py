"""Shared neural-network layers (attention, pathway MLP, GATv2 graph, deformable sampling, DPC-KNN)."""
