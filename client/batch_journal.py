"""The output folder's record of a batch, what a re-run resumes from: ``manifest.json`` (the manifest the batch
was started with, its paths made absolute) and ``journal.jsonl`` (one line per job that finished or failed, the
last line of a job winning). Every file is written whole or not at all."""
import json
import os
import threading
from pathlib import Path

MANIFEST, JOURNAL = "manifest.json", "journal.jsonl"


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` into ``path`` through a temporary file renamed over it, so a reader (or a re-run after a crash)
    sees the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


class Journal:
    def __init__(self, out: Path):
        self.out = out
        self.path = out / JOURNAL
        self._lock = threading.Lock()

    def records(self) -> dict[str, dict]:
        """The last record of each job; a line cut short by a crash is ignored (its job runs again)."""
        found = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                found[record["job"]] = record
        return found

    def finished(self) -> set[str]:
        return {job for job, record in self.records().items() if record["status"] == "done"}

    def add(self, record: dict) -> None:
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        with self._lock, open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
