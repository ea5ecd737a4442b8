"""A progress bar for experiment imports, drawn from the server's progress messages.

    from quartet.client.progress import ImportProgressBar

    with ImportProgressBar(total_bytes=sum(sizes)) as bar:
        client.experiments.import_directory("data/", on_progress=bar)

Hand-rolled (about fifty lines) rather than tqdm, so that the SDK keeps its dependencies to gRPC
and protobuf.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

from quartet.client._experiments import FILE_NAMES
from quartet.experiments.v1 import experiment_service_pb2 as pb

_STAGES = {
    pb.IMPORT_STAGE_CHECKING: "checking ids across the files",
    pb.IMPORT_STAGE_PUBLISHING: "replacing the stored data set",
    pb.IMPORT_STAGE_REJECTED: "the files have problems: nothing was imported",
}
REDRAW_SECONDS = 0.1


class ImportProgressBar:
    """Call it with each progress message (it fits `on_progress`), then close it.

    On a terminal it redraws one line: a bar of the bytes the server has read out of total_bytes
    (when given), then the file being read and its rows. Anywhere else (a log, a pipe) it prints
    one line per finished file and per stage instead.
    """

    def __init__(
        self, total_bytes: int | None = None, stream: TextIO | None = None, width: int = 30
    ) -> None:
        self._total = total_bytes
        self._stream = stream or sys.stderr
        self._width = width
        self._terminal = self._stream.isatty()
        self._drawn = 0.0
        self._said: set[str] = set()

    def __call__(self, progress: pb.ImportExperimentDataResponse) -> None:
        if self._terminal:
            self._redraw(progress)
        else:
            self._log(progress)

    def close(self) -> None:
        if self._terminal and self._drawn:
            self._stream.write("\n")
            self._drawn = 0.0

    def __enter__(self) -> ImportProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _redraw(self, progress: pb.ImportExperimentDataResponse) -> None:
        now = time.monotonic()
        if progress.stage == pb.IMPORT_STAGE_RECEIVING and now - self._drawn < REDRAW_SECONDS:
            return
        self._drawn = now
        read = sum(f.bytes_read for f in progress.files)
        share = min(1.0, read / self._total) if self._total else None
        bar = ""
        if share is not None:
            filled = round(share * self._width)
            bar = f"[{'#' * filled}{'-' * (self._width - filled)}] {share:4.0%}  "
        self._stream.write(f"\r{bar}{describe(progress)}\033[K")
        self._stream.flush()

    def _log(self, progress: pb.ImportExperimentDataResponse) -> None:
        lines = [_file_line(f) for f in progress.files if f.complete]
        if progress.stage != pb.IMPORT_STAGE_RECEIVING:
            lines.append(describe(progress))
        for line in lines:
            if line not in self._said:
                self._said.add(line)
                print(line, file=self._stream, flush=True)


def describe(progress: pb.ImportExperimentDataResponse) -> str:
    """What the import is doing, in a few words."""
    if progress.stage == pb.IMPORT_STAGE_DONE:
        counts = {f.file: f.rows_stored for f in progress.files}
        return (
            f"done: {counts.get(pb.DATA_FILE_USERS, 0):,} users, "
            f"{counts.get(pb.DATA_FILE_COMPOUNDS, 0):,} compounds, "
            f"{counts.get(pb.DATA_FILE_EXPERIMENTS, 0):,} experiments"
        )
    if progress.stage in _STAGES:
        return _STAGES[progress.stage]
    return _file_line(progress.files[-1]) if progress.files else "starting"


def _file_line(file: pb.FileProgress) -> str:
    return (
        f"{FILE_NAMES.get(file.file, 'file')}: {file.rows_read:,} rows read, "
        f"{file.rows_stored:,} stored"
    )
