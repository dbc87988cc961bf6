"""Hit ratio under `follow` when the upstream answers with several fingerprints at random.

Starts `repro-proxy sim` and, per configuration, a fresh proxy (memory store, `follow`) on free
loopback ports. The sim alternates between fingerprints (`--fingerprints`), as a fleet does
mid-rollout. Each round sends every one of `--prompts` seeded chat requests once, in a shuffled
order, one at a time; the hit ratio is HITs over all lookups. Then the sim rotates for real, to a
fingerprint never seen; once a new prompt (a MISS) has taught the proxy the rotation, every
prompt is asked once more: a proxy that follows the rotation answers all of them under the new
fingerprint (`followed`). (Before its first MISS after a rotation no proxy can know of it; the
probe, --probe-interval, bounds that time.)

    python bench/alternation.py [--prompts N] [--rounds N] [--fingerprints 2]

Hit ratios do not depend on timing, so a busy machine gives the same figures; only the draw of
fingerprints does, which `--seed` fixes for the shuffles (the sim's draw is its own).
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass

import httpx
from procs import free_port, process

AUTH = {"Authorization": "Bearer sk-bench"}
CONFIGS = {
    "today: grace 0, no flap window": [
        "--fingerprint-grace",
        "0",
        "--fingerprint-flap-window",
        "0",
    ],
    "grace 600": ["--fingerprint-grace", "600", "--fingerprint-flap-window", "0"],
    "flap window 600 (default)": ["--fingerprint-grace", "0", "--fingerprint-flap-window", "600"],
}


@dataclass(frozen=True, slots=True)
class Result:
    hit_ratio: float
    followed: float


def body(index: int) -> dict[str, object]:
    content = f"question {index}"
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "seed": 7}


def measure(sim: str, flags: list[str], ns: argparse.Namespace, rng: random.Random) -> Result:
    """One fresh proxy: `ns.rounds` rounds while the sim alternates, then a real rotation."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    names = [f"fp_alt_{i}" for i in range(ns.fingerprints)]
    prompts = ns.prompts
    httpx.post(f"{sim}/_sim/fingerprint", json={"fingerprints": names}).raise_for_status()
    args = ["serve", "--port", str(port), "--upstream", f"{sim}/v1", *flags]
    hits = lookups = 0
    with process(args, f"{url}/healthz"), httpx.Client(base_url=url, headers=AUTH) as client:
        for _ in range(ns.rounds):
            order = list(range(prompts))
            rng.shuffle(order)
            for index in order:
                answer = client.post("/v1/chat/completions", json=body(index))
                answer.raise_for_status()
                lookups += 1
                hits += answer.headers["X-Repro-Cache"] == "HIT"
        httpx.post(f"{sim}/_sim/fingerprint", json={"fingerprint": "fp_rotated"})
        client.post("/v1/chat/completions", json=body(prompts))  # a MISS: the proxy learns it
        served = [
            client.post("/v1/chat/completions", json=body(i)).headers["X-Repro-Fingerprint"]
            for i in range(prompts)
        ]
    return Result(hits / lookups, served.count("fp_rotated") / prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fingerprints", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    ns = parser.parse_args()
    rng = random.Random(ns.seed)
    port = free_port()
    sim = f"http://127.0.0.1:{port}"
    results = {}
    with process(["sim", "--port", str(port)], f"{sim}/_sim/stats"):
        for name, flags in CONFIGS.items():
            results[name] = measure(sim, flags, ns, rng)
    ideal = 1 - 1 / ns.rounds
    print(f"{ns.prompts} prompts x {ns.rounds} rounds, {ns.fingerprints} fingerprints at random")
    print(f"  {'configuration':<34}{'hit ratio':>10}{'followed':>10}   (ideal {ideal:.2f})")
    for name, result in results.items():
        print(f"  {name:<34}{result.hit_ratio:>10.3f}{result.followed:>10.2f}")


if __name__ == "__main__":
    main()
