"""Losses: pure functions of arrays, one module per objective."""
