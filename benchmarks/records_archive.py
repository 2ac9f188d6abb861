"""A stability cell's committed records: ``runs.jsonl.gz`` beside the git-ignored ``runs.jsonl``.

The sweeps append to ``runs.jsonl``; the repository keeps the records compressed. :func:`restore_records` puts an
archive back before a cell is resumed (otherwise a fresh clone resumes from no records and re-runs every seed), and
:func:`archive_records` writes the archive again only from a ``runs.jsonl`` that holds every archived record, so a
smaller file never replaces a larger one. Both hold the directory's sweep lock (``.sweep.lock``) while they work, so
neither touches a cell a sweep is writing (:class:`~hf_stable_ft.experiment.SweepDirectoryLocked`). Records are compared line by line: a resumed sweep only appends (a re-run
of a failed seed is a new line), so a file that continues the archive holds each of its lines.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

RUNS = "runs.jsonl"
ARCHIVE = "runs.jsonl.gz"

__all__ = ["archive_records", "restore_records"]


def _lines(data: bytes) -> list[bytes]:
    return [line for line in data.split(b"\n") if line.strip()]


def _check_holds_archive(cell: Path) -> tuple[bytes, list[bytes]]:
    """``runs.jsonl``'s bytes and the archive's lines; ValueError if the file lacks any archived line."""
    plain = (cell / RUNS).read_bytes()
    archived = _lines(gzip.decompress((cell / ARCHIVE).read_bytes()))
    held = set(_lines(plain))
    missing = [line for line in archived if line not in held]
    if missing:
        raise ValueError(
            f"{cell / RUNS} lacks {len(missing)} of the {len(archived)} records in {cell / ARCHIVE}: it does not "
            f"continue the committed records (a sweep run with --overwrite, or on another checkout?). Nothing was "
            f"changed. Merge them (zcat {ARCHIVE} and the new lines into {RUNS}) or move {RUNS} away")
    return plain, archived


def restore_records(cell: str | os.PathLike) -> int:
    """Before a cell resumes: write ``runs.jsonl`` from ``runs.jsonl.gz`` when only the archive is there.

    Returns the number of records restored (0 when there was nothing to restore). When both exist, checks that
    ``runs.jsonl`` holds every archived record and raises ValueError otherwise, before any run starts.
    """
    cell = Path(cell)
    if not (cell / ARCHIVE).is_file():
        return 0
    from hf_stable_ft.experiment import _SweepLock  # here, so the scripts' --help does not load transformers

    with _SweepLock(cell):
        return _restore(cell)


def _restore(cell: Path) -> int:
    if (cell / RUNS).exists():
        _check_holds_archive(cell)
        return 0
    data = gzip.decompress((cell / ARCHIVE).read_bytes())
    temporary = cell / f"{RUNS}.restoring"
    temporary.write_bytes(data)
    os.replace(temporary, cell / RUNS)  # a killed restore leaves no half file for the sweep to append to
    return len(_lines(data))


def archive_records(cell: str | os.PathLike) -> int:
    """Compress ``runs.jsonl`` into ``runs.jsonl.gz`` (then remove it), refusing when it lacks archived records.

    Returns the number of records archived.
    """
    from hf_stable_ft.experiment import _SweepLock

    cell = Path(cell)
    with _SweepLock(cell):
        return _archive(cell)


def _archive(cell: Path) -> int:
    if (cell / ARCHIVE).is_file():
        plain, _ = _check_holds_archive(cell)
    else:
        plain = (cell / RUNS).read_bytes()
    temporary = cell / f"{ARCHIVE}.writing"
    temporary.write_bytes(gzip.compress(plain, mtime=0))
    os.replace(temporary, cell / ARCHIVE)
    (cell / RUNS).unlink()
    return len(_lines(plain))
