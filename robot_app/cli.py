"""The one `robot-app` command: subcommands parse their flags here and import their heavy machinery lazily."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, then exit 2, as argparse does, without the usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def _train(args) -> int:
    from robot_app.learner.training import Trainer

    settings = {
        key: value
        for key, value in {
            "env": args.env, "horizon": args.horizon, "steps": args.steps, "seed": args.seed,
            "action_repeat": args.action_repeat, "eval_every": args.eval_every, "eval_episodes": args.eval_episodes,
            "random_steps": args.random_steps, "checkpoint_every": args.checkpoint_every,
        }.items()
        if value is not None
    }
    if not args.resume and "env" not in settings:
        raise _UsageError("--env is required for a new run")
    trainer = Trainer.open(args.out, settings, resume=args.resume, overwrite=args.overwrite)
    summary = trainer.run()
    print(
        f"trained {trainer.config.env} H={trainer.config.horizon} for {summary['env_steps']} env steps "
        f"({summary['updates']} updates); evaluation return {summary['eval_return']:.1f} "
        f"over {trainer.config.eval_episodes} episodes; run folder {trainer.out}"
    )
    return 0


def _evaluate(args) -> int:
    import numpy as np

    from robot_app.learner.training import evaluate_returns, load_agent
    from sim.envs import make_env

    if Path(args.target).suffix == ".onnx":
        from robot_app.agent.policy_runner import OnnxPolicy

        policy = OnnxPolicy(args.target)
        meta = policy.metadata
        env = make_env(meta.env, args.seed, meta.action_repeat)
        policy.check_compatible(env.spec.obs_dim, env.spec.action_dim)
        low, high = np.asarray(meta.action_low), np.asarray(meta.action_high)
        returns = evaluate_returns(env, lambda obs: 2.0 * (policy(obs) - low) / (high - low) - 1.0, args.episodes)
        name = meta.env
    else:
        loaded = load_agent(args.target)
        env = make_env(loaded.config.env, args.seed, loaded.config.action_repeat)
        returns = evaluate_returns(env, lambda obs: loaded.agent.act(obs, deterministic=True), args.episodes)
        name = loaded.config.env
    print(f"{name}: return {np.mean(returns):.1f} ± {np.std(returns):.1f} over {args.episodes} episodes "
          f"(min {np.min(returns):.1f}, max {np.max(returns):.1f})")
    return 0


def _export(args) -> int:
    from robot_app.learner.training import export_run

    meta = export_run(args.target, args.out)
    print(f"exported {args.out}: obs_dim={meta.obs_dim} action_dim={meta.action_dim} "
          f"step={meta.training_step} sha256={meta.weights_sha256}")
    return 0


class _UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="robot-app", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train SAC-SVG(H) on a simulated task")
    train.add_argument("--env", help="e.g. dmc:cartpole-swingup")
    train.add_argument("--horizon", type=int, help="model expansion steps H; 0 is SAC (default 3)")
    train.add_argument("--steps", type=int, help="simulator env steps (default 50000)")
    train.add_argument("--seed", type=int)
    train.add_argument("--action-repeat", type=int, help="default: per-domain (cartpole 8, reacher 4, ...)")
    train.add_argument("--eval-every", type=int, help="env steps between evaluations (default 5000)")
    train.add_argument("--eval-episodes", type=int, help="deterministic episodes per evaluation (default 10)")
    train.add_argument("--random-steps", type=int, help="env steps of random actions before learning (default 4000)")
    train.add_argument("--checkpoint-every", type=int, help="env steps between checkpoints (default 10000)")
    train.add_argument("--out", required=True, help="run folder")
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --out")
    mode.add_argument("--overwrite", action="store_true", help="replace whatever run is in --out")
    train.set_defaults(handler=_train)

    evaluate = sub.add_parser("evaluate", help="deterministic episodes of a run, checkpoint or .onnx policy")
    evaluate.add_argument("target", metavar="RUN_OR_CHECKPOINT")
    evaluate.add_argument("--episodes", type=int, default=10)
    evaluate.add_argument("--seed", type=int, default=2024)
    evaluate.set_defaults(handler=_evaluate)

    export = sub.add_parser("export", help="export a run's deterministic actor to ONNX (with a parity check)")
    export.add_argument("target", metavar="RUN_OR_CHECKPOINT")
    export.add_argument("--out", required=True, help="the .onnx file to write")
    export.set_defaults(handler=_export)
    return parser


def _one_line(error: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']} (got {e.get('input')!r})" for e in error.errors()
        )
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from pydantic import ValidationError

    from policies.artifact import ArtifactError

    expected: tuple[type[Exception], ...] = (_UsageError, ValidationError, ArtifactError, ValueError, OSError)
    try:
        if args.command in ("train", "evaluate", "export"):
            from policies.checkpoint import CheckpointError
            from robot_app.learner.training import RunError, TrainingDiverged

            expected += (CheckpointError, RunError)
            try:
                return args.handler(args)
            except TrainingDiverged as error:
                print(f"robot-app: training stopped: {error}", file=sys.stderr)
                return 1
        return args.handler(args)
    except expected as error:
        print(f"robot-app {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robot-app: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
