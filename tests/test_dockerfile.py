"""The Dockerfile: lint-clean, and its own commands build, install, serve and health-check quartet.

There is no Docker engine here, so the test replays the Dockerfile's steps on this machine: the
build stage's COPY list and RUN command make the wheel from a copy of exactly the files it copies,
the runtime stage's RUN installs it into a fresh virtual environment, and then its CMD serves with
its ENV (only the /data path and the port moved) until its HEALTHCHECK command reports SERVING.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import venv
from pathlib import Path

import yaml

from quartet.server import metrics
from quartet.server.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    result = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), " ".join(rest.split())))
    return result


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            result.append([])
        result[-1].append((keyword, rest))
    return result


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def exec_form(arguments: str) -> list[str]:
    words = json.loads(arguments)
    assert isinstance(words, list), "use the exec (JSON) form"
    return [str(w) for w in words]


def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_commands_build_install_serve_and_pass_the_healthcheck(
    tmp_path: Path,
) -> None:
    build, runtime = stages()
    assert build[0][1].startswith("python:3.11-slim") and runtime[0][1].startswith(
        "python:3.11-slim"
    )
    assert any(k == "USER" and not v.startswith("root") for k, v in runtime), "runs as non-root"

    # Build stage: only what it COPYs, then its RUN.
    source, dist = tmp_path / "src", tmp_path / "dist"
    source.mkdir()
    for keyword, rest in build:
        if keyword == "COPY":
            *paths, _destination = rest.split()
            for name in paths:
                origin = REPO / name
                if origin.is_dir():
                    shutil.copytree(
                        origin, source / name, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    shutil.copy(origin, source / name)
    builder = tmp_path / "builder"
    venv.create(builder, with_pip=True)
    path = f"{builder / 'bin'}{os.pathsep}{os.environ['PATH']}"
    for keyword, rest in build:
        if keyword == "RUN":
            command = rest.replace("/dist", str(dist))
            subprocess.run(
                ["sh", "-ec", command], cwd=source, env={**os.environ, "PATH": path}, check=True
            )
    assert [w.name for w in dist.glob("quartet-*.whl")], "the build stage made no wheel"

    # Runtime stage: its RUN into a fresh environment (the image's /wheels is our dist).
    runtime_env = tmp_path / "runtime"
    venv.create(runtime_env, with_pip=True)
    path = f"{runtime_env / 'bin'}{os.pathsep}{os.environ['PATH']}"
    for keyword, rest in runtime:
        if keyword == "RUN" and "pip install" in rest:
            command = rest.replace("/wheels", str(dist))
            subprocess.run(["sh", "-ec", command], env={**os.environ, "PATH": path}, check=True)

    # Its CMD with its ENV; the volume and the port move to this machine's free ones.
    env = {"PATH": path, "HOME": str(tmp_path), **env_of(runtime)}
    env["DATABASE_URL"] = env["DATABASE_URL"].replace("/data", str(tmp_path / "data"))
    env["QUARTET_HOST"], env["QUARTET_PORT"] = "127.0.0.1", str(free_port())
    env["QUARTET_METRICS_PORT"] = str(free_port())
    env["QUARTET_SECRET"] = secrets.token_urlsafe(48)  # as `docker run -e QUARTET_SECRET=...`
    (cmd,) = [exec_form(rest) for keyword, rest in runtime if keyword == "CMD"]
    (healthcheck,) = [rest for keyword, rest in runtime if keyword == "HEALTHCHECK"]
    probe = exec_form(healthcheck.split(" CMD ", 1)[1])
    with subprocess.Popen(cmd, env=env, cwd=tmp_path, stderr=subprocess.PIPE) as server:
        try:
            deadline = time.monotonic() + 60
            while True:
                check = subprocess.run(probe, env=env, cwd=tmp_path, capture_output=True, text=True)
                if (
                    check.returncode == 0
                    or time.monotonic() > deadline
                    or server.poll() is not None
                ):
                    break
                time.sleep(0.5)
            assert check.returncode == 0, check.stdout + check.stderr
            assert check.stdout.strip() == "SERVING"
            metrics_url = f"http://127.0.0.1:{env['QUARTET_METRICS_PORT']}/metrics"
            # The probe's call, published by its worker within PUBLISH_SECONDS.
            deadline = time.monotonic() + metrics.PUBLISH_SECONDS + 10
            while True:
                with urllib.request.urlopen(metrics_url, timeout=10) as response:
                    page = response.read().decode()
                if 'grpc_method="Check"' in page or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert 'grpc_method="Check"' in page
        finally:
            server.send_signal(signal.SIGTERM)
            _, log = server.communicate(timeout=30)
        assert server.returncode == 0, log.decode()
    assert (tmp_path / "data" / "quartet.db").exists()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_every_setting_named_in_the_dockerfile_and_compose_file_exists() -> None:
    known = {f.metadata["env"] for f in dataclasses.fields(Settings)}
    known |= {f.metadata["file"] for f in dataclasses.fields(Settings) if "file" in f.metadata}
    _, runtime = stages()
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    quartet = compose["services"]["quartet"]
    named = set(env_of(runtime)) | set(quartet["environment"])
    settings_named = {n for n in named if n.startswith("QUARTET_") or n == "DATABASE_URL"}
    assert settings_named <= known, settings_named - known
    assert quartet["build"] == "."
    assert "postgres" in quartet["depends_on"]
    assert quartet["environment"]["DATABASE_URL"].startswith("postgresql://")
    exposed = {int(p) for k, v in runtime if k == "EXPOSE" for p in v.split()}
    assert {int(p.split(":")[1]) for p in quartet["ports"]} == exposed
