"""Solvers (being written)."""
