"""Writing result files so that a crash never leaves one half-written."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write text to a temporary file beside `path`, then rename it over `path`.

    The rename is atomic: readers see the old file or the new one, never a mix,
    and a failure while writing leaves the old file untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data) -> None:
    """JSON, all or nothing (`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record as a line, flushed to disk, so an interruption loses no finished record."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path, log: bool = False) -> list[dict]:
    """Records of a JSONL file, one per non-empty line; a line that is not JSON is an error naming the
    file and line, and so is a missing file. `log=True` reads an append-only log (`append_jsonl`): a
    missing log holds nothing yet, and a last line cut short by a crash is ignored."""
    path = Path(path)
    if not path.is_file():
        if log and not path.exists():
            return []
        raise FileNotFoundError(f"no file {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if log and number == len(lines):
                break  # torn final write
            raise ValueError(f"{path}, line {number}: not valid JSON ({error})") from None
    return records


def write_csv_atomic(path: str | Path, rows: list[dict]) -> None:
    """Dicts as CSV (columns in first-seen order), all or nothing (`write_text_atomic`)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())
