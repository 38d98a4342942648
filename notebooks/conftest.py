"""nbval runs every notebook with the small parameters of ci_params.json (unless the caller set others)."""

import os
from pathlib import Path

os.environ.setdefault("SSD_NOTEBOOK_PARAMS", str(Path(__file__).with_name("ci_params.json")))
