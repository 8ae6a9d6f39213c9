"""The worker's error tree: each class carries one error code of the contract."""


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


ERRORS_BY_CODE = {
    error.code: error
    for error in (
        InvalidRequest,
        UnknownTask,
        ExperimentNotFound,
        CellSetNotFound,
        SourceNotFound,
        UnsupportedFormat,
        TaskFailed,
    )
}
