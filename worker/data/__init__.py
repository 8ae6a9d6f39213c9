"""Data the worker ships: published gene lists."""
