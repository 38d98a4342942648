"""Writing result files so that a crash never leaves one half-written."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
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
        # mkstemp creates the file owner-only: keep the replaced file's mode, or a new file's usual one.
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data) -> None:
    """JSON, all or nothing (`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record as a line, flushed to disk, so an interruption loses no finished record. A last
    line cut short by an earlier crash (no newline: `read_jsonl` ignores it) is cut off first, so that it
    never ends up inside the file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as f:
        f.truncate(_complete_size(f))
        f.write((json.dumps(record) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def _complete_size(f) -> int:
    """Bytes of an open file up to its last newline (all of it when it ends with one)."""
    size = f.seek(0, os.SEEK_END)
    position = size
    while position > 0:
        step = min(position, 1 << 16)
        f.seek(position - step)
        newline = f.read(step).rfind(b"\n")
        if newline >= 0:
            return position - step + newline + 1
        position -= step
    return 0


def read_jsonl(path: str | Path, log: bool = False) -> list[dict]:
    """Records of a JSONL file, one per non-empty line; a line that is not JSON is an error naming the
    file and line, and so is a missing file. `log=True` reads an append-only log (`append_jsonl`): a
    missing log holds nothing yet, and a last line cut short by a crash (without its newline, which
    `append_jsonl` writes with every record) is ignored."""
    path = Path(path)
    if not path.is_file():
        if log and not path.exists():
            return []
        raise FileNotFoundError(f"no file {path}")
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if log:
        lines.pop()  # after the last newline: empty, or a torn final write
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
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
