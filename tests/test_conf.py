"""conf/dask.yaml as the worker loads it: over Dask's defaults, under DASK_* variables, and in
every Dask worker of the LocalCluster, with the preload that sets those workers up."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
KEYS = [
    "distributed.worker.memory.target",
    "distributed.worker.memory.spill",
    "distributed.worker.preload",
    "worker.warm-up-numba",
]
MALLOC = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
PROBE = f"""
import json
import os
from pathlib import Path

import dask
from distributed import Client

from worker.service.cluster import load_conf, start_local_cluster
from worker.service.dask_worker import is_warm

KEYS = {KEYS!r}
MALLOC = {MALLOC!r}

if __name__ == "__main__":
    load_conf(Path("conf"))
    with start_local_cluster(dashboard_address=":0") as cluster, Client(cluster) as client:
        in_workers = client.run(lambda: [dask.config.get(key) for key in KEYS])
        warm = client.run(is_warm)
        malloc = client.run(lambda: [os.environ.get(name) for name in MALLOC])
    here = [dask.config.get(key) for key in KEYS]
    workers, warm = list(in_workers.values()), list(warm.values())
    malloc = list(malloc.values())
    print(json.dumps({{"here": here, "workers": workers, "warm": warm, "malloc": malloc}}))
"""


def test_conf_is_over_dask_defaults_under_the_environment_and_in_every_dask_worker(tmp_path):
    conf = yaml.safe_load((ROOT / "conf" / "dask.yaml").read_text())
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")} | {
        "DASK_DISTRIBUTED__WORKER__MEMORY__SPILL": "0.5",
        "DASK_WORKER__LOCAL_CLUSTER__N_WORKERS": "1",
        "DASK_WORKER__LOCAL_CLUSTER__THREADS_PER_WORKER": "1",
    }
    probe = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout.splitlines()[-1])

    # Dask's own default target is 0.6: the conf's value wins over it, the environment over both.
    target = conf["distributed"]["worker"]["memory"]["target"]
    expected = [target, 0.5, ["worker.service.dask_worker"], conf["worker"]["warm-up-numba"]]
    assert target != 0.6
    assert found["here"] == expected
    assert found["workers"] == [expected]
    # The preload ran in the Dask worker; with no warm-up asked for, it is warm at once.
    assert found["warm"] == [True]
    # The allocator's thresholds reach the Dask worker's environment, not Dask's 64 KiB trim.
    thresholds = conf["distributed"]["nanny"]["pre-spawn-environ"]
    assert found["malloc"] == [[str(thresholds[name]) for name in MALLOC]]
    assert thresholds["MALLOC_TRIM_THRESHOLD_"] != 65536
