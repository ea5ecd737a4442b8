"""Fail when the protos in the work tree break the contract of a base commit (`buf breaking`).

The base is the newest release tag (v*) reachable from HEAD when there is one: nothing since the
last release may break its clients. Before the first release it is where this branch left main
(`git merge-base HEAD main`), so every commit of a branch counts, not only the last; on main itself
it is main's previous commit. Uncommitted changes to the protos are checked against HEAD as well.
A breaking change passes only in a new package version (quartet.score.v2 beside v1), which buf's
FILE rules allow, as buf and AIP-185 intend. One rule is finer than buf's: a method's idempotency
level may rise but not fall.

A shallow clone (CI's usual `--depth 1`) lacks the base: the script deepens it by one commit, and
fails, saying how to fetch the history, when that is not enough. Usage: check_breaking.py [BUF]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parent.parent
MAIN_BRANCHES = ("main", "origin/main")


def git(*args: str, check: bool = True) -> str:
    result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip() if result.returncode == 0 else ""


def resolves(ref: str) -> bool:
    return bool(git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False))


def base_commit() -> str | None:
    """The commit whose protos the work tree must not break, or None on a first commit."""
    tag = git("describe", "--tags", "--abbrev=0", "--match", "v[0-9]*", "HEAD", check=False)
    if tag:
        return git("rev-parse", f"{tag}^{{commit}}")
    head = git("rev-parse", "HEAD")
    for branch in MAIN_BRANCHES:
        if resolves(branch):
            fork = git("merge-base", "HEAD", branch, check=False)
            if fork and fork != head:
                return fork
            break
    if not resolves("HEAD^") and git("rev-parse", "--is-shallow-repository") == "true":
        git("fetch", "--quiet", "--deepen=1", check=False)
        if not resolves("HEAD^"):
            raise SystemExit(
                "check_breaking: this shallow clone lacks main's previous commit and fetching it "
                "failed; clone with history (`git fetch --unshallow`, or fetch-depth: 0 in CI)"
            )
    return git("rev-parse", "HEAD^") if resolves("HEAD^") else None


def main() -> None:
    buf = sys.argv[1] if len(sys.argv) > 1 else str(REPO / ".venv" / "bin" / "buf")
    base = base_commit()
    if base is None:
        print("check_breaking: the first commit has no earlier contract to break")
        return
    bases = [base]
    if git("status", "--porcelain", "--", "protos", "buf.yaml") and resolves("HEAD"):
        bases.append(git("rev-parse", "HEAD"))  # uncommitted edits must not break HEAD either
    for commit in dict.fromkeys(bases):
        check_against(buf, commit)


def check_against(buf: str, commit: str) -> None:
    # git archive, not buf's own git input: it works in worktrees and shallow clones alike.
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, capture_output=True, check=True)
    # Only the protos module: the vendored third_party/protos module is Google's, not quartet's
    # contract (and a base from before it was a module has one image fewer to compare).
    command = [buf, "breaking", "protos", "--against", "-#format=tar,subdir=protos"]
    if subprocess.run(command, cwd=REPO, input=archive.stdout).returncode != 0:
        raise SystemExit(
            f"check_breaking: the protos break the contract of {commit[:12]}; keep v1 compatible "
            "and make the change in a new package version (e.g. v2 beside v1)"
        )
    lowered = lowered_idempotency(
        idempotency_levels(buf, "-#format=tar,subdir=protos", archive.stdout),
        idempotency_levels(buf, "protos"),
    )
    if lowered:
        raise SystemExit(
            f"check_breaking: against {commit[:12]}, these methods became less safe to retry, "
            "which clients that retry them by their old level would do: " + ", ".join(lowered)
        )


# buf.yaml excepts RPC_SAME_IDEMPOTENCY_LEVEL, which fails any change of level. Raising one is
# safe (clients built on the old level merely retry less) and is how methods gain their level;
# lowering one is the break, checked here.
SAFETY = {
    descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN: 0,
    descriptor_pb2.MethodOptions.IDEMPOTENT: 1,
    descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS: 2,
}


def idempotency_levels(buf: str, source: str, tar: bytes | None = None) -> dict[str, int]:
    """Each method's idempotency level (its safety rank) in the protos of source."""
    command = [buf, "build", source, "--exclude-source-info", "-o", "-#format=binpb"]
    image = subprocess.run(command, cwd=REPO, input=tar, capture_output=True, check=True).stdout
    files = descriptor_pb2.FileDescriptorSet.FromString(image).file
    return {
        f"{file.package}.{service.name}/{method.name}": SAFETY[method.options.idempotency_level]
        for file in files
        for service in file.service
        for method in service.method
    }


def lowered_idempotency(before: dict[str, int], after: dict[str, int]) -> list[str]:
    return sorted(name for name, rank in after.items() if rank < before.get(name, rank))


if __name__ == "__main__":
    main()
