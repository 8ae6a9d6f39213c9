"""GeneExpression (Cellenics v2) through the v2 path: the sparse matrix against scanpy's
log-normalised values, the statistics against the platform's formula written out (numpy's
type-7 quantile on the dense column), the rows of `downsampleSettings` against its bucketing
written out."""

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

from tests.conftest import SYNTHETIC_EXPERIMENT
from tests.tasks.helpers import cell_set, scanpy_log_normalised, store_hierarchy
from tests.tasks.v2_harness import cell_sets_restored
from worker.store.cell_sets import cluster_hierarchy

TENX_EXPERIMENT = "shared-v3-mtx-gz"


@pytest.fixture(scope="module")
def synthetic(prepared_synthetic, session_settings) -> ad.AnnData:
    adata = scanpy_log_normalised(prepared_synthetic["store"], session_settings)
    adata.X = adata.X.toarray()
    return adata


@pytest.fixture(scope="module")
def tracks(session_settings, synthetic_dataset, prepared_synthetic) -> dict[str, list[set]]:
    """Two classes to bucket by: the generator's clusters, and `v2-ge-part` whose children
    overlap (cells 1400-1499 are in both) and leave cells 3000 on in neither."""
    with cell_sets_restored(session_settings, SYNTHETIC_EXPERIMENT):
        types = cluster_hierarchy("v2-ge-types", "Types", synthetic_dataset.cluster_labels)
        part = {"key": "v2-ge-part", "name": "Part", "rootNode": True, "type": "cellSets",
                "children": [cell_set("v2-ge-a", range(1500)),
                             cell_set("v2-ge-b", range(1400, 3000))]}  # fmt: skip
        store_hierarchy(session_settings, SYNTHETIC_EXPERIMENT, types)
        store_hierarchy(session_settings, SYNTHETIC_EXPERIMENT, part)
        yield {
            hierarchy["key"]: [set(child["cellIds"]) for child in hierarchy["children"]]
            for hierarchy in (types, part)
        }


def csc_of(result: dict) -> sparse.csc_array:
    raw = result["rawExpression"]
    matrix = sparse.csc_array(
        (np.asarray(raw["values"], dtype=np.float32), raw["index"], raw["ptr"]),
        shape=tuple(raw["size"]),
    )
    for gene in range(matrix.shape[1]):
        rows = matrix.indices[matrix.indptr[gene] : matrix.indptr[gene + 1]]
        assert (np.diff(rows) > 0).all()
    assert (matrix.data != 0).all()
    return matrix


def platform_stats(column: np.ndarray) -> dict:
    """The platform's R `getStats` of one gene's values in every cell, written out in numpy:
    mean, sample deviation, minimum, and the first nonzero type-7 quantile at 0.95, 0.96...
    1.0 (0 if none)."""
    probability = 0.95
    cap = np.quantile(column, probability)
    while cap == 0 and probability + 0.01 <= 1:
        probability += 0.01
        cap = np.quantile(column, probability)
    values = column.astype(np.float64)
    return {
        "rawMean": values.mean(),
        "rawStdev": values.std(ddof=1),
        "truncatedMin": column.min(),
        "truncatedMax": cap,
    }


def assert_platform_stats(stats: dict, columns: np.ndarray) -> None:
    expected = [platform_stats(column) for column in columns.T]
    for field in ("rawMean", "rawStdev"):
        np.testing.assert_allclose(stats[field], [gene[field] for gene in expected], rtol=1e-9)
    for field in ("truncatedMin", "truncatedMax"):
        assert np.array(stats[field], dtype=np.float32).tolist() == [
            gene[field] for gene in expected
        ]


def test_every_cell_is_a_row_and_the_stats_are_the_platforms(v2, synthetic):
    expressing = (synthetic.X > 0).mean(axis=0)
    names = synthetic.var["gene_names"].to_numpy()
    # One gene in most cells (its 0.95 quantile is nonzero), one in at most 5% (the quantile is
    # taken again higher up), one in fewer than 1% of cells.
    positions = [
        int(np.flatnonzero((expressing > 0.3) & (expressing < 0.9))[0]),
        int(np.flatnonzero((expressing > 0.01) & (expressing <= 0.05))[0]),
        int(np.flatnonzero((expressing > 0) & (expressing < 0.01))[0]),
    ]
    asked = [names[positions[2]].lower(), "NO-SUCH-GENE", names[positions[0]].swapcase(),
             names[positions[1]]]  # fmt: skip

    result = v2.result({"name": "GeneExpression", "genes": asked}, SYNTHETIC_EXPERIMENT)

    in_store_order = sorted(positions)
    assert set(result) == {"orderedGeneNames", "stats", "rawExpression", "cellIds"}
    assert result["orderedGeneNames"] == names[in_store_order].tolist()
    assert result["cellIds"] is None
    matrix = csc_of(result)
    assert matrix.shape == (synthetic.n_obs, 3)
    np.testing.assert_array_equal(matrix.toarray(), synthetic.X[:, in_store_order])
    assert_platform_stats(result["stats"], synthetic.X[:, in_store_order])


def test_cell_ids_are_the_rows_in_their_order_and_stats_stay_over_all_cells(v2, synthetic):
    # Cell 3 twice; 5000 is no cell of the store: an empty row.
    cell_ids = [4999, 3, 17, 3, 250, 0, 5000]
    body = {"name": "GeneExpression", "genes": ["CST3", "LYZ"], "downsampleSettings":
            {"cellIds": cell_ids}}  # fmt: skip

    result = v2.result(body, SYNTHETIC_EXPERIMENT)

    genes = [synthetic.var_names.get_loc(name) for name in result["orderedGeneNames"]]
    assert sorted(genes) == genes and len(genes) == 2
    assert result["cellIds"] == cell_ids
    expected = np.vstack([synthetic.X[np.ix_(cell_ids[:-1], genes)], np.zeros((1, 2))])
    np.testing.assert_array_equal(csc_of(result).toarray(), expected)
    assert_platform_stats(result["stats"], synthetic.X[:, genes])


def platform_buckets(selected: list[set], louvain: list[set], tracks: list[list[set]]) -> list:
    """The platform's `get_bucketed_heatmap_cells`, written out with sets, before sampling."""
    enabled = set().union(*selected) & set().union(*louvain)
    buckets = [enabled]
    for children in tracks:
        in_a_child = set().union(*children)
        split = []
        for bucket in buckets:
            split += [bucket & child for child in children] + [bucket - in_a_child]
        buckets = [bucket for bucket in split if bucket]
    return buckets


def assert_bucketed(cell_ids: list[int], buckets: list[set]) -> None:
    """Each bucket in turn: min(size, 1000) of its cells, drawn once each, ascending."""
    start = 0
    for bucket in buckets:
        size = min(len(bucket), 1000)
        drawn = cell_ids[start : start + size]
        assert set(drawn) <= bucket and drawn == sorted(set(drawn)), (start, size)
        start += size
    assert start == len(cell_ids)


def test_downsampled_rows_are_the_platforms_buckets(v2, synthetic, tracks, session_settings):
    hierarchies = {root["key"]: root for root in v2.cell_sets(SYNTHETIC_EXPERIMENT)}
    louvain = [set(child["cellIds"]) for child in hierarchies["louvain"]["children"]]
    sample = [set(child["cellIds"]) for child in hierarchies["sample"]["children"]]
    settings = {"selectedCellSet": "v2-ge-types", "groupedTracks": ["v2-ge-part", "sample"]}
    older = {"selectedPoints": [], "hiddenCellSets": []}

    result = v2.result(
        {"name": "GeneExpression", "genes": ["CST3"], "downsampleSettings": settings},
        SYNTHETIC_EXPERIMENT,
    )
    # The older UIs' body: `downsampled`, `scale` and two more settings, ignored.
    again = v2.result(
        {"name": "GeneExpression", "genes": ["CST3"], "downsampled": True, "scale": False,
         "downsampleSettings": settings | older},
        SYNTHETIC_EXPERIMENT,
    )  # fmt: skip
    crossed = v2.result(
        {"name": "GeneExpression", "genes": ["CST3"], "downsampleSettings":
         {"selectedCellSet": "v2-ge-part", "groupedTracks": ["v2-ge-types", "v2-ge-part"]}},
        SYNTHETIC_EXPERIMENT,
    )  # fmt: skip

    buckets = platform_buckets(tracks["v2-ge-types"], louvain, [tracks["v2-ge-part"], sample])
    # Cells 0-1499, 1400-2999, 3000 on: the first two drawn down to 1000 cells.
    assert [len(bucket) for bucket in buckets] == [1500, 1600, 2000]
    assert_bucketed(result["cellIds"], buckets)
    assert again["cellIds"] == result["cellIds"]
    gene = synthetic.var_names.get_loc("CST3")
    np.testing.assert_array_equal(
        csc_of(result).toarray()[:, 0], synthetic.X[result["cellIds"], gene]
    )
    crossed_buckets = platform_buckets(
        tracks["v2-ge-part"], louvain, [tracks["v2-ge-types"], tracks["v2-ge-part"]]
    )
    assert len(crossed_buckets) > 8
    assert_bucketed(crossed["cellIds"], crossed_buckets)
    assert csc_of(crossed).shape == (len(crossed["cellIds"]), 1)


def test_a_gene_expressed_nowhere_and_real_counts(v2, prepared_10x, session_settings):
    adata = scanpy_log_normalised(prepared_10x["v3_mtx_gz"]["store"], session_settings)
    dense = adata.X.toarray()
    nowhere = int(np.flatnonzero(~dense.any(axis=0))[0])
    widest = int(np.argmax((dense > 0).sum(axis=0)))
    names = adata.var["gene_names"].to_numpy()

    result = v2.result(
        {"name": "GeneExpression", "genes": [names[nowhere], names[widest]]}, TENX_EXPERIMENT
    )

    positions = sorted([nowhere, widest])
    assert result["orderedGeneNames"] == names[positions].tolist()
    np.testing.assert_array_equal(csc_of(result).toarray(), dense[:, positions])
    assert_platform_stats(result["stats"], dense[:, positions])
    assert result["stats"]["truncatedMax"][positions.index(nowhere)] == 0


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"genes": ["NOPE1", "nope2"]}, "R_WORKER_GENE_NOT_FOUND",
         "Gene(s): NOPE1, nope2 not found!"),
        ({"genes": "CST3"}, "INVALID_INPUT", "body.genes"),
        ({"genes": ["CST3"], "downsampleSettings": {"selectedCellSet": "louvain"}},
         "INVALID_INPUT", "body.downsampleSettings"),
        ({"genes": ["CST3"], "downsampleSettings": {"selectedCellSet": "no-such-class",
                                                   "groupedTracks": ["sample"]}},
         "INVALID_INPUT", "no-such-class"),
    ],
)  # fmt: skip
def test_errors(v2, body, code, message):
    error = v2.error({"name": "GeneExpression", **body}, SYNTHETIC_EXPERIMENT)
    assert error["errorCode"] == code
    assert message in error["userMessage"]
