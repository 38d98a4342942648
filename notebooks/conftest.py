"""nbval runs every notebook with the small parameters of ci_params.json (unless the caller set others);
the notebooks that read CNN/DM or XSum skip, saying why, where no data folder is set."""

import os
from pathlib import Path

import pytest

from helpers import data_dir, threads_per_worker
from ssd.tools.data import DATA_DIR_ENV

os.environ.setdefault("SSD_NOTEBOOK_PARAMS", str(Path(__file__).with_name("ci_params.json")))
# Under pytest-xdist a notebook's kernel shares the cores with the other workers: its share of threads.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_worker()))

NEEDS_SUMMARIES = {"evaluate_sum.ipynb", "search.ipynb", "swift.ipynb"}  # at their ci_params.json settings


def pytest_collection_modifyitems(items):
    if data_dir() is not None:
        return
    skip = pytest.mark.skip(reason=f"reads CNN/DM or XSum: set ${DATA_DIR_ENV} to a folder of cnndm*.jsonl and xsum*.jsonl")
    for item in items:
        if item.path.name in NEEDS_SUMMARIES:
            item.add_marker(skip)
