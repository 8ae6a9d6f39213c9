"""`python -m worker demo`: every task of both contracts (the seed's, then Cellenics v2's) sent
through the real queue to the seeded sample, a line or a few per answer, and pictures of the
embeddings, the marker genes and a trajectory."""

import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from worker.local.client import ApiClient, V2Client
from worker.local.sample import SAMPLE_BUCKET, SAMPLE_EXPERIMENT, SAMPLE_PREFIX
from worker.service.app import protocols, started
from worker.service.health import HealthServer
from worker.service.loop import QueueWorker
from worker.settings import Settings
from worker.store.cell_sets import CellSets, CellSetsLocation
from worker.transport.queue import WorkQueue

ANSWER_TIMEOUT_S = 600
MARKER_GENES = ["CST3", "TGFB1", "NKG7", "MS4A1"]


def _min_mean_max(values: list) -> str:
    per_cell = np.asarray(values, dtype=float)
    return (
        f"per cell min {np.nanmin(per_cell):.3g}, mean {np.nanmean(per_cell):.3g}, "
        f"max {np.nanmax(per_cell):.3g}"
    )


def _prepared(result: dict) -> str:
    return (
        f"{result['cells']} cells x {result['genes']} genes, {result['nnz']} nonzeros, "
        f"{result['samples']} sample(s), cell sets {', '.join(result['cellSets'])}"
    )


def _genes(result: dict) -> str:
    top = ", ".join(f"{row['gene_names']} ({row['dispersions']:.2f})" for row in result["rows"])
    return f"top {len(result['rows'])} of {result['total']} genes by dispersion: {top}"


def _expression(result: dict) -> str:
    means = ", ".join(f"{gene['geneName']} {gene['mean']:.2f}" for gene in result["data"])
    return f"{len(result['cells'])} cells; mean log-normalised expression: {means}"


def _differential(result: dict) -> str:
    rows = [
        f"    {row['gene_names']:<10} logFC {row['logFC']:6.2f}  adjusted p {row['p_val_adj']:.3g}"
        for row in result["rows"]
    ]
    return "\n".join([f"top {len(rows)} of {result['total']} genes:", *rows])


def _clusters(result: dict) -> str:
    sizes = ", ".join(f"{child['key']} {len(child['cellIds'])}" for child in result["children"])
    return f"{len(result['children'])} clusters of sizes {sizes}"


def _embedding(result: list) -> str:
    return f"{len(result)} cells x {len(result[0]) if result else 0} coordinates"


def _heatmap(result: dict) -> str:
    genes = ", ".join(result["order"])
    return f"{len(result['order'])} genes x {len(result['cellOrder'])} cells: {genes}"


@dataclass(frozen=True)
class Step:
    label: str
    body: dict
    describe: Callable[[Any], str]


STEPS = (
    Step(
        "PrepareExperiment",
        {
            "name": "PrepareExperiment",
            "sourceBucket": SAMPLE_BUCKET,
            "sourceMatrixPath": SAMPLE_PREFIX,
        },
        _prepared,
    ),
    Step(
        "ListGenes",
        {
            "name": "ListGenes",
            "selectFields": ["gene_names", "dispersions"],
            "orderBy": "dispersions",
            "orderDirection": "desc",
            "limit": 5,
        },
        _genes,
    ),
    Step(
        "GeneExpression louvain-0",
        {"name": "GeneExpression", "genes": MARKER_GENES, "cellSets": ["louvain-0"]},
        _expression,
    ),
    Step(
        "GeneExpression all cells", {"name": "GeneExpression", "genes": MARKER_GENES}, _expression
    ),
    Step(
        "DifferentialExpression louvain-0 vs rest",
        {
            "name": "DifferentialExpression",
            "cellSet": "louvain-0",
            "compareWith": "rest",
            "maxNum": 5,
        },
        _differential,
    ),
    Step(
        "ClusterCells leiden",
        {
            "name": "ClusterCells",
            "type": "leiden",
            "cellSetKey": "leiden",
            "cellSetName": "Leiden clusters",
        },
        _clusters,
    ),
    Step("GetEmbedding pca", {"name": "GetEmbedding", "type": "pca"}, _embedding),
    Step("GetEmbedding umap", {"name": "GetEmbedding", "type": "umap"}, _embedding),
    Step("GetEmbedding tsne", {"name": "GetEmbedding", "type": "tsne"}, _embedding),
    Step("GetMitochondrialContent", {"name": "GetMitochondrialContent"}, _min_mean_max),
    Step("GetDoubletScore", {"name": "GetDoubletScore"}, _min_mean_max),
    Step(
        "MarkerHeatmap",
        {"name": "MarkerHeatmap", "nGenes": 5, "cellSetKey": "louvain", "maxCells": 1000},
        _heatmap,
    ),
)


def run_steps(client: ApiClient) -> tuple[dict[str, Any], list[str]]:
    """Each step's result by label, and a description of each error answered."""
    results, failures = {}, []
    for step in STEPS:
        sent = time.monotonic()
        response = client.ask(step.body, SAMPLE_EXPERIMENT, timeout_s=ANSWER_TIMEOUT_S)
        seconds = time.monotonic() - sent
        result = client.result(response)
        if response["response"]["error"]:
            error = result["error"]
            summary = f"ERROR {error['code']}: {error['message']}"
            failures.append(f"{step.label}: {summary}\n{error.get('traceback', '')}".rstrip())
        else:
            results[step.label] = result
            summary = step.describe(result)
        print(f"{step.label:<40} {seconds:6.2f}s  {summary}", flush=True)
    return results, failures


@dataclass(frozen=True)
class V2Step:
    """A v2 request: its body may depend on what earlier v2 requests answered (by label)."""

    label: str
    body: Callable[[dict[str, Any]], dict]
    describe: Callable[[Any], str]
    request_props: dict | None = None
    # Results the browser saves as files (not JSON).
    as_file: bool = False


UMAP_SETTINGS = {"minimumDistance": 0.3, "distanceMetric": "euclidean"}
# The trajectory starts where naive T cells are: among the cells expressing CCR7 most.
ROOT_GENE = "CCR7"
V2_GENES = [*MARKER_GENES, ROOT_GENE]
DE_PAGE = {"orderBy": "p_val_adj", "orderDirection": "ASC", "offset": 0, "limit": 5}


def _v2_expression(result: dict) -> str:
    size = result["rawExpression"]["size"]
    return (
        f"{size[0]} cells x {size[1]} genes as a sparse matrix of "
        f"{len(result['rawExpression']['values'])} values; colour scale tops "
        + ", ".join(
            f"{gene} {top:.2f}"
            for gene, top in zip(
                result["orderedGeneNames"], result["stats"]["truncatedMax"], strict=True
            )
        )
    )


def _v2_table(result: dict) -> str:
    genes = result["data"]["gene_names"]
    return f"{len(genes)} of {result['total']} rows: {', '.join(genes)}"


def _v2_trajectory_nodes(result: dict) -> str:
    edges = sum(len(neighbours) for neighbours in result["connectedNodes"])
    return f"a principal graph of {len(result['x'])} nodes and {edges} edges"


def _v2_pseudotime(result: dict) -> str:
    times = np.asarray([np.nan if time is None else time for time in result["pseudotime"]])
    return f"pseudotime of {np.isfinite(times).sum()} cells, up to {np.nanmax(times):.3g}"


def root_node(results: dict[str, Any]) -> int:
    """The graph node nearest the cells that express ROOT_GENE most (its top 5%)."""
    expression = results["v2 GeneExpression"]["result"]
    matrix = expression["rawExpression"]
    gene = expression["orderedGeneNames"].index(ROOT_GENE)
    values = np.zeros(matrix["size"][0])
    span = slice(matrix["ptr"][gene], matrix["ptr"][gene + 1])
    values[matrix["index"][span]] = matrix["values"][span]
    points = np.asarray(results["v2 GetEmbedding umap"]["result"], dtype=float)
    start = points[values >= np.quantile(values, 0.95)].mean(axis=0)
    nodes = results["v2 GetTrajectoryAnalysisStartingNodes"]["result"]
    distances = np.hypot(np.asarray(nodes["x"]) - start[0], np.asarray(nodes["y"]) - start[1])
    return int(np.argmin(distances))


def _trajectory_body(name: str, results: dict[str, Any], **fields) -> dict:
    return {
        "name": name,
        "embedding": {
            "ETag": results["v2 GetEmbedding umap"]["etag"],
            "method": "umap",
            "methodSettings": UMAP_SETTINGS,
        },
        "clustering": {"method": "louvain", "resolution": 0.8},
        "cellSets": ["louvain"],
        **fields,
    }


V2_STEPS = (
    V2Step(
        "v2 GeneExpression",
        lambda _: {"name": "GeneExpression", "genes": V2_GENES},
        _v2_expression,
    ),
    V2Step(
        "v2 ListGenes",
        lambda _: {
            "name": "ListGenes",
            "selectFields": ["gene_names", "dispersions"],
            "orderBy": "dispersions",
            "orderDirection": "DESC",
            "offset": 0,
            "limit": 5,
        },
        lambda result: (
            f"top {len(result['gene_names'])} of {result['total']}: "
            + ", ".join(result["gene_names"])
        ),
    ),
    V2Step("v2 GetNGenes", lambda _: {"name": "GetNGenes"}, _min_mean_max),
    V2Step("v2 GetNUmis", lambda _: {"name": "GetNUmis"}, _min_mean_max),
    V2Step(
        "v2 GetMitochondrialContent", lambda _: {"name": "GetMitochondrialContent"}, _min_mean_max
    ),
    V2Step("v2 GetDoubletScore", lambda _: {"name": "GetDoubletScore"}, _min_mean_max),
    V2Step(
        "v2 GetEmbedding umap",
        lambda _: {"name": "GetEmbedding", "type": "umap", "config": UMAP_SETTINGS},
        _embedding,
    ),
    V2Step(
        "v2 DifferentialExpression",
        lambda _: {
            "name": "DifferentialExpression",
            "cellSet": "louvain-0",
            "compareWith": "rest",
            "basis": "all",
            "comparisonType": "within",
        },
        _v2_table,
        request_props={"pagination": DE_PAGE},
    ),
    V2Step(
        "v2 BatchDifferentialExpression",
        lambda _: {
            "name": "BatchDifferentialExpression",
            "basis": ["all"],
            "cellSet": ["louvain-0", "louvain-1"],
            "compareWith": "background",
            "comparisonType": "within",
        },
        lambda result: ", ".join(f"{pair['total']} genes" for pair in result),
    ),
    V2Step(
        "v2 GetBackgroundExpressedGenes",
        lambda _: {
            "name": "GetBackgroundExpressedGenes",
            "cellSet": "louvain-0",
            "compareWith": "rest",
            "basis": "all",
            "comparisonType": "within",
        },
        lambda result: f"{len(result['genes'])} genes expressed in either group",
    ),
    V2Step(
        "v2 MarkerHeatmap",
        lambda _: {"name": "MarkerHeatmap", "nGenes": 3, "selectedCellSet": "louvain"},
        lambda result: ", ".join(result["orderedGeneNames"]),
    ),
    V2Step(
        "v2 DotPlot",
        lambda _: {
            "name": "DotPlot",
            "useMarkerGenes": False,
            "numberOfMarkers": 3,
            "customGenesList": MARKER_GENES,
            "groupBy": "louvain",
            "filterBy": {"group": "All", "key": "All"},
        },
        lambda result: f"{len(result['cellSetsNames'])} groups x {len(result['geneNames'])} genes",
    ),
    V2Step(
        "v2 GetExpressionCellSets",
        lambda _: {
            "name": "GetExpressionCellSets",
            "genesConfig": [
                {"geneName": "CST3", "comparisonType": "greaterThan", "thresholdValue": 1}
            ],
        },
        lambda result: "a new custom cell set, announced to the browsers",
        request_props={"broadcast": True},
    ),
    V2Step(
        "v2 CellCycleScoring",
        lambda _: {"name": "CellCycleScoring"},
        lambda result: "the Phase cell sets, announced to the browsers",
    ),
    V2Step(
        "v2 GetNormalizedExpression",
        lambda _: {
            "name": "GetNormalizedExpression",
            "subsetBy": {
                "louvain": ["louvain-0"],
                "sample": [],
                "metadata": [],
                "customCellSets": [],
            },
        },
        lambda result: f"{len(result)} bytes of gzipped CSV",
        as_file=True,
    ),
    V2Step(
        "v2 GetTrajectoryAnalysisStartingNodes",
        lambda results: _trajectory_body("GetTrajectoryAnalysisStartingNodes", results),
        _v2_trajectory_nodes,
    ),
    V2Step(
        "v2 GetTrajectoryAnalysisPseudoTime",
        lambda results: _trajectory_body(
            "GetTrajectoryAnalysisPseudoTime", results, rootNodes=[root_node(results)]
        ),
        _v2_pseudotime,
    ),
    V2Step(
        "v2 ClusterCells",
        lambda _: {
            "name": "ClusterCells",
            "type": "louvain",
            "cellSetKey": "louvain",
            "cellSetName": "Louvain clusters",
            "config": {"resolution": 1.0},
        },
        lambda result: "the louvain cell sets replaced, announced to the browsers",
        request_props={"broadcast": True},
    ),
)


def run_v2_steps(client: V2Client) -> tuple[dict[str, Any], list[str]]:
    """Each v2 step's result by label (with the ETag it was asked under), and a description of
    each error answered."""
    results: dict[str, Any] = {}
    failures = []
    for step in V2_STEPS:
        message = client.message(
            step.body(results), SAMPLE_EXPERIMENT, request_props=step.request_props
        )
        sent = time.monotonic()
        client.send(message)
        answer = client.answer(message, ANSWER_TIMEOUT_S, as_file=step.as_file)
        seconds = time.monotonic() - sent
        response = (answer.notification or {}).get("response", {})
        if response.get("error"):
            summary = f"ERROR {response['errorCode']}: {response['userMessage']}"
            failures.append(f"{step.label}: {summary}")
        else:
            results[step.label] = {"etag": message["ETag"], "result": answer.result}
            summary = step.describe(answer.result)
        print(f"{step.label:<40} {seconds:6.2f}s  {summary}", flush=True)
    return results, failures


@dataclass(frozen=True)
class Cluster:
    name: str
    color: str
    cell_ids: np.ndarray


def louvain_clusters(settings: Settings) -> list[Cluster]:
    """The sample's Louvain clusters as stored in its cell sets."""
    location = CellSetsLocation(settings.cell_sets_bucket, SAMPLE_EXPERIMENT, settings.aws)
    louvain = CellSets.read(location).hierarchy("louvain")
    return [
        Cluster(child["name"], child["color"], np.asarray(child["cellIds"], dtype=np.int64))
        for child in louvain["children"]
    ]


def plot_embedding(
    coordinates: list,
    clusters: list[Cluster],
    *,
    title: str,
    axis: str,
    numbered: bool,
    path: Path,
) -> None:
    """Cells coloured by cluster; `numbered` writes each cluster's number above it, which reads
    well only where clusters lie apart."""
    points = np.asarray(coordinates, dtype=float)
    figure = Figure(figsize=(8, 6.5), layout="constrained")
    axes = figure.add_subplot()
    for cluster in clusters:
        cluster_points = points[cluster.cell_ids]
        axes.scatter(
            *cluster_points.T,
            s=4,
            color=cluster.color,
            label=f"{cluster.name} ({len(cluster.cell_ids)})",
        )
        if numbered:
            # Above the cluster rather than on it, so that a small cluster stays visible.
            x, y = np.nanmedian(cluster_points[:, 0]), np.nanpercentile(cluster_points[:, 1], 95)
            axes.annotate(
                cluster.name.removeprefix("Cluster "),
                (x, y),
                xytext=(0, 6),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=11,
                fontweight="bold",
                bbox={"boxstyle": "circle", "facecolor": "white", "edgecolor": cluster.color},
            )
    axes.set(title=title, xlabel=f"{axis} 1", ylabel=f"{axis} 2", xticks=[], yticks=[])
    figure.legend(title="Louvain cluster (cells)", loc="outside right upper", markerscale=3)
    figure.savefig(path, dpi=120)


def plot_heatmap(heatmap: dict, clusters: list[Cluster], path: Path) -> None:
    """Marker genes x cells, each gene scaled to its own range, cells grouped by cluster."""
    genes, cell_order = heatmap["order"], np.asarray(heatmap["cellOrder"], dtype=np.int64)
    expression = np.array([heatmap["data"][gene]["expression"] for gene in genes], dtype=float)
    lowest = np.nanmin(expression, axis=1, keepdims=True)
    spread = np.nanmax(expression, axis=1, keepdims=True) - lowest
    scaled = (expression - lowest) / np.where(spread > 0, spread, 1.0)
    cluster_of_cell = np.zeros(sum(len(cluster.cell_ids) for cluster in clusters), dtype=np.int64)
    for index, cluster in enumerate(clusters):
        cluster_of_cell[cluster.cell_ids] = index
    cell_clusters = cluster_of_cell[cell_order]
    colour_strip = np.array([[to_rgb(clusters[index].color) for index in cell_clusters]])

    figure = Figure(figsize=(10, 1.5 + 0.22 * len(genes)), layout="constrained")
    strip_axes, heat_axes = figure.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [1, len(genes) / 1.5]}
    )
    strip_axes.imshow(colour_strip, aspect="auto", interpolation="nearest")
    strip_axes.set(
        yticks=[], title=f"Top marker genes of each Louvain cluster ({len(cell_order)} cells)"
    )
    image = heat_axes.imshow(scaled, aspect="auto", interpolation="nearest", cmap="viridis")
    heat_axes.set_yticks(range(len(genes)), genes, fontsize=8)
    heat_axes.set(xticks=[], xlabel="cells, grouped by Louvain cluster")
    starts = np.flatnonzero(np.diff(cell_clusters, prepend=-1))
    ends = np.append(starts[1:], len(cell_clusters))
    for start, end in zip(starts, ends, strict=True):
        strip_axes.text(
            (start + end - 1) / 2,
            0,
            str(cell_clusters[start]),
            ha="center",
            va="center",
            fontsize=9,
            fontweight="bold",
            color="white",
        )
        heat_axes.axvline(start - 0.5, color="white", linewidth=1)
    figure.colorbar(image, ax=heat_axes, label="expression, scaled per gene", shrink=0.8)
    figure.savefig(path, dpi=120)


def plot_trajectory(umap: list, nodes: dict, pseudotime: list, root: int, path: Path) -> None:
    """Cells on the UMAP coloured by pseudotime, and the principal graph through them."""
    points = np.asarray(umap, dtype=float)
    times = np.asarray([np.nan if time is None else time for time in pseudotime], dtype=float)
    figure = Figure(figsize=(8, 6.5), layout="constrained")
    axes = figure.add_subplot()
    unordered = ~np.isfinite(times)
    axes.scatter(*points[unordered].T, s=3, color="#d0d0d0", label="no pseudotime")
    ordered = axes.scatter(
        *points[~unordered].T, s=3, c=times[~unordered], cmap="viridis", label="cells"
    )
    node_x, node_y = np.asarray(nodes["x"]), np.asarray(nodes["y"])
    for node, neighbours in enumerate(nodes["connectedNodes"]):
        for neighbour in neighbours:
            axes.plot(
                [node_x[node], node_x[neighbour]],
                [node_y[node], node_y[neighbour]],
                color="black",
                linewidth=1.2,
            )
    axes.scatter(node_x, node_y, s=4, color="black", zorder=3, label="graph nodes")
    axes.scatter(
        node_x[root], node_y[root], s=80, color="red", zorder=4, label=f"root (node {root})"
    )
    axes.set(
        title="Trajectory: pseudotime along the principal graph",
        xticks=[],
        yticks=[],
        xlabel="UMAP 1",
        ylabel="UMAP 2",
    )
    figure.colorbar(ordered, ax=axes, label="pseudotime", shrink=0.8)
    axes.legend(loc="best", markerscale=2, fontsize=8)
    figure.savefig(path, dpi=120)


# Step label of the embedding, picture file, title, axis label, whether clusters lie apart.
EMBEDDINGS = (
    ("GetEmbedding umap", "umap.png", "UMAP", "UMAP", True),
    ("GetEmbedding pca", "pca.png", "PCA", "PC", False),
    ("GetEmbedding tsne", "tsne.png", "t-SNE", "t-SNE", True),
)


def draw_pictures(
    results: dict[str, Any], v2_results: dict[str, Any], clusters: list[Cluster], out_dir: Path
) -> list[Path]:
    """The embeddings coloured by cluster, the marker heatmap and the trajectory, as PNG files
    in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n_cells = sum(len(cluster.cell_ids) for cluster in clusters)
    pictures = []
    for label, file_name, name, axis, numbered in EMBEDDINGS:
        pictures.append(out_dir / file_name)
        plot_embedding(
            results[label],
            clusters,
            title=f"{name} of {n_cells} cells, coloured by Louvain cluster",
            axis=axis,
            numbered=numbered,
            path=pictures[-1],
        )
    pictures.append(out_dir / "marker_heatmap.png")
    plot_heatmap(results["MarkerHeatmap"], clusters, pictures[-1])
    pictures.append(out_dir / "trajectory.png")
    plot_trajectory(
        v2_results["v2 GetEmbedding umap"]["result"],
        v2_results["v2 GetTrajectoryAnalysisStartingNodes"]["result"],
        v2_results["v2 GetTrajectoryAnalysisPseudoTime"]["result"]["pseudotime"],
        root_node(v2_results),
        pictures[-1],
    )
    return pictures


def run_demo(settings: Settings, out_dir: Path) -> int:
    """Start the local defaults, send every task once for the sample and draw pictures of the
    answers; 0 if every task answered without an error."""
    if settings.is_deployed:
        print(f"the demo runs on the local emulator, not in {settings.cluster_env}")
        return 2
    # A short poll lets the worker stop within a second once the demo is done.
    settings = settings.model_copy(update={"seed_sample": True, "poll_wait_s": 1})
    # The demo's own first request prepares the sample, through the queue.
    with started(settings, prepare_sample=False) as dask, ExitStack() as resources:
        health = HealthServer(host="127.0.0.1", port=0, stale_after_s=60)
        queue = WorkQueue(settings)
        served = protocols(settings, resources)
        worker = QueueWorker(settings, dask, queue, served, health)
        serving = threading.Thread(target=worker.run, name="demo-worker")
        serving.start()
        try:
            print(
                f"sending every task for experiment {SAMPLE_EXPERIMENT} to {queue.url}", flush=True
            )
            results, failures = run_steps(ApiClient(settings))
            print("the same sample through the platform's current protocol, Cellenics v2:")
            v2_client = V2Client(settings)
            resources.callback(v2_client.close)
            v2_results, v2_failures = run_v2_steps(v2_client)
            failures += v2_failures
        finally:
            worker.stop()
            serving.join()
        if failures:
            print(
                f"{len(failures)} task(s) answered an error:",
                *failures,
                sep="\n  ",
                file=sys.stderr,
            )
            return 1
        pictures = draw_pictures(results, v2_results, louvain_clusters(settings), out_dir)
    print("pictures:", *pictures, sep="\n  ")
    return 0
