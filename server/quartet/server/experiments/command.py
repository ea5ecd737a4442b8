"""`quartet server import-experiments [DIRECTORY]`: an import run straight against the database,
for operators; without a directory it imports the demo data set shipped with quartet."""

from __future__ import annotations

import importlib.resources
import sys
from collections.abc import Iterator
from pathlib import Path

from quartet import storage
from quartet.client.progress import ImportProgressBar
from quartet.experiments.v1 import experiment_service_pb2 as pb
from quartet.server.errors import InvalidArgument
from quartet.server.experiments.csvfiles import FILE_NAMES, DataFile, Problem
from quartet.server.experiments.importer import Chunk, run_import

CHUNK_SIZE = 256 * 1024
COMMAND_LINE = "command-line"  # the caller the import history names for these imports


def import_experiments(
    database_url: str, directory: Path | None, *, allow_empty: bool = False
) -> int:
    """Import directory's three files (or the demo data); the exit status: 0, or 1 on problems.
    allow_empty lets files without any row empty the data set."""
    with importlib.resources.as_file(
        importlib.resources.files("quartet.storage") / "data" / "experiments"
    ) as demo:
        folder = directory or demo
        paths = {kind: folder / name for kind, name in FILE_NAMES.items()}
        try:
            total = sum(path.stat().st_size for path in paths.values())
        except OSError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        database = storage.open_database(database_url)
        try:
            storage.migrate(database)
            storage.bind(database)
            problems: list[pb.ImportProblem] = []

            def progress(reply: pb.ImportExperimentDataResponse) -> None:
                problems.extend(reply.problems)  # every problem, not only the error's first
                bar(reply)

            with ImportProgressBar(total) as bar, database.connection_context():
                run_import(_chunks(paths, allow_empty), progress, COMMAND_LINE)
        except InvalidArgument as error:
            print(f"error: {error.message}", file=sys.stderr)
            for problem in problems:
                location = Problem.of(
                    problem.file, problem.line, problem.column, problem.description
                ).location
                print(f"  {location}: {problem.description}", file=sys.stderr)
            if not problems:  # a broken protocol, not a problem in the files
                for violation in error.violations:
                    print(f"  {violation.field}: {violation.description}", file=sys.stderr)
            return 1
        finally:
            storage.close(database)
    return 0


def _chunks(paths: dict[DataFile, Path], allow_empty: bool) -> Iterator[Chunk]:
    """Each file's chunks in turn; an empty file is one empty chunk, so that it counts as sent."""
    for kind, path in paths.items():
        with path.open("rb") as file:
            data = file.read(CHUNK_SIZE)
            yield kind, data, allow_empty
            while data := file.read(CHUNK_SIZE):
                yield kind, data, allow_empty
