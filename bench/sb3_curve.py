"""SB3's SAC learning curve on one of our envs, evaluated as our trainer evaluates (deterministic, its eval seed).

Same network (256x256), batch 256, one update per env step after the same random steps. Rows like eval.jsonl's.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sb3_curve.py --env furuta:swingup --steps 26000 --out FILE.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("MUJOCO_GL", "disable")


def main() -> None:
    from stable_baselines3.common.callbacks import BaseCallback

    from sb3_env import GymEnv, sb3_sac  # beside this script
    from robot_app.learner.training import EVAL_SEED_OFFSET
    from sim.envs import evaluate_returns, make_env

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env", default="furuta:swingup")
    parser.add_argument("--steps", type=int, default=26_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random-steps", type=int, default=4_000)
    parser.add_argument("--eval-every", type=int, default=2_000)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    eval_env = make_env(args.env, args.seed + EVAL_SEED_OFFSET)
    started = time.perf_counter()

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % args.eval_every == 0:
                returns = evaluate_returns(eval_env, lambda o: self.model.predict(o, deterministic=True)[0],
                                           args.eval_episodes)
                row = {"env_step": self.num_timesteps, "return_mean": sum(returns) / len(returns),
                       "wall_s": time.perf_counter() - started, "returns": returns}
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"env step {row['env_step']}: return {row['return_mean']:.1f} at {row['wall_s'] / 60:.1f} min",
                      flush=True)
            return True

    model = sb3_sac(GymEnv(args.env, args.seed), args.random_steps, args.seed)
    model.learn(total_timesteps=args.steps, callback=Evaluate())


if __name__ == "__main__":
    main()
