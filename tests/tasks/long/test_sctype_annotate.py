"""ScTypeAnnotate through the v2 path with a small marker table written by the test: each
Louvain cluster labelled with the type of its cells' markers, the class appended through the
platform's API; without a configured database, an error saying what is missing."""

import io

import numpy as np
import pytest
from openpyxl import Workbook

from tests.tasks.long.conftest import LONG_EXPERIMENT, SCTYPE_DB, TYPE_A_MARKERS, TYPE_B_MARKERS
from worker.errors import TaskFailed
from worker.store.cell_sets import CellSets, CellSetsLocation
from worker.store.locations import filesystem
from worker.tasks.base import TaskContext
from worker.tasks.sctype_annotate import ScTypeAnnotateBody, sctype_annotate


@pytest.fixture(scope="module")
def marker_database(long_settings):
    book = Workbook()
    sheet = book.active
    sheet.append(["tissueType", "cellName", "geneSymbolmore1", "geneSymbolmore2", "shortName"])
    sheet.append(["Immune system", "Alpha cells", ",".join(TYPE_A_MARKERS[:8]).lower(), "NA", "A"])
    sheet.append(["Immune system", "Beta cells", " , ".join(TYPE_B_MARKERS[:8]),
                  ",".join(TYPE_A_MARKERS[8:]), "B"])  # fmt: skip
    sheet.append(["Liver", "Gamma cells", ",".join(TYPE_A_MARKERS), "", "G"])
    buffer = io.BytesIO()
    book.save(buffer)
    fs, path = filesystem(SCTYPE_DB, long_settings.aws)
    fs.pipe_file(path, buffer.getvalue())


def test_clusters_are_labelled_by_their_markers(
    v2, long_settings, platform_api, long_dataset, marker_database
):
    body = {"name": "ScTypeAnnotate", "species": "human", "tissue": "Immune system"}
    message = v2.message(body, LONG_EXPERIMENT, request_props={"broadcast": True})
    v2.send(message)
    answer = v2.answer(message, timeout_s=180)
    assert answer.notification["response"]["error"] is False
    [patch] = [p for p in platform_api.patches if "ScType-Immune system-human" in str(p.operations)]
    remove, append = patch.operations
    annotation = append["$append"]
    assert remove["$match"]["query"] == f'$[?(@.key == "{annotation["key"]}")]'
    assert annotation["name"] == "ScType-Immune system-human" and annotation["rootNode"] is True
    location = CellSetsLocation(long_settings.cell_sets_bucket, LONG_EXPERIMENT, long_settings.aws)
    cell_sets = CellSets.read(location)
    assert cell_sets.hierarchies[-1] == annotation
    truth = {"A": "Alpha cells", "B": "Beta cells"}
    for cluster in cell_sets.hierarchy("louvain")["children"]:
        cells = np.asarray(cluster["cellIds"])
        types, counts = np.unique(long_dataset.cell_type[cells], return_counts=True)
        majority = truth[types[np.argmax(counts)]]
        [child] = [c for c in annotation["children"] if cells[0] in c["cellIds"]]
        assert child["name"] == majority
        assert set(cells) <= set(child["cellIds"])


def test_without_a_database_the_error_says_what_is_missing(long_settings):
    context = TaskContext.for_experiment(
        long_settings.model_copy(update={"sctype_db": None}), LONG_EXPERIMENT
    )
    body = ScTypeAnnotateBody(name="ScTypeAnnotate", species="mouse", tissue="Liver")
    with pytest.raises(TaskFailed, match="WORKER_SCTYPE_DB"):
        sctype_annotate(context, body)
