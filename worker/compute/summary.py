"""Summary statistics of expression values: min, max, mean and population standard deviation,
as the contract reports them beside every list of values."""

import numpy as np

NO_SUMMARY = {"min": None, "max": None, "mean": None, "stdev": None}


def summary(values: np.ndarray) -> dict:
    """`min`, `max`, `mean`, `stdev` (population) of float32 values; null when there are none."""
    if values.size == 0:
        return NO_SUMMARY
    return {
        "min": values.min(),
        "max": values.max(),
        "mean": np.float32(values.mean(dtype=np.float64)),
        "stdev": np.float32(values.std(dtype=np.float64)),
    }


def sparse_summary(nonzeros: np.ndarray, n_values: int) -> dict:
    """`summary` of `n_values` values that are `nonzeros` and zeros, from the nonzeros alone:
    a gene is zero in most cells, and a million-cell answer is then summarised in microseconds."""
    if n_values == 0:
        return NO_SUMMARY
    n_zeros = n_values - nonzeros.size
    extremes = [nonzeros.min(), nonzeros.max()] if nonzeros.size else []
    if n_zeros:
        extremes.append(np.float32(0))
    mean = nonzeros.sum(dtype=np.float64) / n_values
    deviations = nonzeros.astype(np.float64) - mean
    variance = (deviations @ deviations + n_zeros * mean * mean) / n_values
    return {
        "min": min(extremes),
        "max": max(extremes),
        "mean": np.float32(mean),
        "stdev": np.float32(np.sqrt(variance)),
    }
