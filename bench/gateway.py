"""LiteLLM's proxy, a "popular Python LLM gateway", measured by `bench/bench.py --gateway`.

The bench otherwise quotes that gateway's figures from a reference machine (GATEWAY_HIT_RPS in
bench/bench.py); run here, in the same run and on the same workload, its ratio is a within-one-run
ratio like the floors'. LiteLLM is installed once, pinned, into a virtualenv of its own (never
into the project's environment), which later runs reuse:

    ~/.cache/repro-proxy-bench/litellm-<LITELLM_VERSION>/venv     (XDG_CACHE_HOME is honoured)

It runs as one uvicorn worker (one process, as for the reference figures) with a config that
routes the bench's model to `repro-proxy sim` (an OpenAI-compatible upstream) and turns on
LiteLLM's Redis response cache on the bench's redis-server, in a db of its own (3) and under a
key prefix: the proxies and the floors use dbs 0 to 2. It needs a master key to start; it is
the bench's API key, which wrk already sends. No database, the bundled model cost map (no
fetch), errors-only logging, 127.0.0.1 only.

How a hit shows: LiteLLM answers `x-litellm-cache-key` only when it served the answer from its
cache (litellm/caching/caching_handler.py puts the key into the answer's hidden params on the
cache-hit path; litellm/proxy/common_request_processing.py turns it into the header). Its Redis
cache has an in-process tier in front (caching_handler's DualCache), so a hot key is answered
from the worker's memory, as the proxy's near-cache does; the sim's request counter shows
whether any request went upstream.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

# The newest release whose `proxy` extra installs from PyPI: 1.108.8 and later pin companion
# packages that PyPI does not have (litellm-enterprise 0.1.79.post2, and from 1.110.0 on
# litellm-proxy and litellm-proxy-extras 0.4.114.post1).
LITELLM_VERSION = "1.108.7"
REQUIREMENT = f"litellm[proxy]=={LITELLM_VERSION}"
NAME = f"LiteLLM {LITELLM_VERSION}"
REDIS_DB = 3  # bench.py: 0 proxy redis://, 1 redis-GET floor, 2 proxy without near-cache
KEY_PREFIX = "litellm-bench"
HIT_HEADER = "x-litellm-cache-key"  # only on answers served from LiteLLM's cache
HEALTH_PATH = "/health/liveliness"  # answers once the app's startup has finished
START_TIMEOUT = 120.0  # it imports for several seconds, more while the other servers start
INSTALL_TIMEOUT = 1800  # seconds for pip (about a minute here, from a warm pip cache)
# Settings by environment: the cost map bundled with the package (no fetch at start-up),
# errors-only logging, nothing read from a .env file found by chance.
ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOG": "ERROR",
    "LITELLM_MODE": "PRODUCTION",
}


class GatewayError(RuntimeError):
    """LiteLLM could not be installed or configured: no gateway figure, and why."""


@dataclass(frozen=True)
class Install:
    root: Path  # ~/.cache/repro-proxy-bench/litellm-<version>
    install_s: float  # how long the install took, when it was made
    venv_mib: float  # disk size of the virtualenv
    reused: bool  # made by an earlier run

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def litellm(self) -> Path:
        return self.venv / "bin" / "litellm"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "repro-proxy-bench" / f"litellm-{LITELLM_VERSION}"


def dir_mib(path: Path) -> float:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total / 2**20


def ensure_installed(log: Callable[[str], None]) -> Install:
    """The pinned LiteLLM in its own venv, made once; a lock keeps two runs from racing."""
    root = cache_root()
    marker = root / "installed.json"
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and (root / "venv" / "bin" / "litellm").exists():
            done = json.loads(marker.read_text())
            return Install(root, done["install_s"], done["venv_mib"], reused=True)
        shutil.rmtree(root, ignore_errors=True)  # a half-made one from an interrupted run
        root.mkdir()
        log(f"gateway: installing {REQUIREMENT} into {root / 'venv'} (once)")
        started = time.monotonic()
        pip_log = root / "pip.log"
        python = root / "venv" / "bin" / "python"
        steps = [
            [sys.executable, "-m", "venv", str(root / "venv")],
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", REQUIREMENT],
        ]
        with pip_log.open("wb") as out:
            for step in steps:
                try:
                    code = subprocess.run(
                        step, stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT
                    ).returncode
                except subprocess.TimeoutExpired:
                    code = -1
                if code != 0:
                    tail = pip_log.read_text(errors="replace").splitlines()[-15:]
                    raise GatewayError(
                        f"`{' '.join(step[-3:])}` failed (exit {code}), see {pip_log}:\n"
                        + "\n".join(tail)
                    )
        version = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
        if version != LITELLM_VERSION:
            raise GatewayError(f"the venv has litellm {version!r}, not {LITELLM_VERSION}")
        freeze = subprocess.run(
            [str(python), "-m", "pip", "freeze", "--disable-pip-version-check"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        (root / "freeze.txt").write_text(freeze)  # what this install resolved to
        install = Install(root, time.monotonic() - started, dir_mib(root / "venv"), reused=False)
        marker.write_text(
            json.dumps({"version": LITELLM_VERSION, "install_s": round(install.install_s, 1),
                        "venv_mib": round(install.venv_mib)})
        )  # fmt: skip
        log(f"gateway: installed in {install.install_s:.0f} s, venv {install.venv_mib:,.0f} MiB")
        return install


def write_config(
    path: Path, *, models: list[str], upstream: str, redis_port: int, api_key: str
) -> Path:
    """LiteLLM's proxy config: each model to the sim, Redis cache on, no database.

    Written as JSON, which is YAML too (LiteLLM reads it with yaml.safe_load).
    """
    config = {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {
                    "model": f"openai/{model}",
                    "api_base": upstream,  # the sim's URL with its /v1
                    "api_key": api_key,  # the sim accepts any key
                },
            }
            for model in models
        ],
        "litellm_settings": {
            "cache": True,
            "cache_params": {
                "type": "redis",
                "host": "127.0.0.1",
                "port": redis_port,
                "db": REDIS_DB,
                "namespace": KEY_PREFIX,
                "ttl": 3600,  # outlives any run (its default is 60 s)
            },
            "set_verbose": False,
        },
        "general_settings": {"master_key": api_key},  # it refuses to start without one
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def command(install: Install, config: Path, port: int) -> list[str]:
    return [
        str(install.litellm), "--config", str(config), "--host", "127.0.0.1",
        "--port", str(port), "--num_workers", "1",
    ]  # fmt: skip


def cache_state(headers: Mapping[str, str]) -> str:
    """HIT or MISS, as bench.py's X-Repro-Cache reads: LiteLLM's cache key header or not."""
    return "HIT" if HIT_HEADER in headers else "MISS"
