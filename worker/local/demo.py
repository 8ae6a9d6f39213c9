"""`python -m worker demo`: every task of the contract sent through the real queue to the seeded
sample, a line or a few per answer, and pictures of the embeddings and the marker genes."""

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

from worker.local.client import ApiClient
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


# Step label of the embedding, picture file, title, axis label, whether clusters lie apart.
EMBEDDINGS = (
    ("GetEmbedding umap", "umap.png", "UMAP", "UMAP", True),
    ("GetEmbedding pca", "pca.png", "PCA", "PC", False),
    ("GetEmbedding tsne", "tsne.png", "t-SNE", "t-SNE", True),
)


def draw_pictures(results: dict[str, Any], clusters: list[Cluster], out_dir: Path) -> list[Path]:
    """The embeddings coloured by cluster and the marker heatmap, as PNG files in `out_dir`."""
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
        pictures = draw_pictures(results, louvain_clusters(settings), out_dir)
    print("pictures:", *pictures, sep="\n  ")
    return 0
