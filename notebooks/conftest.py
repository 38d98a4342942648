"""nbval runs every notebook with the small parameters of ci_params.json (unless the caller set others)."""

import os
from pathlib import Path

os.environ.setdefault("SSD_NOTEBOOK_PARAMS", str(Path(__file__).with_name("ci_params.json")))
# Under pytest-xdist a notebook's kernel shares the cores with the other workers: its share of threads.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, min(4, (os.cpu_count() or 1) // workers))))
