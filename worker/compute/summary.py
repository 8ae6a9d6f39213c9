"""Summary statistics of expression values: min, max, mean and population standard deviation,
as the seed contract reports them beside every list of values; and the statistics Cellenics v2
sends with a gene's values (sample deviation, the quantile that caps its colour scale)."""

import math

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


# The platform's colour scale (its R worker's `getStats`): capped at the 0.95 quantile; where
# that is 0 (a gene in at most 5% of cells), at 0.96, 0.97... up to the maximum, by repeated
# addition as its loop does (0.95 + 5 x 0.01 lands exactly on 1.0).
QUANTILE_THRESHOLD = 0.95
QUANTILE_STEP = 0.01


def expression_stats(nonzeros: np.ndarray, n_values: int) -> dict:
    """`rawMean`, `rawStdev` (n - 1), `truncatedMin` and `truncatedMax` of `n_values` values that
    are the non-negative `nonzeros` and zeros, from the nonzeros alone (see
    `truncation_quantile`); the deviation is null for fewer than two values."""
    n_zeros = n_values - nonzeros.size
    mean = nonzeros.sum(dtype=np.float64) / n_values
    deviations = np.subtract(nonzeros, mean, dtype=np.float64)
    sum_of_squares = deviations @ deviations + n_zeros * mean * mean
    stdev = np.sqrt(sum_of_squares / (n_values - 1)) if n_values > 1 else np.nan
    return {
        "rawMean": mean,
        "rawStdev": stdev,
        "truncatedMin": np.float32(0) if n_zeros else nonzeros.min(),
        "truncatedMax": truncation_quantile(nonzeros, n_values),
    }


def truncation_quantile(nonzeros: np.ndarray, n_values: int) -> np.float32:
    """The first nonzero of the column's quantiles at 0.95, 0.96... 1.0, else 0."""
    probability = QUANTILE_THRESHOLD
    while probability <= 1:
        quantile = sparse_quantile(nonzeros, n_values, probability)
        if quantile != 0:
            return quantile
        probability += QUANTILE_STEP
    return np.float32(0)


def sparse_quantile(nonzeros: np.ndarray, n_values: int, probability: float) -> np.float32:
    """`numpy.quantile(column, probability)` (linear, R's type 7) of the column of `n_values`
    values that are the non-negative float32 `nonzeros` and zeros, in numpy's arithmetic: the
    sorted column is the zeros, then the sorted nonzeros, so the two neighbouring order
    statistics come from one partition of the nonzeros (not a sort of every cell)."""
    n_zeros = n_values - nonzeros.size
    position = (n_values - 1) * probability
    if position >= n_values - 1:
        return np.float32(nonzeros.max() if nonzeros.size else 0)
    below = math.floor(position)
    if below + 1 < n_zeros:
        lower = upper = np.float32(0)
    elif below < n_zeros:
        lower, upper = np.float32(0), nonzeros.min()
    else:
        # One partition and a minimum: numpy partitions several ranks at once much slower.
        picked = np.partition(nonzeros, below - n_zeros)
        lower, upper = picked[below - n_zeros], picked[below - n_zeros + 1 :].min()
    # numpy's `_lerp`, with the weight as a Python float so the arithmetic stays float32.
    weight = position - below
    difference = upper - lower
    if weight >= 0.5:
        return upper - difference * (1 - weight)
    return lower + difference * weight
