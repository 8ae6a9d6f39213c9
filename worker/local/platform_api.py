"""A stand-in for the platform's API where the worker meets it: `PATCH
/v2/experiments/{experimentId}/cellSets` with json-merger operations, applied to the stored cell
sets as the API applies them. For tests and local use; the real API also checks the user."""

import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from worker.jsonio import dumps, loads
from worker.settings import AwsSettings
from worker.store.cell_sets import (
    MERGER_CONTENT_TYPE,
    CellSetsLocation,
    apply_merger_patch,
    update_cell_sets,
)
from worker.transport.protocol import EXPERIMENT_ID

CELL_SETS_PATH = re.compile(r"^/v2/experiments/(?P<experiment>[^/]+)/cellSets$")


@dataclass(frozen=True)
class Patch:
    experiment_id: str
    authorization: str | None
    operations: list


class PlatformApiStandIn:
    """Serves on 127.0.0.1 from a thread; `patches` records what it applied."""

    def __init__(self, cell_sets_bucket: str, aws: AwsSettings):
        self._bucket = cell_sets_bucket
        self._aws = aws
        self.patches: list[Patch] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def apply(self, patch: Patch) -> None:
        location = CellSetsLocation(self._bucket, patch.experiment_id, self._aws)
        update_cell_sets(
            location, lambda current: apply_merger_patch(current.hierarchies, patch.operations)
        )
        self.patches.append(patch)


def _handler_for(api: PlatformApiStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_PATCH(self) -> None:
            found = CELL_SETS_PATH.match(self.path)
            if found is None or not EXPERIMENT_ID.fullmatch(found["experiment"]):
                self._reply(404, {"error": "not found"})
                return
            if self.headers.get("Content-Type") != MERGER_CONTENT_TYPE:
                self._reply(415, {"error": f"expected {MERGER_CONTENT_TYPE}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                operations = loads(self.rfile.read(length))
                if not isinstance(operations, list):
                    raise ValueError("the body must be a list of json-merger operations")
                api.apply(Patch(found["experiment"], self.headers.get("Authorization"), operations))
            except ValueError as error:
                self._reply(400, {"error": str(error)})
                return
            self._reply(200, {"data": {"message": "success", "code": 200}})

        def _reply(self, status: int, body: dict) -> None:
            encoded = dumps(body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(encoded)))
            self.end_headers()
            self.wfile.write(encoded)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler
