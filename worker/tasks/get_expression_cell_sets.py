"""GetExpressionCellSets (Cellenics v2): a new custom cell set of the cells whose log-normalised
values pass every given threshold, added to the `scratchpad` class."""

import random
import uuid
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from worker.errors import EmptyCellSet
from worker.store.cell_sets import PALETTE
from worker.store.gene_index import positions_by_name
from worker.tasks.base import Task, TaskContext, V2TaskBody

SCRATCHPAD = "scratchpad"
# The class as the platform's UI names it, for an experiment whose cell sets lack it.
SCRATCHPAD_NAME = "Custom cell sets"
COMPARISONS = {"greaterThan": ">", "lessThan": "<"}


class GeneThreshold(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, frozen=True)
    geneName: str
    comparisonType: Literal["greaterThan", "lessThan"]
    thresholdValue: float


class GetExpressionCellSetsBody(V2TaskBody):
    name: Literal["GetExpressionCellSets"]
    genesConfig: list[GeneThreshold]


def r_number(value: float) -> str:
    """`value` as R's `as.character` writes a double: 15 significant digits, no trailing
    zeros, scientific notation only where it is shorter (`0.5`, `1`, `1e-04`, `1e+05`)."""
    if value == 0:
        return "0"
    mantissa, exponent_text = f"{value:.14e}".split("e")
    digits = mantissa.replace("-", "").replace(".", "").rstrip("0")
    exponent = int(exponent_text)
    scientific = (
        f"{'-' if value < 0 else ''}{digits[0]}{'.' + digits[1:] if len(digits) > 1 else ''}"
        f"e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    )
    # As R's sprintf("%.*f"), with the decimals the significant digits need.
    fixed = f"{value:.{max(0, len(digits) - exponent - 1)}f}"
    return fixed if len(fixed) <= len(scientific) else scientific


def get_expression_cell_sets(
    context: TaskContext, body: GetExpressionCellSetsBody
) -> dict[str, Any]:
    store = context.store()
    lookup = positions_by_name(store)
    if any(threshold.geneName not in lookup for threshold in body.genesConfig):
        raise EmptyCellSet("Requested ExpressionCellSet with gene name(s) that are not present.")
    positions = np.array([lookup[threshold.geneName] for threshold in body.genesConfig], int)
    log_values = store.log_normalised(positions)
    keep = np.ones(store.n_cells, dtype=bool)
    for column, threshold in enumerate(body.genesConfig):
        values = np.zeros(store.n_cells, dtype=np.float32)
        start, stop = log_values.indptr[column], log_values.indptr[column + 1]
        values[log_values.indices[start:stop]] = log_values.data[start:stop]
        if threshold.comparisonType == "greaterThan":
            keep &= values > threshold.thresholdValue
        else:
            keep &= values < threshold.thresholdValue
    cell_ids = np.flatnonzero(keep)
    if not len(cell_ids):
        raise EmptyCellSet("No cells match requested filters.")
    cell_set = {
        "key": str(uuid.uuid1()),
        "name": ", ".join(
            f"{threshold.geneName}{COMPARISONS[threshold.comparisonType]}"
            f"{r_number(threshold.thresholdValue)}"
            for threshold in body.genesConfig
        ),
        "rootNode": False,
        "color": random.choice(PALETTE),
        "cellIds": cell_ids.tolist(),
    }
    if any(root.get("key") == SCRATCHPAD for root in context.cell_sets().hierarchies):
        insert = {"children": [{"$insert": {"index": "-", "value": cell_set}}]}
        context.change_cell_sets(
            [{"$match": {"query": f'$[?(@.key == "{SCRATCHPAD}")]', "value": insert}}]
        )
    else:
        scratchpad = {
            "key": SCRATCHPAD,
            "name": SCRATCHPAD_NAME,
            "rootNode": True,
            "type": "cellSets",
            "children": [cell_set],
        }
        context.change_cell_sets([{"$append": scratchpad}])
    return cell_set


V2_TASK = Task(
    name="GetExpressionCellSets",
    body=GetExpressionCellSetsBody,
    cacheable=False,
    compute=get_expression_cell_sets,
)
