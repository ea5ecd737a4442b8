"""The committed generated code, descriptor set, vendored protos and API reference are exactly what
scripts/gen_protos.py makes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def generated_files(root: Path) -> dict[str, bytes]:
    files = {
        path.relative_to(root).as_posix(): path.read_bytes()
        for generated in ("quartet", "buf")
        for path in (root / "client" / generated).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.parts[-2:][0] != "client"
    }
    files["docs/api.md"] = (root / "docs" / "api.md").read_bytes()
    files["docs/cli.md"] = (root / "docs" / "cli.md").read_bytes()
    vendored = root / "third_party" / "protos"
    files.update(
        (path.relative_to(root).as_posix(), path.read_bytes())
        for path in vendored.rglob("*")
        if path.is_file()
    )
    hand_written = ("client/quartet/client/", "client/quartet/cli/")
    return {k: v for k, v in files.items() if not k.startswith(hand_written)}


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
    )
    fresh = generated_files(tmp_path)
    committed = generated_files(REPO)
    names = fresh.keys() | committed.keys()
    stale = sorted(name for name in names if fresh.get(name) != committed.get(name))
    assert not stale, f"run `python scripts/gen_protos.py` and commit; stale: {stale}"
