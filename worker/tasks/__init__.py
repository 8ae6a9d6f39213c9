"""The task registry: each contract's tasks by `body.name`."""

from worker.tasks import (
    batch_differential_expression,
    cell_cycle_scoring,
    cluster_cells,
    differential_expression,
    dot_plot,
    gene_expression,
    get_background_expressed_genes,
    get_doublet_score,
    get_embedding,
    get_expression_cell_sets,
    get_mitochondrial_content,
    get_n_genes,
    get_n_umis,
    get_normalized_expression,
    list_genes,
    marker_heatmap,
    prepare_experiment,
    sctype_annotate,
    trajectory_analysis,
)
from worker.tasks.base import Task

# The seed contract's tasks (CONTRACT.md).
TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        cluster_cells.TASK,
        differential_expression.TASK,
        gene_expression.TASK,
        get_doublet_score.TASK,
        get_embedding.TASK,
        get_mitochondrial_content.TASK,
        list_genes.TASK,
        marker_heatmap.TASK,
        prepare_experiment.TASK,
    )
}

# The Cellenics v2 protocol's tasks (CELLENICS-V2.md section 3).
V2_TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        batch_differential_expression.V2_TASK,
        cell_cycle_scoring.V2_TASK,
        cluster_cells.V2_TASK,
        differential_expression.V2_TASK,
        dot_plot.V2_TASK,
        gene_expression.V2_TASK,
        get_background_expressed_genes.V2_TASK,
        get_doublet_score.V2_TASK,
        get_embedding.V2_TASK,
        get_expression_cell_sets.V2_TASK,
        get_mitochondrial_content.V2_TASK,
        get_n_genes.V2_TASK,
        get_n_umis.V2_TASK,
        get_normalized_expression.V2_TASK,
        list_genes.V2_TASK,
        marker_heatmap.V2_TASK,
        sctype_annotate.V2_TASK,
        trajectory_analysis.PSEUDO_TIME_TASK,
        trajectory_analysis.STARTING_NODES_TASK,
    )
}
