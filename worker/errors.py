"""The worker's one error tree.

`WorkerError` and its subclasses are answered to the client, each with one error code of the
contract. The others are the worker's own conditions: a message nobody can be answered for, a
Dask cluster that does not match, an AWS call that failed after its retries.
"""


class WorkerError(Exception):
    """An error answered to the client with the contract's `code` and a human message."""

    code = "TaskFailed"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidRequest(WorkerError):
    code = "InvalidRequest"


class UnknownTask(WorkerError):
    code = "UnknownTask"


class ExperimentNotFound(WorkerError):
    code = "ExperimentNotFound"


class CellSetNotFound(WorkerError):
    code = "CellSetNotFound"


class SourceNotFound(WorkerError):
    code = "SourceNotFound"


class UnsupportedFormat(WorkerError):
    code = "UnsupportedFormat"


class TaskFailed(WorkerError):
    code = "TaskFailed"


class GeneNotFound(WorkerError):
    """None of the genes asked for exists (the v2 GeneExpression)."""

    code = "GeneNotFound"


class EmptyCellSet(WorkerError):
    """A selection of cells came out empty where the task needs some."""

    code = "EmptyCellSet"


class EmptyRootNodes(WorkerError):
    """A trajectory's pseudotime was asked from no root node."""

    code = "EmptyRootNodes"


class PoisonMessage(Exception):
    """A message that cannot be answered (not JSON, nobody to answer to): it goes to the
    dead-letter queue."""


class ClusterMismatch(RuntimeError):
    """The Dask cluster runs another build of the worker or other package versions."""


class TransportError(RuntimeError):
    """An AWS (or Redis) call failed after its retries; `service` and `operation` say which."""

    def __init__(self, service: str, operation: str, reason: str):
        super().__init__(f"{service} {operation} failed: {reason}")
        self.service = service
        self.operation = operation


class ConcurrentUpdate(RuntimeError):
    """A conditional write lost to another writer more times than it retries."""
