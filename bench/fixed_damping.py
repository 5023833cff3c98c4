"""Feasibility probe: `robot-app train` on furuta:swingup with the pendulum's damping fixed at one value.

Can a policy swing the pendulum up on 5 V, inside the arm's limits, where the pendulum is heavily damped? The gate's
damping range reaches 10x the nominal 5e-5 N·m·s/rad; this trains a learner on one value of it, outside the stack.

    OMP_NUM_THREADS=1 .venv/bin/python bench/fixed_damping.py 2.5e-4 --horizon 0 --steps 20000 --out runs/pd-2.5e-4
"""

import sys

from robot_app.cli import main
from sim import envs
from sim.furuta import FurutaEnv


def _fixed(damping: float):
    def make(rest: str, seed: int, repeat: int | None):
        env = FurutaEnv(rest, seed, repeat)
        env.physics.randomise({"pendulum_damping": damping})
        return env
    return make


if __name__ == "__main__":
    envs.ENV_FAMILIES["furuta"] = _fixed(float(sys.argv[1]))
    sys.exit(main(["train", "--env", "furuta:swingup", *sys.argv[2:]]))
