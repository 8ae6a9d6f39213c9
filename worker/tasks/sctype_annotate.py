"""ScTypeAnnotate (Cellenics v2): each Louvain cluster labelled with the ScType cell type whose
markers score highest (sc-type's `gene_sets_prepare` and `sctype_score` written out), as a new
cell set class appended through the platform's API. The marker database is read from
WORKER_SCTYPE_DB (upstream downloads it from GitHub at run time)."""

import io
import uuid
from typing import Literal

import numpy as np

from worker.compute.arithmetic import SCALE_MAX_VALUE
from worker.errors import TaskFailed
from worker.store.cell_sets import PALETTE
from worker.store.locations import filesystem
from worker.tasks.base import Task, TaskContext, V2TaskBody

Tissue = Literal["Immune system", "Pancreas", "Liver", "Eye", "Kidney", "Brain", "Lung",
                 "Adrenal", "Heart", "Intestine", "Muscle", "Placenta", "Spleen", "Stomach",
                 "Thymus"]  # fmt: skip


class ScTypeAnnotateBody(V2TaskBody):
    name: Literal["ScTypeAnnotate"]
    species: Literal["human", "mouse"]
    tissue: Tissue


def marker_sets(xlsx: bytes, tissue: str) -> tuple[dict[str, set], dict[str, set]]:
    """sc-type's gene_sets_prepare without HGNChelper: per cell type of the tissue, its positive
    (`geneSymbolmore1`) and negative (`geneSymbolmore2`) markers, upper-cased."""
    from openpyxl import load_workbook

    rows = load_workbook(io.BytesIO(xlsx), read_only=True).active.iter_rows(values_only=True)
    header = [str(name) for name in next(rows)]
    positive, negative = {}, {}
    for row in rows:
        record = dict(zip(header, row, strict=False))
        if record.get("tissueType") != tissue:
            continue

        def genes(text) -> set:
            names = (name.strip().upper() for name in str(text or "").split(","))
            return {name for name in names if name and name != "NA"}

        positive[str(record["cellName"])] = genes(record.get("geneSymbolmore1"))
        negative[str(record["cellName"])] = genes(record.get("geneSymbolmore2"))
    return positive, negative


def sctype_scores(z: np.ndarray, genes: list[str], positive: dict, negative: dict) -> tuple:
    """sc-type's sctype_score on z-scores (genes x cells): marker sensitivity-weighted sums,
    per cell type (rows) and cell; cell types without a positive marker in the data dropped."""
    index = {gene: row for row, gene in enumerate(genes)}
    n_types = len(positive)
    uses = {}
    for markers in positive.values():
        for gene in markers:
            uses[gene] = uses.get(gene, 0) + 1
    weight = np.ones(len(genes))
    for gene, count in uses.items():
        if gene in index:
            weight[index[gene]] = (n_types - count) / (n_types - 1) if n_types > 1 else 1.0
    weighted = z * weight[:, None]
    names, rows = [], []
    for name, markers in positive.items():
        present = [index[gene] for gene in sorted(markers) if gene in index]
        if not present:
            continue
        absent = [index[gene] for gene in sorted(negative.get(name, ())) if gene in index]
        score = weighted[present].sum(axis=0) / np.sqrt(len(present))
        if absent:
            score = score - weighted[absent].sum(axis=0) / np.sqrt(len(absent))
        names.append(name)
        rows.append(score)
    return names, np.array(rows)


def sctype_annotate(context: TaskContext, body: ScTypeAnnotateBody) -> dict:
    if context.sctype_db is None:
        raise TaskFailed(
            "ScTypeAnnotate needs the ScType marker database: set WORKER_SCTYPE_DB to the s3:// "
            "URL of a copy of sc-type's ScTypeDB_full.xlsx"
        )
    context.report_progress(0, 3, "Reading the ScType marker database")
    fs, path = filesystem(context.sctype_db, context.aws)
    try:
        positive, negative = marker_sets(fs.cat_file(path), body.tissue)
    except FileNotFoundError:
        raise TaskFailed(f"the ScType marker database {context.sctype_db} does not exist") from None
    store = context.store()
    symbols = np.char.upper(store.var["gene_names"].to_numpy().astype(str))
    markers = set().union(*positive.values(), *negative.values()) if positive else set()
    # Upstream scores Seurat's scale.data: z-scores of the variable genes.
    wanted = np.flatnonzero(np.isin(symbols, list(markers)) & store.var["highly_variable"])
    _, first = np.unique(symbols[wanted], return_index=True)
    wanted = wanted[np.sort(first)]
    context.report_progress(1, 3, "Scoring the cell types")
    values = store.log_normalised(wanted).toarray().astype(np.float64).T
    mean = values.mean(axis=1, keepdims=True)
    std = values.std(axis=1, ddof=1, keepdims=True)
    z = np.minimum((values - mean) / np.where(std > 0, std, 1), SCALE_MAX_VALUE)
    names, scores = sctype_scores(z, list(symbols[wanted]), positive, negative)
    louvain = context.cell_sets().hierarchy("louvain")
    label = np.full(store.n_cells, "Unknown", dtype=object)
    for cluster in louvain["children"]:
        cells = np.asarray(cluster.get("cellIds") or [], dtype=np.int64)
        if len(names) == 0 or len(cells) == 0:
            continue
        totals = scores[:, cells].sum(axis=1)
        best = int(np.argmax(totals))
        label[cells] = names[best] if totals[best] >= len(cells) / 4 else "Unknown"
    in_louvain = np.isin(
        np.arange(store.n_cells), context.cell_sets().ids("louvain", store.n_cells)
    )
    kinds, first = np.unique(label[in_louvain], return_index=True)
    order = kinds[np.argsort(first)]
    hierarchy = {
        "key": str(uuid.uuid1()),
        "name": f"ScType-{body.tissue}-{body.species}",
        "rootNode": True,
        "type": "cellSets",
        "children": [
            {
                "key": str(uuid.uuid1()),
                "name": kind,
                "rootNode": False,
                "type": "cellSets",
                "color": PALETTE[index % len(PALETTE)],
                "cellIds": np.flatnonzero((label == kind) & in_louvain).tolist(),
            }
            for index, kind in enumerate(order)
        ],
    }
    context.report_progress(2, 3, "Writing the cell sets")
    context.change_cell_sets(
        [
            {
                "$match": {
                    "query": f'$[?(@.key == "{hierarchy["key"]}")]',
                    "value": {"$remove": True},
                }
            },
            {"$append": hierarchy},
        ]
    )
    return hierarchy


V2_TASK = Task(
    name="ScTypeAnnotate", body=ScTypeAnnotateBody, cacheable=False, compute=sctype_annotate
)
