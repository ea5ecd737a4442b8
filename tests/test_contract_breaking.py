"""scripts/check_breaking.py, run by scripts/check: buf breaking against the right base commit.

Each test builds a small git repository from the real buf.yaml, protos/ and script, then changes a
message of its own (so that the test holds whatever the protos say) and runs the script there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUF = Path(sys.executable).parent / "buf"
PROTO = Path("protos/quartet/score/v1/score_service.proto")
PROBE = "\nmessage ContractProbe {\n  string name = 1;\n}\n"
BROKEN_PROBE = PROBE.replace("string name", "int64 name")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", message)


def check(repo: Path) -> subprocess.CompletedProcess[str]:
    script = repo / "scripts" / "check_breaking.py"
    return subprocess.run(
        [sys.executable, str(script), str(BUF)], cwd=repo, capture_output=True, text=True
    )


def passes(repo: Path) -> bool:
    result = check(repo)
    assert result.returncode == 0 or "changed type" in result.stdout, result
    return result.returncode == 0


def append(repo: Path, path: Path, text: str) -> None:
    with open(repo / path, "a") as file:
        file.write(text)


def replace(repo: Path, path: Path, old: str, new: str) -> None:
    original = (repo / path).read_text()
    assert old in original
    (repo / path).write_text(original.replace(old, new))


def make_repo(root: Path) -> Path:
    """A repository on main: the real protos, then a commit adding the probe message."""
    assert BUF.is_file(), f"{BUF} is missing: run scripts/bootstrap"
    repo = root / "repo"
    shutil.copytree(REPO / "protos", repo / "protos")
    # buf.yaml's second module: the vendored Google protos that quartet's import.
    shutil.copytree(REPO / "third_party" / "protos", repo / "third_party" / "protos")
    shutil.copy(REPO / "buf.yaml", repo / "buf.yaml")
    (repo / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "check_breaking.py", repo / "scripts")
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "the contract as it is")
    assert passes(repo), "a first commit has nothing to break"
    append(repo, PROTO, PROBE)
    commit(repo, "a new message: not breaking")
    return repo


def test_a_breaking_change_fails_in_the_work_tree_and_once_committed_on_main(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path)
    assert passes(repo), "adding a message breaks nothing"
    replace(repo, PROTO, PROBE, BROKEN_PROBE)
    assert not passes(repo), "a field's type changed in the work tree"
    commit(repo, "the probe's field changes type")
    assert not passes(repo), "main's last commit broke main's previous one"
    append(repo, PROTO, "\nmessage Unrelated {}\n")
    commit(repo, "a harmless commit after it")
    assert passes(repo), "on main, only the previous commit is the base"


def test_a_branch_is_checked_against_where_it_left_main(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    git(repo, "switch", "-q", "-c", "feature")
    replace(repo, PROTO, PROBE, BROKEN_PROBE)
    commit(repo, "breaking")
    append(repo, PROTO, "\nmessage Unrelated {}\n")
    commit(repo, "harmless, but the branch still breaks main")
    assert not passes(repo)


def test_a_new_package_version_may_differ(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    git(repo, "switch", "-q", "-c", "feature")
    v2 = Path("protos/quartet/score/v2/probe.proto")
    (repo / v2).parent.mkdir()
    (repo / v2).write_text('syntax = "proto3";\n\npackage quartet.score.v2;\n' + BROKEN_PROBE)
    commit(repo, "v2 beside v1")
    assert passes(repo)


def test_the_last_release_tag_is_the_base_once_there_is_one(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    git(repo, "tag", "v0.1.0")
    replace(repo, PROTO, PROBE, BROKEN_PROBE)
    commit(repo, "breaking")
    append(repo, PROTO, "\nmessage Unrelated {}\n")
    commit(repo, "harmless")
    assert not passes(repo), "the release's clients break"


def test_a_shallow_clone_fetches_the_previous_commit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    replace(repo, PROTO, PROBE, BROKEN_PROBE)
    commit(repo, "breaking")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{repo}", str(clone))
    assert git(clone, "rev-parse", "--is-shallow-repository") == "true"
    result = check(clone)
    assert result.returncode != 0 and "changed type" in result.stdout, result


def test_scripts_check_runs_it() -> None:
    assert "scripts/check_breaking.py" in (REPO / "scripts" / "check").read_text()


def probe_service(level: str = "") -> str:
    option = f" {{\n    option idempotency_level = {level};\n  }}" if level else ";"
    method = f"  rpc Probe(ContractProbe) returns (ContractProbe){option}"
    return f"\nservice ContractProbeService {{\n{method}\n}}\n"


def test_an_idempotency_level_may_rise_but_not_fall(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    append(repo, PROTO, probe_service())
    commit(repo, "a method of unknown idempotency")
    replace(repo, PROTO, probe_service(), probe_service("IDEMPOTENT"))
    assert check(repo).returncode == 0, "clients built on the old level only retry less"
    commit(repo, "the method declares itself idempotent")
    replace(repo, PROTO, probe_service("IDEMPOTENT"), probe_service("NO_SIDE_EFFECTS"))
    assert check(repo).returncode == 0
    replace(repo, PROTO, probe_service("NO_SIDE_EFFECTS"), probe_service())
    result = check(repo)
    assert result.returncode != 0, "old clients would retry a call no longer safe to repeat"
    assert "quartet.score.v1.ContractProbeService/Probe" in result.stderr, result
