"""The README's quick start, line by line, as a newcomer runs it: each step must succeed and say
what it promises, and the login must outlive a restart of the server.

The lines are run as written, in a shell, with only the environment moved: a private
XDG_DATA_HOME and XDG_CONFIG_HOME, and a free port (QUARTET_PORT for the server, QUARTET_SERVER
for the command, both documented settings) instead of 50051; the HTTP port's 8080 is moved to a
free port too, in the lines themselves.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from quartet.client import Client, QuartetError

REPO = Path(__file__).resolve().parent.parent
MARKER = "<!-- quick start: tests/test_quick_start.py runs these lines, in this order -->"


def quick_start() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split(MARKER, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def serving(line: str, env: dict[str, str], target: str) -> Iterator[None]:
    """The README's background `serve` line, until it answers health checks."""
    process = subprocess.Popen(
        ["bash", "-c", f"exec {line.split('&')[0]}"], env=env, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        with Client(target, timeout=2) as probe:
            while True:
                try:
                    if probe.health.check():
                        break
                except QuartetError:
                    pass
                assert process.poll() is None and time.monotonic() < deadline, "serve did not start"
                time.sleep(0.2)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_every_quick_start_step_does_what_the_readme_says(tmp_path: Path) -> None:
    http_port = str(free_port())
    lines = [line.replace(":8080/", f":{http_port}/") for line in quick_start()]
    serve, *steps = lines
    assert serve.startswith("quartet server serve --http-port 8080 &")
    serve = serve.replace("8080", http_port)
    port = free_port()
    target = f"127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUARTET_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        XDG_DATA_HOME=str(tmp_path / "data"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        QUARTET_PORT=str(port),
        QUARTET_SERVER=target,
        QUARTET_WORKERS="1",
    )
    exports: list[str] = []
    printed: dict[str, str] = {}

    def run(step: str) -> None:
        result = subprocess.run(
            ["bash", "-ec", "\n".join([*exports, step])],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"{step}\n{result.stdout}{result.stderr}"
        printed[step.split("#")[0].strip()] = result.stdout

    with serving(serve, env, target):
        for step in steps[:-1]:
            if step.startswith("export "):
                exports.append(step)
            else:
                run(step)
    with serving(serve, env, target):  # a restart
        run(steps[-1])

    out = list(printed.values())
    commands = list(printed)
    assert commands[0] == "quartet server create-admin you@example.com"
    assert out[0] == "created: you@example.com (account 1); log in with `quartet login`\n"
    assert out[1] == f"logged in to {target} as you@example.com (admin)\n"
    assert out[2].startswith("added 50 users")
    assert "42" in out[3].split("score", 1)[1].split()[0]
    assert len(out[4].splitlines()) > 2  # demo scores over 100 from the last week
    assert "per user" in out[5]
    assert commands[6].startswith("curl") and '"accessToken"' in out[6]
    assert commands[-1] == "quartet whoami" and "you@example.com" in out[-1]
    assert (tmp_path / "data" / "quartet" / "secret").stat().st_mode & 0o777 == 0o600
