"""Lods: certified clinical AI in everyday hospital use, under clinicians' control."""

__version__ = "0.1.0"
