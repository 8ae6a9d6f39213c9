"""The text R's `data.table::fwrite` writes for a numeric table, built for whole blocks of values
at once with numpy: the platform's CSV export (GetNormalizedExpression) is a billion numbers at a
million cells, too many to format one by one.

Numbers follow fwrite's rule (its `writeFloat64`): 0 is `0`; otherwise the significant digits
are written in decimal form (`0.0001234`, `2`, `123456`) unless the scientific form
(`1.234e-05`, `1e+15`, exponent with a sign and at least two digits) is shorter. fwrite writes
doubles with 15 significant digits; the values here are float32, written with the fewest
digits (at most 9) that read back as the same float32.
"""

import numpy as np

MAX_DIGITS = 9
ZERO, POINT, COMMA, NEWLINE = (ord(char) for char in "0.,\n")
# A number's text is a slice of a fixed layout: up to 4 integer digits (right-aligned), the
# point, up to 12 fraction digits; numbers outside [0.001, 10000) start at 0 instead.
INTEGER_DIGITS, FRACTION_DIGITS = 4, 12
WIDTH = INTEGER_DIGITS + 1 + FRACTION_DIGITS
# The text of 0000 to 9999, 4 bytes each, gathered as one uint32 per number.
FOUR_DIGITS = np.frombuffer(
    "".join(f"{number:04d}" for number in range(10_000)).encode(), dtype=np.uint32
)
POWERS = 10.0 ** np.arange(-INTEGER_DIGITS, MAX_DIGITS + 4)
INTEGER_POWERS = 10 ** np.arange(FRACTION_DIGITS + 1, dtype=np.int64)


def _power(exponents: np.ndarray) -> np.ndarray:
    """`10.0 ** exponents` for exponents in [-4, 12], exactly where float64 can be exact."""
    return POWERS[exponents + INTEGER_DIGITS]


def fwrite_text(value: float) -> str:
    """fwrite's text of one number, with the fewest digits that read back as the same float32
    (numpy's shortest representation). For the numbers outside the common range."""
    if value == 0:
        return "0"
    digits, exponent = np.format_float_scientific(np.float32(value), unique=True).split("e")
    digits, exponent = digits.replace(".", "").rstrip("0") or "0", int(exponent)
    sf = len(digits)
    dr = sf - exponent - 1
    decimal_width = sf - dr if dr <= 0 else sf + 1 if sf > dr else dr + 2
    if decimal_width <= sf + (sf > 1) + 2 + (3 if abs(exponent) > 99 else 2):
        if dr <= 0:
            return digits + "0" * -dr
        if sf > dr:
            return f"{digits[: sf - dr]}.{digits[sf - dr :]}"
        return "0." + "0" * (dr - sf) + digits
    mantissa = digits[0] + (f".{digits[1:]}" if sf > 1 else "")
    return f"{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"


def format_numbers(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fwrite's text of each float32 value (finite, 0 or more), as `(chars, begins, lengths)`:
    the ASCII text of value k is `chars[k, begins[k] : begins[k] + lengths[k]]`.

    Values in [0.001, 10000) (every nonzero log-normalised value of a cell with fewer than ten
    million counts) always take the decimal form and are built with numpy; the others, one by
    one.
    """
    values = np.asarray(values, dtype=np.float32)
    if values.size and not (np.isfinite(values).all() and values.min() >= 0):
        raise ValueError("only finite values of at least 0 are formatted")
    chars = np.zeros((len(values), WIDTH), dtype=np.uint8)
    begins = np.zeros(len(values), dtype=np.int64)
    lengths = np.zeros(len(values), dtype=np.int64)
    common = ((values >= np.float32(1e-3)) & (values < np.float32(1e4))) | (values == 0)
    index = np.flatnonzero(common)
    chars[index], begins[index], lengths[index] = _decimal(values[index])
    for k in np.flatnonzero(~common):
        text = fwrite_text(values[k]).encode()
        chars[k, : len(text)] = np.frombuffer(text, dtype=np.uint8)
        lengths[k] = len(text)
    return chars, begins, lengths


def _decimal(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The text of values that are 0 or in [0.001, 10000), in the fixed layout."""
    wide = values.astype(np.float64)
    # The decimal exponent of the first digit, by float32 comparison: no value at or above
    # float32(0.1) has a shortest text below 0.1.
    exponent = np.full(len(values), -3, dtype=np.int64)
    for threshold in (1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3):
        exponent += values >= np.float32(threshold)
    # The fewest digits that read back: 9 always do; fewer are tried while they still do.
    n_digits = np.full(len(values), MAX_DIGITS, dtype=np.int64)
    mantissa = np.round(wide * _power(MAX_DIGITS - 1 - exponent)).astype(np.int64)
    trying = np.flatnonzero(values != 0)
    for digits in range(MAX_DIGITS - 1, 0, -1):
        places = digits - 1 - exponent[trying]
        rounded = np.round(wide[trying] * _power(places))
        # Dividing by an exact power of ten reads back as a parser would (correctly rounded).
        read_back = np.where(places >= 0, rounded / _power(places), rounded * _power(-places))
        fits = read_back.astype(np.float32) == values[trying]
        trying = trying[fits]
        mantissa[trying] = rounded[fits].astype(np.int64)
        n_digits[trying] = digits
        if len(trying) == 0:
            break
    mantissa[values == 0] = 0
    n_digits[values == 0] = 1
    exponent[values == 0] = 0
    # value = mantissa * 10**shift: an integer (shift >= 0), or -shift digits after the point.
    shift = exponent - n_digits + 1
    fraction_digits = np.maximum(-shift, 0)
    integer = np.where(
        shift >= 0,
        mantissa * INTEGER_POWERS[np.maximum(shift, 0)],
        mantissa // INTEGER_POWERS[fraction_digits],
    )
    fraction = mantissa % INTEGER_POWERS[fraction_digits]
    integer_width = 1 + (integer >= 10) + (integer >= 100) + (integer >= 1000)

    chars = np.empty((len(values), WIDTH), dtype=np.uint8)
    chars[:, :INTEGER_DIGITS] = FOUR_DIGITS[integer].view(np.uint8).reshape(-1, 4)
    chars[:, INTEGER_DIGITS] = POINT
    padded = fraction * INTEGER_POWERS[FRACTION_DIGITS - fraction_digits]
    for group in range(FRACTION_DIGITS // 4):
        quartet = padded // 10 ** (FRACTION_DIGITS - 4 * (group + 1)) % 10_000
        first = INTEGER_DIGITS + 1 + 4 * group
        chars[:, first : first + 4] = FOUR_DIGITS[quartet].view(np.uint8).reshape(-1, 4)
    begins = INTEGER_DIGITS - integer_width
    lengths = integer_width + np.where(fraction_digits > 0, 1 + fraction_digits, 0)
    return chars, begins, lengths


def csv_rows(
    prefixes: list[bytes],
    indptr: np.ndarray,
    columns: np.ndarray,
    chars: np.ndarray,
    begins: np.ndarray,
    lengths: np.ndarray,
    n_columns: int,
) -> np.ndarray:
    """The bytes of rows of `n_columns` comma-separated numbers, each row after its prefix and
    ending in a newline: row r holds the text `chars[k, :lengths[k]]` at column `columns[k]` for
    k in `indptr[r]:indptr[r+1]` (columns ascending) and `0` elsewhere; the text of number k is
    `chars[k, begins[k] : begins[k] + lengths[k]]` (as `format_numbers` gives it).

    Built without a loop over values: the zeros between numbers are the pattern `0,0,...`,
    whose phase each longer number shifts; the phase is tracked as a running parity.
    """
    n_rows = len(prefixes)
    indptr = np.asarray(indptr, dtype=np.int64)
    columns = np.asarray(columns, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    prefix_lengths = np.fromiter((len(prefix) for prefix in prefixes), np.int64, n_rows)
    extra = np.concatenate([[0], np.cumsum(lengths - 1)])  # characters beyond one per number
    row_extra = extra[indptr[1:]] - extra[indptr[:-1]]
    row_lengths = prefix_lengths + 2 * n_columns + row_extra
    row_starts = np.concatenate([[0], np.cumsum(row_lengths)[:-1]])
    total = int(row_lengths.sum())
    row_of = np.repeat(np.arange(n_rows), np.diff(indptr))
    first_column = row_starts + prefix_lengths  # where column 0 of each row starts
    starts = first_column[row_of] + 2 * columns + extra[:-1] - extra[indptr[row_of]]

    # The zero pattern starts in phase at each row's first column; after number k it is shifted
    # by the extra characters of the row's numbers up to k.
    breaks = np.concatenate([row_starts, starts + lengths])
    phases = np.concatenate(
        [first_column, first_column[row_of] + extra[1:] - extra[indptr[row_of]]]
    )
    order = np.argsort(breaks, kind="stable")
    breaks, phases = breaks[order], phases[order] & 1
    parity = np.zeros(total, dtype=np.uint8)
    parity[breaks] = np.diff(phases, prepend=0) & 1
    np.cumsum(parity, dtype=np.uint8, out=parity)
    parity &= 1
    text = np.empty(total, dtype=np.uint8)
    text[0::2] = ZERO
    text[1::2] = COMMA
    parity *= ZERO ^ COMMA
    text ^= parity
    del parity

    ends = begins + lengths
    for j in range(chars.shape[1]):
        inside = (begins <= j) & (j < ends)
        text[starts[inside] + (j - begins[inside])] = chars[inside, j]
    if n_rows:
        prefix_text = np.frombuffer(b"".join(prefixes), dtype=np.uint8)
        prefix_offsets = np.concatenate([[0], np.cumsum(prefix_lengths)[:-1]])
        text[
            np.repeat(row_starts - prefix_offsets, prefix_lengths) + np.arange(len(prefix_text))
        ] = prefix_text
        text[row_starts + row_lengths - 1] = NEWLINE
    return text
