"""What the 20 ms tick's micro-optimisations save, side by side in one run: each against its plain form, per call.

Compare the savings with the agent's tick work (`bench/agent.py`, 165-383 µs per tick at 500 Hz on this VM): one that
saves less than that figure's run-to-run spread is not worth its code.

    .venv/bin/python bench/tick_micro.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import timeit
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "tick_micro.json"


def per_call_ns(statement, number: int = 200_000, repeat: int = 5) -> float:
    return min(timeit.repeat(statement, number=number, repeat=repeat)) / number * 1e9


def variants() -> dict[str, tuple]:
    """name: (the optimised form, the plain form), each a no-argument callable doing one tick's worth."""
    from robot_app.hardware.protocol import MessageType, SensorStatus

    status, plain_flag = int(SensorStatus.LOCKSTEP), int(SensorStatus.WATCHDOG_TRIPPED)
    by_int = {int(t): t for t in MessageType}
    by_enum = {t: t for t in MessageType}
    frame_type = int(MessageType.SENSOR)
    rng = np.random.default_rng(0)

    def blocks(draw, block=1024):
        while True:
            yield from draw(block).tolist()

    jitter = blocks(lambda n: rng.uniform(0, 0.002, n))
    noise = blocks(lambda n: rng.normal(0, 1.0, n))
    return {
        # runtime.py: status bits tested every tick against int copies of the IntFlag members
        "status flag test": (lambda: status & plain_flag, lambda: status & SensorStatus.WATCHDOG_TRIPPED),
        # protocol.parse: the payload parser looked up by a plain-int frame type, and the heartbeat test
        "parser lookup": (lambda: by_int[frame_type], lambda: by_enum[frame_type]),
        # virtual_robot: the jitter and the two encoders' noise, drawn a block at a time or each on its own
        "jitter and noise draws": (lambda: (next(jitter), next(noise), next(noise)),
                                   lambda: (float(rng.uniform(0, 0.002)), *rng.normal(0, 1.0, 2).tolist())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = {}
    for _ in range(args.rounds):
        for name, (optimised, plain) in variants().items():
            rows.setdefault(name, []).append((per_call_ns(optimised), per_call_ns(plain)))
    results = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}",
               "date": time.strftime("%Y-%m-%d"), "rounds": args.rounds, "ns_per_tick": {}}
    for name, pairs in rows.items():
        optimised, plain = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        results["ns_per_tick"][name] = {"optimised": round(optimised, 1), "plain": round(plain, 1),
                                        "saved": round(plain - optimised, 1), "plain_over_optimised":
                                        round(plain / optimised, 2)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
