"""nbval runs every notebook with the small parameters of ci_params.json (unless the caller set others)."""

import os
from pathlib import Path

from helpers import threads_per_worker

os.environ.setdefault("SSD_NOTEBOOK_PARAMS", str(Path(__file__).with_name("ci_params.json")))
# Under pytest-xdist a notebook's kernel shares the cores with the other workers: its share of threads.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_worker()))
