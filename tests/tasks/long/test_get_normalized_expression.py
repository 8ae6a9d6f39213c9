"""GetNormalizedExpression through the v2 path: the gzipped CSV fetched by its signed URL, in
data.table::fwrite's layout, parsed back equal to the store's log-normalised values."""

import gzip
import io

import numpy as np
import pandas as pd
import pytest

from tests.tasks.long.conftest import LONG_EXPERIMENT, SAMPLES
from worker.compute.fwrite import csv_rows, format_numbers
from worker.store.cell_sets import CellSets, CellSetsLocation, update_cell_sets
from worker.store.experiment import open_experiment
from worker.tasks.get_normalized_expression import GetNormalizedExpressionBody, selected_cells
from worker.transport.aws import aws_client


def fwrite_number(value: float) -> str:
    """data.table's writeFloat64 rule written out, on numpy's shortest float32 digits."""
    if value == 0:
        return "0"
    mantissa, exponent = np.format_float_scientific(np.float32(value), unique=True).split("e")
    digits, exponent = mantissa.replace(".", ""), int(exponent)
    sf = len(digits)
    dr = sf - exponent - 1
    if dr <= 0:
        width = sf - dr
    elif sf > dr:
        width = sf + 1
    else:
        width = dr + 2
    if width <= sf + (sf > 1) + 2 + (3 if abs(exponent) > 99 else 2):
        if dr <= 0:
            return digits + "0" * -dr
        if sf > dr:
            return digits[: sf - dr] + "." + digits[sf - dr :]
        return "0." + "0" * (dr - sf) + digits
    return f"{digits[0]}{'.' + digits[1:] if sf > 1 else ''}e{'-' if exponent < 0 else '+'}" + (
        f"{abs(exponent):02d}"
    )


def texts(values) -> list[str]:
    chars, begins, lengths = format_numbers(np.asarray(values, dtype=np.float32))
    return [
        bytes(row[b : b + n]).decode() for row, b, n in zip(chars, begins, lengths, strict=True)
    ]


def test_numbers_are_written_as_fwrite_writes_them():
    # data.table's own examples of its decimal/scientific choice.
    examples = {0: "0", 2: "2", 123456: "123456", 1e-4: "1e-04", 1.234e-5: "1.234e-05",
                0.0001234: "0.0001234", 1e15: "1e+15", 100000: "1e+05", 120000: "120000",
                0.5: "0.5", 10000: "10000", 0.001: "0.001"}  # fmt: skip
    assert texts(list(examples)) == list(examples.values())
    rng = np.random.default_rng(3)
    values = np.concatenate(
        [
            np.log1p(rng.integers(1, 60, 20_000) / rng.uniform(100, 1e5, 20_000) * 1e4),
            10 ** rng.uniform(-45, 38, 5_000),
            rng.integers(1, 10_000, 1_000),
        ]
    ).astype(np.float32)
    written = texts(values)
    assert written == [fwrite_number(value) for value in values]
    assert (np.array(written, dtype=np.float64).astype(np.float32) == values).all()


def test_rows_are_the_numbers_between_zeros():
    rng = np.random.default_rng(5)
    dense = np.where(rng.random((6, 40)) < 0.3, rng.uniform(0, 9, (6, 40)), 0).astype(np.float32)
    dense[2] = 0
    dense[3, -1], dense[4, 0], dense[5, :] = 12345.5, 1e-5, 1.5
    rows = [np.flatnonzero(row) for row in dense]
    indptr = np.cumsum([0] + [len(row) for row in rows])
    prefixes = [f"{index + 1},G{index},".encode() for index in range(len(dense))]
    numbers = dense[dense != 0]
    text = csv_rows(prefixes, indptr, np.concatenate(rows), *format_numbers(numbers), 40)
    expected = "".join(
        f"{prefix.decode()}{','.join(fwrite_number(value) for value in row)}\n"
        for prefix, row in zip(prefixes, dense, strict=True)
    )
    assert text.tobytes().decode() == expected


@pytest.fixture(scope="module")
def custom_set(long_settings, prepared_long):
    """A scratchpad set of every third cell, in the experiment's cell sets."""
    location = CellSetsLocation(long_settings.cell_sets_bucket, LONG_EXPERIMENT, long_settings.aws)
    n_cells = prepared_long["cells"]
    scratchpad = {"key": "scratchpad", "name": "Custom cell sets", "rootNode": True,
                  "type": "cellSets", "children": [{"key": "every-third", "name": "every third",
                  "rootNode": False, "type": "cellSets", "color": "#000000",
                  "cellIds": list(range(0, n_cells, 3))}]}  # fmt: skip
    update_cell_sets(location, lambda current: current.with_hierarchy(scratchpad))
    return "every-third"


def download_csv(answer) -> tuple[bytes, pd.DataFrame]:
    text = gzip.decompress(answer.result)
    return text, pd.read_csv(io.BytesIO(text), float_precision="round_trip", index_col=None)


def test_a_subset_is_exported_as_the_platform_writes_it(v2, long_settings, custom_set):
    subset_by = {"louvain": [], "sample": ["sample-s1", "sample-s2"], "metadata": [],
                 "customCellSets": [custom_set]}  # fmt: skip
    message = v2.message(
        {"name": "GetNormalizedExpression", "subsetBy": subset_by}, LONG_EXPERIMENT
    )
    v2.send(message)
    answer = v2.answer(message, timeout_s=180, as_file=True)

    # Always announced by its signed URL, as a file: the browser saves it without parsing.
    assert answer.notification["response"] == {
        "cacheable": True, "error": False, "signedUrl": message["signedUrl"]}  # fmt: skip
    s3 = aws_client("s3", long_settings.aws)
    tags = s3.get_object_tagging(Bucket=long_settings.v2_results_bucket, Key=message["ETag"])
    assert {tag["Key"]: tag["Value"] for tag in tags["TagSet"]} == {
        "experimentId": LONG_EXPERIMENT, "requestType": "GetNormalizedExpression"}  # fmt: skip

    store = open_experiment(long_settings.store_root, LONG_EXPERIMENT, long_settings.aws)
    sample = store.obs["sample"].to_numpy()
    expected_cells = np.flatnonzero(
        np.isin(sample, SAMPLES[:2]) & (np.arange(store.n_cells) % 3 == 0)
    )
    text, table = download_csv(answer)
    barcodes = store.obs["barcode"].to_numpy()[expected_cells]
    assert text.startswith(f", ,{','.join(barcodes)}\n1,{store.var['gene_ids'].iloc[0]},".encode())
    assert list(table.columns[2:]) == list(barcodes)
    assert table.iloc[:, 0].tolist() == list(range(1, store.n_genes + 1))
    assert table.iloc[:, 1].tolist() == store.var["gene_ids"].tolist()
    values = table.iloc[:, 2:].to_numpy(dtype=np.float64).astype(np.float32)
    expected = store.log_normalised(np.arange(store.n_genes)).toarray()[expected_cells].T
    np.testing.assert_array_equal(values, expected)
    # Every number as fwrite writes it: the text of the first rows, value by value.
    for line, row in zip(text.split(b"\n")[1:4], expected[:3], strict=True):
        assert line.decode().split(",")[2:] == [fwrite_number(value) for value in row]


def test_every_cell_without_a_selection(v2, long_settings, prepared_long):
    body = {"name": "GetNormalizedExpression", "subsetBy": {"louvain": [], "sample": []}}
    message = v2.message(body, LONG_EXPERIMENT)
    v2.send(message)
    _, table = download_csv(v2.answer(message, timeout_s=180, as_file=True))
    assert table.shape == (prepared_long["genes"], prepared_long["cells"] + 2)


@pytest.mark.parametrize(
    ("subset_by", "code"),
    [
        ({"louvain": ["louvain-0"], "customCellSets": ["nowhere"]}, "INVALID_INPUT"),
        ({"sample": ["sample-s1"], "louvain": ["sample-s2"]}, "R_WORKER_EMPTY_CELL_SET"),
        ({"sample": ["sample-s1"], "clusters": ["louvain-0"]}, "INVALID_INPUT"),
    ],
)
def test_errors(v2, subset_by, code):
    message = v2.message(
        {"name": "GetNormalizedExpression", "subsetBy": subset_by}, LONG_EXPERIMENT
    )
    v2.send(message)
    response = v2.answer(message).notification["response"]
    assert response["error"] is True and response["errorCode"] == code


def test_selection_is_union_within_and_intersection_across_kinds():
    cell_sets = CellSets([
        {"key": "louvain", "children": [{"key": "c0", "cellIds": [0, 1, 2]},
                                        {"key": "c1", "cellIds": [3, 4]}]},
        {"key": "sample", "children": [{"key": "a", "cellIds": [1, 3, 5]},
                                       {"key": "b", "cellIds": [2, 6]}]},
    ])  # fmt: skip
    subset = GetNormalizedExpressionBody.model_validate(
        {"name": "GetNormalizedExpression", "subsetBy": {"louvain": ["louvain"], "sample": ["a"]}}
    ).subsetBy
    assert np.flatnonzero(selected_cells(cell_sets, subset, 8)).tolist() == [1, 3]
