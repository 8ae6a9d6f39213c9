"""Compute back end of an interactive single-cell RNA-seq analysis platform."""

__version__ = "0.1.0"
