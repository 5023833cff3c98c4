"""The one `robot-app` command: subcommands parse their flags here and import their heavy machinery lazily."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, then exit 2, as argparse does, without the usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {value}")
    return value


def _above_zero(text: str, zero_allowed: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not (value >= 0 if zero_allowed else value > 0) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number {'of 0 or more' if zero_allowed else 'above 0'}, "
                                         f"got {text}")
    return value


def _zero_or_more(text: str) -> float:
    return _above_zero(text, zero_allowed=True)


_SERIAL_PORT_HELP = "serial port: /dev/ttyUSB0, a virtual robot's pty, or socket://HOST:PORT (--listen)"


def _host_port(text: str) -> str:
    """HOST:PORT to bind (robot_app.common.addresses), checked here and split where it is bound."""
    from robot_app.common.addresses import split_host_port

    try:
        split_host_port(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _endpoint(text: str) -> str:
    """A ZeroMQ endpoint this program can bind or connect: tcp://HOST:PORT or ipc://PATH."""
    host, sep, port = text.removeprefix("tcp://").rpartition(":")
    if text.startswith("ipc://") and len(text) > len("ipc://"):
        return text
    if text.startswith("tcp://") and sep and host and (port == "*" or port.isdigit() and int(port) < 65536):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a ZeroMQ endpoint: give tcp://HOST:PORT or ipc://PATH")


_RUN_FLAGS = ("env", "horizon", "steps", "seed", "action_repeat", "eval_every", "eval_episodes", "random_steps",
              "checkpoint_every")  # train's flags that are TrainConfig fields


def _train(args) -> int:
    from robot_app.learner.training import Trainer

    settings = {name: getattr(args, name) for name in _RUN_FLAGS if getattr(args, name) is not None}
    if args.plan_eval:  # a switch: given, it turns planned evaluation on (a resumed run keeps what it had)
        settings["plan_eval"] = True
    if not args.resume and "env" not in settings:
        raise _UsageError("--env is required for a new run")
    trainer = Trainer.open(args.out, settings, resume=args.resume, overwrite=args.overwrite)
    # The file records the run's own defaults too, so that it reproduces the run under later defaults.
    args.settings = args.settings.model_copy(update={name: getattr(trainer.config, name)
                                                     for name in (*_RUN_FLAGS, "plan_eval")})
    _record_settings(args, trainer.out)
    summary = trainer.run()
    print(
        f"trained {trainer.config.env} H={trainer.config.horizon} for {summary['env_steps']} env steps "
        f"({summary['updates']} updates); evaluation return {summary['eval_return']:.1f} "
        f"over {trainer.config.eval_episodes} episodes; run folder {trainer.out}"
    )
    return 0


def _evaluate(args) -> int:
    import numpy as np

    from sim.envs import evaluate_artifact, evaluate_returns, make_env

    planning = _planner_settings(args, args.plan, "--plan")
    if Path(args.target).suffix == ".onnx":
        if args.plan:
            raise _UsageError("--plan needs the learned model: give the run folder or a checkpoint, not an .onnx")
        name, returns = evaluate_artifact(args.target, args.episodes, args.seed, progress="evaluating")
    else:
        from policies.planner import Planner, PlannerConfig
        from robot_app.learner.training import load_agent

        loaded = load_agent(args.target)
        env = make_env(loaded.config.env, args.seed, loaded.config.action_repeat)
        if args.plan:
            config = PlannerConfig(**planning)
            planner = Planner(loaded.agent, config, seed=args.seed)
            act, reset = planner.plan, planner.reset
            logging.getLogger(__name__).info("planning: %s", config)
        else:
            act, reset = (lambda obs: loaded.agent.act(obs, deterministic=True)), None
        returns = evaluate_returns(env, act, args.episodes, progress="evaluating", reset=reset)
        name = f"{loaded.config.env}{' (planned)' if args.plan else ''}"
    print(f"{name}: return {np.mean(returns):.1f} ± {np.std(returns):.1f} over {args.episodes} episodes "
          f"(min {np.min(returns):.1f}, max {np.max(returns):.1f})")
    return 0


PLANNER_DEFAULTS = {"samples": 256, "iterations": 4, "elites": 32}  # PlannerConfig's, for the help without torch
DEMO_PLANNER = {"samples": 128, "iterations": 3, "elites": 32}  # what fits a 50 Hz period on one core (BENCHMARKS)
PLANNER_HELP = {"samples": "action sequences per decision", "iterations": "refits per decision",
                "elites": "sequences each refit keeps", "horizon": "steps planned"}


def _planner_settings(args, on: bool, flag: str, prefix: str = "") -> dict:
    """The planner flags given (--samples, --iterations, --elites, --horizon, each after `prefix`), which only `flag`
    makes sense of."""
    settings = {name: getattr(args, (prefix + name).replace("-", "_")) for name in PLANNER_HELP}
    settings = {name: value for name, value in settings.items() if value is not None}
    if settings and not on:
        raise _UsageError(f"--{', --'.join(prefix + name for name in settings)} set the planner: add {flag}")
    return settings


def _add_planner_arguments(parser: argparse.ArgumentParser, flag: str, prefix: str = "",
                           defaults: dict[str, int] = PLANNER_DEFAULTS) -> None:
    """--samples, --iterations, --elites, --horizon (each after `prefix`, e.g. plan-): the planner's settings."""
    for name, text in PLANNER_HELP.items():
        default = defaults.get(name, "the model's SVG horizon")
        parser.add_argument(f"--{prefix}{name}", type=_positive, help=f"{flag}: {text} (default: {default})")


def _export(args) -> int:
    from robot_app.learner.training import export_run

    planning = _planner_settings(args, args.planning, "--planning")
    logging.getLogger(__name__).info("loading %s", args.target)
    if args.planning:
        from policies.planner import PlannerConfig

        meta = export_run(args.target, args.out, PlannerConfig(**planning))
        print(f"exported the planning artifact {args.out}: {meta.planner} step={meta.training_step} "
              f"sha256={meta.weights_sha256}")
        return 0
    meta = export_run(args.target, args.out)
    print(f"exported {args.out}: obs_dim={meta.obs_dim} action_dim={meta.action_dim} "
          f"step={meta.training_step} sha256={meta.weights_sha256}")
    return 0


def _virtual_robot(args) -> int:
    from robot_app.common.addresses import split_host_port
    from robot_app.robot.spec import Parameter, load_robot_spec
    from sim.virtual_robot import Faults, Variation, VirtualRobot, load_variation, write_audit

    spec = load_robot_spec(args.robot).with_rate(args.rate)
    variation = load_variation(args.truth) if args.truth else Variation()
    _, widen, physics = _physics(args)
    if physics is not None:  # a fitted unit: its values (unless --truth says otherwise), and --randomise draws around
        spec = physics.narrow(spec, widen)
        if not args.truth:
            values, device = spec.split_draws({name: p.value for name, p in physics.parameters.items()})
            variation = Variation(physics=values, plant_latency_s=device[Parameter.PLANT_LATENCY],
                                  jitter_s=device[Parameter.CONTROL_JITTER], dead_zone_v=physics.dead_zone_v)
    faults = Faults(args.corrupt_rate, args.drop_rate, args.latency_ms / 1e3, args.hang_after, args.disconnect_after,
                    args.estop_after, args.reboot_after)
    if args.randomise and not args.lockstep:
        raise _UsageError("--randomise needs --lockstep (it is for sim-first training)")
    robot = VirtualRobot(spec, lockstep=args.lockstep, faults=faults, seed=args.seed, randomise=args.randomise,
                         robot_id=args.robot_id or f"{spec.name}-virtual-0", variation=variation,
                         listen=split_host_port(args.listen) if args.listen else None, heartbeat=args.heartbeat)
    signal.signal(signal.SIGTERM, lambda *_: robot.stop())
    signal.signal(signal.SIGINT, lambda *_: robot.stop())
    signal.signal(signal.SIGUSR1, lambda *_: robot.press_estop())
    print(robot.port, flush=True)
    logging.getLogger("robot_app.virtual_robot").info(
        "%s serving on %s (%s); a status line every %g s; SIGTERM or Ctrl-C stops it", robot.robot_id, robot.port,
        "lockstep" if args.lockstep else f"realtime at {spec.control_rate_hz:g} Hz", args.status_every)
    audit = robot.serve(args.duration, status_every_s=args.status_every)
    if args.audit_out:
        write_audit(audit, args.audit_out)
    logging.getLogger("robot_app.virtual_robot").info(
        "stopped: %d commands, %d limit violations, %d rate violations, %d watchdog trips, %d hard-stop arrivals%s",
        audit.commands, audit.limit_violations, audit.rate_violations, audit.watchdog_trips,
        len(audit.hard_stop_speeds),
        f" (at {', '.join(f'{v:.3f}' for v in audit.hard_stop_speeds)} rad/s)" if audit.hard_stop_speeds else "")
    return 0


def _calibrate(args) -> int:
    from calibration.encoders import CALIBRATION_DIR, load_calibration, save_calibration
    from calibration.procedures import STEPS, DirectionController, response_signs, run_step
    from robot_app.hardware.serial_robot import SerialRobot
    from robot_app.robot.spec import load_robot_spec

    spec = load_robot_spec(args.robot)
    out_dir = Path(args.out_dir or CALIBRATION_DIR)
    unit_file = out_dir / f"{args.robot_id}.yaml" if args.robot_id else None
    source = args.calibration or (unit_file if unit_file and unit_file.is_file() else spec.name)
    calibration = load_calibration(source, robot=spec.name)
    if args.robot_id and calibration.robot_id not in (None, args.robot_id):
        raise _UsageError(f"{source} is unit {calibration.robot_id!r}'s calibration, not {args.robot_id!r}'s")
    expected = None
    steps = [step for step in STEPS if step in (args.step or STEPS)]
    if "direction" in steps:
        from sim.furuta import pulse_response

        trace = pulse_response(spec, DirectionController.PULSE_V, DirectionController.PULSE_S, 0.7)
        expected = response_signs(trace, spec.period_s)[0]
    print(f"calibrating from {source}: {', '.join(steps)}")
    for step in steps:
        calibration, outcome = run_step(step, SerialRobot(args.port, args.baud), spec, calibration, expected)
        path = save_calibration(calibration, out_dir)
        print(f"{step}: {'; '.join(outcome.checks) or 'checks not passed'}\n  measured: "
              f"{json.dumps(outcome.measured, default=float)}\n  written to {path}")
        if outcome.stop:
            print(f"{step}: stopped: {outcome.stop}", file=sys.stderr)
            return 1
    return 0


def _excite(args) -> int:
    from calibration.encoders import load_calibration
    from calibration.excitation import run_excitation
    from robot_app.hardware.serial_robot import SerialRobot
    from robot_app.robot.spec import load_robot_spec

    spec = load_robot_spec(args.robot).with_rate(args.rate)
    calibration = load_calibration(args.calibration, robot=spec.name)
    log = run_excitation(SerialRobot(args.port, args.baud), spec, calibration, args.out, seconds=args.seconds,
                         volts=args.volts, seed=args.seed, swing_s=args.swing_seconds)
    print(f"excitation of {calibration.robot_id}: {args.swing_seconds:g} s of swing and {args.seconds:g} s of "
          f"signal at {spec.control_rate_hz:g} Hz, up to {args.volts:g} V, recorded in {log} (how: {log}.json)")
    return 0


def _sysid(args) -> int:
    import yaml

    from robot_app.common.files import write_atomic
    from robot_app.robot.spec import Parameter, load_robot_spec
    from sim.sysid import identify, load_recording, overlay
    from sim.sysid_report import write_sysid_report

    spec = load_robot_spec(args.robot)
    weighed = {}
    for item in args.weighed or []:
        name, _, value = item.partition("=")
        span = spec.randomisation.get(name)
        if span is None or span.parameter is not Parameter.BODY_MASS:
            masses = sorted(n for n, s in spec.randomisation.items() if s.parameter is Parameter.BODY_MASS)
            raise _UsageError(f"--weighed {item}: not a mass of the {spec.name} spec's table ({', '.join(masses)})")
        try:
            weighed[name] = float(value)
        except ValueError:
            raise _UsageError(f"--weighed {item}: give NAME=KILOGRAMS, e.g. arm_mass=0.095") from None
        if not weighed[name] > 0:
            raise _UsageError(f"--weighed {item}: a mass is above 0 kg")
    recordings = [load_recording(path) for path in args.logs]
    units, periods = sorted({r.robot_id for r in recordings}), sorted({r.period_s for r in recordings})
    if len(units) > 1:
        raise _UsageError(f"the logs are of different units ({', '.join(units)}): identify one unit at a time")
    if len(periods) > 1:
        raise _UsageError(f"the logs were recorded at different control periods ({periods} s): fit one rate at a time")
    spec = spec.with_rate(1.0 / periods[0])  # the rate the log was recorded at (excite --rate)
    out = Path(args.out)
    report_folder = Path(args.report or out.with_suffix(".report"))
    for path in (out, report_folder):
        if path.exists() and not args.overwrite:
            raise _UsageError(f"{path} exists: choose another --out or --report, or pass --overwrite")
    print(f"identifying {units[0]} from {len(recordings)} log(s), "
          f"{sum(len(r.angles) for r in recordings) * spec.period_s:.0f} s of data")
    fit = identify(spec, recordings, weighed, max_iter=args.max_iter)
    physics = overlay(spec, recordings, weighed, fit)
    write_atomic(out, (f"# {spec.name} unit {physics.robot_id}'s physics, fitted by robot-app sysid: "
                       f"robot-app validate --physics {out.name} draws around it\n"
                       + yaml.safe_dump(physics.model_dump(mode="json"), sort_keys=False)).encode())
    report = write_sysid_report(report_folder, physics, fit, recordings)
    for name, p in physics.parameters.items():
        print(f"  {name}: {p.value:.4g} ± {p.interval_95:.2g} (nominal {p.nominal:.4g})")
    print(f"  dead zone: {physics.dead_zone_v[0]:.3f} V negative, {physics.dead_zone_v[1]:.3f} V positive")
    print(f"  held-out RMSE {', '.join(f'{v:.3f}' for v in physics.held_out_rmse_counts)} counts (datasheet "
          f"{', '.join(f'{v:.2f}' for v in physics.datasheet_held_out_rmse_counts)}; quantisation floor "
          f"{physics.quantisation_floor_counts:.3f}) in {fit.seconds:.0f} s")
    print(f"written to {out}; report: {report}")
    return 0


def _agent(args) -> int:
    from calibration.encoders import load_calibration
    from robot_app.agent.loading import load_policy
    from robot_app.agent.policy_runner import ExploringPolicy, OnnxPolicy, SampledPolicy
    from robot_app.agent.runtime import Agent
    from robot_app.agent.transition_log import TransitionLog
    from robot_app.common.logs import format_counts
    from robot_app.hardware.serial_robot import SerialRobot
    from robot_app.robot.spec import load_robot_spec
    from robot_app.robot.task import make_task

    if args.sample and args.explore:  # exclusive on the command line; a settings file could give both
        raise _UsageError("give --sample (the policy's own exploration) or --explore SIGMA, not both")
    spec = load_robot_spec(args.robot).with_rate(args.rate)
    calibration = load_calibration(args.calibration or spec.name, robot=spec.name)
    obs_layout = make_task(spec).obs_layout
    limits = spec.command_limits

    if args.learner and not (args.trusted_key or args.accept_unsigned):
        raise _UsageError("a robot that takes policies from a learner needs --trusted-key (the gate's .sign_pub), "
                          "or --accept-unsigned on a development box")
    trusted_key = None
    if args.trusted_key:
        from robot_app.common.signing import load_trusted_key

        trusted_key = load_trusted_key(args.trusted_key)
    elif args.accept_unsigned:
        logging.getLogger(__name__).warning("loading policies WITHOUT signature checks: development only")

    def checked_policy(name_or_path: str):
        deadline = args.plan_deadline_ms / 1e3 if args.plan_deadline_ms else None
        policy = load_policy(name_or_path, spec, obs_layout, seed=args.seed, trusted_key=trusted_key,
                             plan_deadline_s=deadline)
        if args.sample and isinstance(policy, OnnxPolicy):
            return SampledPolicy(policy, seed=args.seed)
        return ExploringPolicy(policy, args.explore, *limits, seed=args.seed) if args.explore else policy

    policy = checked_policy(args.policy)
    if args.learner and not args.robot_id:
        raise _UsageError("--learner needs --robot-id (the robot's key name and the id its device reports)")
    from robot_app.common.schedule import pin_to_cpus, request_realtime_priority

    if args.cpus:
        pin_to_cpus({int(cpu) for cpu in args.cpus.split(",")})
    if args.realtime_priority is not None:
        request_realtime_priority(args.realtime_priority)
    if args.port.startswith("/") and not Path(args.port).exists():  # before the log and the settings are written
        raise _UsageError(f"no serial port at {args.port} (is the robot plugged in? a virtual robot prints its pty)")
    with TransitionLog(args.log) as transitions:  # closed last, whatever fails: it commits what it holds
        _record_settings(args, Path(args.log).parent)
        agent = Agent(SerialRobot(args.port, args.baud), spec, calibration, policy, transitions,
                      status_every_s=args.status_every, expected_robot_id=args.robot_id, lockstep_pace_hz=args.pace,
                      outbox_limit=args.outbox_limit, heartbeat=args.heartbeat)
        link = link_thread = None
        if args.learner:
            import threading

            from robot_app.transport.robot_link import RobotLink

            security = _security_files(args, (f"{args.robot_id}.key_secret", "learner.key"))
            link = RobotLink(transitions, args.learner, args.robot_id, security, announcements=args.announcements,
                             policy_dir=Path(args.log).parent / "policies", load_policy=checked_policy,
                             on_policy=agent.request_policy, running_version=lambda: agent.policy.version,
                             agent=agent)
            agent.credit = lambda: link.credit_through  # lockstep: paced by the learner's updates
            link_thread = threading.Thread(target=link.run, name="robot-link", daemon=True)
            link_thread.start()
        signal.signal(signal.SIGTERM, lambda *_: agent.request_stop("SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: agent.request_stop("SIGINT"))
        signal.signal(signal.SIGUSR1, lambda *_: agent.request_estop("signal SIGUSR1"))
        signal.signal(signal.SIGUSR2, lambda *_: agent.request_estop_reset())
        try:
            summary = agent.run(episodes=args.episodes, duration_s=args.duration)
        finally:  # the link reads the log, so it stops before the log closes
            if link is not None:
                link.stop()
                link_thread.join(timeout=10)
    if args.summary_out:
        Path(args.summary_out).write_text(summary.model_dump_json(indent=1))
    print(f"agent stopped ({summary.stop_reason}): {summary.episodes} episodes, "
          f"{summary.transitions} transitions logged to {args.log}; interventions {format_counts(summary.interventions)}")
    if summary.failure:
        print(f"robot-app agent: stopped on a fault, after a safe stop: {summary.failure}", file=sys.stderr)
        return 1
    return 0


def _security_files(args, names: tuple[str, ...]) -> tuple[Path, ...] | None:
    """The CURVE files under --keys: this process's own secret first (or --secret-key), then its peers' public keys."""
    if args.insecure_local_dev:
        return None
    if not args.keys:
        raise _UsageError("give --keys DIR (see `robot-app keys`), or --insecure-local-dev for plaintext on a dev box")
    own, *peers = names
    return (Path(args.secret_key) if args.secret_key else Path(args.keys) / own, *(Path(args.keys) / p for p in peers))


def _learner(args) -> int:
    import threading

    if args.signing_key:
        _require_extras("sim")  # the gate runs MuJoCo
    from robot_app.common.logs import format_counts
    from robot_app.common.reports import DeploymentOptions, LearnerOptions
    from robot_app.learner.service import serve_learner
    from robot_app.robot.spec import load_robot_spec

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.torch_threads is not None:
        if args.torch_threads < 1:
            raise _UsageError(f"--torch-threads must be at least 1, got {args.torch_threads}")
        import torch

        torch.set_num_threads(args.torch_threads)
    planning = _planner_settings(args, args.plan, "--plan", "plan-")
    options = LearnerOptions(horizon=args.horizon, warmup=args.warmup, candidate_every=args.candidate_every,
                             seed=args.seed, planner=planning if args.plan else None)
    deployment = None
    if args.registry:
        deployment = DeploymentOptions(registry=args.registry, signing_key=args.signing_key,
                                       gate_config=args.gate_config, gate_episodes=args.gate_episodes,
                                       explore_below_bar=args.explore_below_bar, auto_deploy=args.auto_deploy)
    elif args.signing_key or args.auto_deploy or args.explore_below_bar:
        raise _UsageError("--signing-key, --auto-deploy and --explore-below-bar need --registry")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    _record_settings(args, args.out)
    security = _security_files(args, ("learner.key_secret", "allowed", *(("dashboards",) if args.dashboard else ())))
    summary = serve_learner(load_robot_spec(args.robot), args.out, args.listen, args.announce, security,
                            args.push_candidates, options, stop, duration_s=args.duration,
                            deployment_options=deployment, dashboard_endpoint=args.dashboard,
                            metrics_address=args.metrics)
    print(f"learner stopped: {summary['transitions']} transitions, {summary['updates']} updates, "
          f"{summary['candidates']} candidates; messages rejected: {format_counts(summary['rejected'])}")
    return 0


def _print_verdict(report) -> None:
    from robot_app.common.logs import format_counts
    from robot_app.robot.spec import load_robot_spec
    from sim.gate import bar_set, joint_rows

    print(f"{report.version or report.artifact}: {'PASSED' if report.passed else 'REJECTED'}")
    for reason in report.reasons:
        print(f"  - {reason}")
    m, bars = report.metrics, report.config
    if m is not None:
        print(f"  task ({bar_set(bars)} bars): return mean {m.return_mean:.1f} (bar {bars['min_return_mean']:g}), "
              f"p10 {m.return_p10:.1f} (bar {bars['min_return_p10']:g}), min {m.return_min:.1f}; success "
              f"{m.success_rate:.2f} (bar {bars['min_success_rate']:g})")
        print(f"  safety: interventions {format_counts(m.interventions)}; violations {m.wire_violations} at the wire "
              f"and {m.joint_violations} at the joints")
        for name, position, limit, velocity, velocity_limit in joint_rows(m, load_robot_spec(report.robot)):
            print(f"  {name}: max |position| {position} (limit {limit}), max |velocity| {velocity} rad/s "
                  f"(limit {velocity_limit})")
        print(f"  {len(report.episodes)} episodes in {report.wall_s:.1f} s on {report.workers} workers")


def _validate(args) -> int:
    import mujoco  # noqa: F401  (the gate's episodes need it: without the sim extra, fail here, not in each worker)

    from robot_app.agent.loading import load_policy
    from robot_app.robot.spec import load_robot_spec
    from robot_app.robot.task import make_task
    from sim.gate import load_gate_config, validate, write_report

    config = load_gate_config(args.gate_config, episodes=args.episodes, seed=args.seed, workers=args.workers)
    physics, widen, _ = _physics(args)
    spec = load_robot_spec(args.robot)
    load_policy(args.policy, spec, make_task(spec).obs_layout)  # a file that is no policy for this robot: exit 2
    report = validate(args.policy, args.robot, config, progress=True, physics=physics, widen=widen)
    folder = write_report(report, args.report or Path(args.policy).with_suffix(".validation"))
    _print_verdict(report)
    print(f"report: {folder}/report.md")
    return 0 if report.passed else 1


def _policies(args) -> int:
    from robot_app.common.logs import shown
    from robot_app.learner.registry import PolicyRegistry

    physics, widen, _ = _physics(args, applies=args.action == "validate")
    if args.action in ("add", "show", "validate", "deploy") and not args.target:
        raise _UsageError(f"policies {args.action} needs a {'file' if args.action == 'add' else 'version'} "
                          f"(`robot-app policies list --registry {args.registry}` shows the versions)")
    if args.action == "add":  # a policy for another robot or task stays out, and so does a registry for it
        from robot_app.agent.loading import load_policy
        from robot_app.robot.spec import load_robot_spec
        from robot_app.robot.task import make_task

        if not Path(args.target).is_file():
            raise _UsageError(f"no policy file at {args.target}")
        spec = load_robot_spec(args.robot)
        load_policy(args.target, spec, make_task(spec).obs_layout)
    registry = PolicyRegistry(args.registry, create=args.action == "add")
    actor = args.actor
    if args.action == "list":
        rows = [_policy_row(p) for p in registry.list()]
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        print(f"{'version':<16}  {'state':<10}  {'step':>8}  {'return':>6}  {'success':>7}  {'updated (UTC)':<20}  source")
        for r in rows:
            print(f"{r['version']:<16}  {r['state']:<10}  {r['training_step']:>8}  "
                  f"{shown(r['return_mean'], '.1f'):>6}  {shown(r['success_rate'], '.2f'):>7}  {r['updated_at']:<20}  "
                  f"{r['source_run']}")
    elif args.action == "add":
        known = {p.version for p in registry.list()}
        record = registry.add_candidate(args.target, actor)
        if record.version in known:
            print(f"{record.version} is already in the registry ({record.state}); nothing added")
        else:
            print(f"{record.version} added as a candidate")
    elif args.action == "show":
        record = registry.get(args.target)
        row, history = _policy_row(record), registry.history(args.target)
        if args.json:
            print(json.dumps({**row, "history": history}, indent=1))
            return 0
        width = max(map(len, row))
        for key, value in row.items():
            print(f"{key:<{width}}  {'-' if value is None or value == '' else value}")
        if record.report:
            print(f"report: {record.report.get('folder')}/report.md")
        for move in history:
            print(f"  {move['at']}  {move['from_state'] or '-'} -> {move['to_state']}  by {move['actor']}: "
                  f"{move['reason']}")
    elif args.action == "validate":
        from robot_app.common.signing import load_signing_key
        from sim.gate import gate_candidate, load_gate_config

        if not args.signing_key:
            raise _UsageError("validate needs --signing-key (the gate's .sign_key from `robot-app keys gate --signing`)")
        report = gate_candidate(registry, args.target, load_signing_key(args.signing_key),
                                load_gate_config(args.gate_config, episodes=args.episodes), args.robot, actor,
                                progress=True, physics=physics, widen=widen)
        _print_verdict(report)
        return 0 if report.passed else 1
    elif args.action == "deploy":
        print(f"{registry.deploy(args.target, actor).version} deployed; the learner pushes it to the robots")
    elif args.action == "rollback":
        print(f"rolled back to {registry.rollback(actor).version}; the learner pushes it to the robots")
    return 0


def _policy_row(record) -> dict:
    """A registry record for people and scripts: its fields, and its validation's headline figures (None before)."""
    metrics = ((record.report or {}).get("metrics")) or {}
    row = {k: v for k, v in dataclasses.asdict(record).items() if k != "report"}
    return {**row, "return_mean": metrics.get("return_mean"), "success_rate": metrics.get("success_rate"),
            "report": (record.report or {}).get("folder")}


def _demo(args) -> int:
    from robot_app.demo import run_demo

    def interrupt(*_):  # SIGTERM (what `kill` and docker send) stops the demo's processes too, as Ctrl-C does
        for name in (signal.SIGTERM, signal.SIGINT):  # once: a second signal must not cut that stop short
            signal.signal(name, signal.SIG_IGN)
        raise KeyboardInterrupt

    if args.dashboard_port:
        _require_extras("dashboard")
    signal.signal(signal.SIGTERM, interrupt)
    planning = _planner_settings(args, args.plan, "--plan", "plan-")
    return run_demo(args.out, robots=args.robots, minutes=args.minutes, horizon=args.horizon,
                    transitions=args.transitions or None, randomise=args.randomise,
                    planner=({**DEMO_PLANNER, **planning} if args.plan else None),
                    on_fresh_folder=lambda folder: _record_settings(args, folder),
                    dashboard_port=args.dashboard_port or None)


def _plot(args) -> int:
    from robot_app.plots import plot_folder

    for path in plot_folder(args.folder):
        print(path)
    return 0


def _episodes(args) -> int:
    from robot_app.episodes import export, plot_episode
    from robot_app.robot.spec import load_robot_spec

    spec = load_robot_spec(args.robot)
    if args.action == "export":
        if not args.out:
            raise _UsageError("episodes export needs --out DIR")
        transitions, episodes, rows, count = export(args.log, args.out, spec, args.format)
        print(f"wrote {transitions} ({rows} transitions) and {episodes} ({count} episodes)")
    else:
        out = args.out or Path(args.log).with_suffix(".episode.png")
        png, robot_id, episode, steps = plot_episode(args.log, spec, out, args.episode, args.robot_id)
        print(f"{png}: {robot_id} episode {episode}, {steps} steps")
    return 0


def _estop(args) -> int:
    _check_agent_process(args.pid)
    os.kill(args.pid, signal.SIGUSR2 if args.reset else signal.SIGUSR1)
    print(f"{'e-stop reset' if args.reset else 'e-stop'} sent to agent pid {args.pid}")
    return 0


def _dashboard(args) -> int:
    if args.dashboard_command == "token":
        return _dashboard_token(args)
    from robot_app.dashboard import server
    from robot_app.dashboard.app import DashboardConfig, create_app
    from robot_app.dashboard.feed import LearnerFeed
    from robot_app.dashboard.tokens import TokenStore
    from robot_app.robot.spec import load_robot_spec

    security = _security_files(args, ("dashboard.key_secret", "learner.key"))
    spec = load_robot_spec(args.robot)
    if not TokenStore(args.state).list():
        logging.getLogger(__name__).warning("no tokens yet: `robot-app dashboard token add NAME --role operator "
                                            "--state %s` makes one", args.state)  # --state goes either side
    sock = server.bind(args.host, args.port, args.public)
    port = sock.getsockname()[1]
    config = DashboardConfig(state=Path(args.state), origins=server.origins(args.host, port, args.origin or []),
                             registry=Path(args.registry) if args.registry else None,
                             learner_out=Path(args.learner_out) if args.learner_out else None)
    app = create_app(config, LearnerFeed(args.learner, spec, security, on_update=lambda *_: None))
    print(f"dashboard on http://{server.url_host(args.host)}:{port}/ (telemetry from {args.learner})", flush=True)
    server.serve(app, sock)
    return 0


def _dashboard_token(args) -> int:
    from robot_app.dashboard.tokens import TokenStore

    if args.action == "list":
        for entry in TokenStore(args.state).list():
            print(f"{entry['name']:24} {entry['role']:9} {entry['created_at']}")
        return 0
    if not args.name:
        raise _UsageError(f"token {args.action} needs the token's NAME")
    if args.action == "remove":
        TokenStore(args.state).remove(args.name)
        print(f"removed token {args.name}", file=sys.stderr)
        return 0
    if not args.role:
        raise _UsageError("token add needs --role viewer, operator or admin")
    token = TokenStore(args.state).add(args.name, args.role)
    print(f"token {args.name} ({args.role}) added to {args.state}/tokens.json; it is shown this once. Open the "
          "dashboard's URL with #token=<it> appended, or send it as `Authorization: Bearer <it>`:", file=sys.stderr)
    print(token)
    return 0


def _health(args) -> int:
    from robot_app.common.health import Unhealthy, probe

    try:
        print(f"healthy: {probe(args.target, args.max_age, args.timeout)}")
    except Unhealthy as error:
        print(f"unhealthy: {error}", file=sys.stderr)
        return 1
    return 0


def _check_agent_process(pid: int) -> None:
    """Refuse to signal a process that is not a `robot-app agent`: SIGUSR1's default action kills a process."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        raise _UsageError(f"no process {pid}") from None
    except OSError as error:
        raise _UsageError(f"cannot read the command line of process {pid}: {error.strerror}") from None
    args = [w.decode(errors="replace") for w in words if w]
    program = next((i for i, a in enumerate(args) if Path(a).name == "robot-app" or a == "robot_app.cli"), None)
    if program is None or "agent" not in args[program + 1:]:
        raise _UsageError(f"process {pid} is not a robot-app agent ({' '.join(args)[:80]!r}); nothing sent")


def _keys(args) -> int:
    if args.signing:
        from robot_app.common.signing import generate_signing_keys as generate_keys
    else:
        from robot_app.transport.keys import generate_keys

    public, secret = generate_keys(args.dir, args.name)
    print(f"wrote {public} (public: give it to the peer) and {secret} (secret: keep it on this machine, mode 600)")
    return 0


class _UsageError(Exception):
    pass


def _add_link_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keys", help="CURVE key folder (see `robot-app keys`)")
    parser.add_argument("--secret-key", metavar="FILE",
                        help="this process's CURVE secret, kept apart from the public --keys, e.g. a secret mounted at "
                             "/run/secrets/ (default KEYS/<its name>.key_secret)")
    parser.add_argument("--insecure-local-dev", action="store_true",
                        help="plaintext ZeroMQ, for a development box only")


# The commands that take --config and ROBOT_APP_<COMMAND>_<FLAG> variables (a container's environment); their runs
# record what they resolved.
LONG_RUNNING = ("train", "learner", "agent", "demo", "dashboard", "virtual-robot")


def _add_physics_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    from robot_app.robot.physics import WIDEN

    parser.add_argument("--physics", metavar="YAML", help=f"{prefix}draw the episodes around a unit's fitted physics "
                                                          "(robot-app sysid's overlay) instead of the datasheet ranges")
    parser.add_argument("--widen", type=_above_zero,
                        help=f"{prefix}with --physics: draw within this many 95%% intervals of each fitted value "
                             f"(default {WIDEN:g})")


def _physics(args, applies: bool = True):
    """--physics and --widen, checked before anything starts: (the overlay's path, the widening, the overlay, which
    loads and fits the robot); the path and the overlay are None without --physics."""
    from robot_app.robot.physics import WIDEN, load_physics
    from robot_app.robot.spec import load_robot_spec

    if args.physics and not applies:
        raise _UsageError(f"--physics is for policies validate, not policies {args.action}")
    if args.widen is not None and not args.physics:
        raise _UsageError("--widen widens a fitted overlay's intervals: it needs --physics")
    widen = WIDEN if args.widen is None else args.widen
    if not args.physics:
        return None, widen, None
    overlay = load_physics(args.physics)
    overlay.narrow(load_robot_spec(args.robot), widen)
    return args.physics, widen, overlay


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


def _resolve_settings(parser: argparse.ArgumentParser, args, argv: list[str]) -> argparse.Namespace:
    from robot_app.settings import given_on_command_line, resolve

    given = given_on_command_line(build_parser(), argv)  # a parser of its own: it suppresses that one's defaults
    settings = resolve(args.command, _subcommand(parser, args.command), given, args.config)
    return argparse.Namespace(**{**vars(args), **settings.model_dump()}, settings=settings)


def _record_settings(args, folder) -> None:
    from robot_app.settings import record

    logging.getLogger(__name__).info("settings recorded in %s", record(args.settings, args.command, folder))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("robot_app")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="robot-app", description="Train a robot's policies in simulation or online from the robot, "
                     "validate them in MuJoCo before any robot runs them, and drive the robot with the safety-"
                     "supervised agent. `robot-app COMMAND --help` tells more of each.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"robot-app {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    train = sub.add_parser("train", help="train SAC-SVG(H) on a simulated task")
    train.add_argument("--env", help="e.g. dmc:cartpole-swingup")
    train.add_argument("--horizon", type=int, help="model expansion steps H; 0 is SAC (default 3)")
    train.add_argument("--plan-eval", action="store_true",
                       help="at each evaluation, also evaluate with CEM-MPC planning over the model (in eval.jsonl)")
    train.add_argument("--steps", type=_positive, help="simulator env steps (default 50000)")
    train.add_argument("--seed", type=int)
    train.add_argument("--action-repeat", type=_positive, help="default: per-domain (cartpole 8, reacher 4, ...)")
    train.add_argument("--eval-every", type=_positive, help="env steps between evaluations (default 5000)")
    train.add_argument("--eval-episodes", type=_positive, help="deterministic episodes per evaluation (default 10)")
    train.add_argument("--random-steps", type=int,
                       help="env steps of random actions before learning (default: 4000, or a quarter of --steps)")
    train.add_argument("--checkpoint-every", type=_positive, help="env steps between checkpoints (default 10000)")
    train.add_argument("--out", required=True, help="run folder")
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --out")
    mode.add_argument("--overwrite", action="store_true", help="replace whatever run is in --out")
    train.set_defaults(handler=_train)

    evaluate = sub.add_parser("evaluate", help="deterministic episodes of a run, checkpoint or .onnx policy")
    evaluate.add_argument("target", metavar="RUN_OR_CHECKPOINT")
    evaluate.add_argument("--episodes", type=_positive, default=10)
    evaluate.add_argument("--seed", type=int, default=2024)
    evaluate.add_argument("--plan", action="store_true",
                          help="act by CEM-MPC planning over the run's learned model (a run or checkpoint only)")
    _add_planner_arguments(evaluate, "--plan")
    evaluate.set_defaults(handler=_evaluate)

    export = sub.add_parser("export", help="export a run's deterministic actor to ONNX (with a parity check)")
    export.add_argument("target", metavar="RUN_OR_CHECKPOINT")
    export.add_argument("--out", required=True, help="the .onnx file to write")
    export.add_argument("--planning", action="store_true",
                        help="export the planning artifact instead: the model, actor, critic and the CEM-MPC planner "
                             "in one graph, its shapes fixed by the planner flags")
    _add_planner_arguments(export, "--planning")
    export.set_defaults(handler=_export)

    virtual = sub.add_parser("virtual-robot", help="simulate a robot behind the serial protocol on a pty (or "
                                                         "--listen TCP); prints its path")
    virtual.add_argument("--robot", default="furuta", help="robot name or spec .yaml (default furuta)")
    virtual.add_argument("--lockstep", action="store_true", help="advance one control period per command")
    virtual.add_argument("--rate", type=_above_zero, help="control rate in Hz (default: the spec's)")
    virtual.add_argument("--seed", type=int, default=0)
    virtual.add_argument("--randomise", action="store_true",
                         help="lockstep: draw the unit's physics anew from the spec's randomisation ranges each time "
                              "it comes to rest hanging, between episodes (domain randomisation for sim-first training)")
    virtual.add_argument("--robot-id", help="the id the device reports in HELLO")
    virtual.add_argument("--listen", type=_host_port, metavar="HOST:PORT",
                         help="serve on TCP instead of a pty, one host at a time (the next is accepted when it "
                              "leaves); hosts give --port socket://HOST:PORT")
    virtual.add_argument("--heartbeat", metavar="FILE",
                         help="touch this file at start and at every status line, for a healthcheck (robot-app health)")
    virtual.add_argument("--truth", metavar="YAML",
                         help="how this unit hides its differences from the spec, for calibration to recover: a .yaml "
                              "file or inline YAML, e.g. '{count_offsets: [3, -2], count_directions: [1, -1], "
                              "hard_stops: [-2.2, 2.3], dead_zone_v: [0.3, 0.4], physics: {motor_gain: 0.0052}}'")
    _add_physics_arguments(virtual)
    virtual.add_argument("--duration", type=float, help="seconds to run (default: until SIGTERM/SIGINT)")
    virtual.add_argument("--audit-out", help="write the device-side audit (JSON) here at exit")
    virtual.add_argument("--status-every", type=float, default=10.0, help="seconds between status lines on stderr")
    faults = virtual.add_argument_group("fault injection (device -> host)")
    faults.add_argument("--corrupt-rate", type=float, default=0.0, help="per-byte bit-flip probability")
    faults.add_argument("--drop-rate", type=float, default=0.0, help="per-frame drop probability")
    faults.add_argument("--latency-ms", type=float, default=0.0, help="added to every frame")
    faults.add_argument("--hang-after", type=float, help="seconds until the device stops responding")
    faults.add_argument("--disconnect-after", type=float, help="seconds until the device closes its port")
    faults.add_argument("--estop-after", type=float, help="seconds until the device's e-stop button is pressed")
    faults.add_argument("--reboot-after", type=float,
                        help="seconds until the firmware restarts (session lost, motor off, clock and seqs from 0)")
    virtual.set_defaults(handler=_virtual_robot)

    calibrate = sub.add_parser("calibrate", help="measure a unit's calibration through the agent and its "
                                                 "supervisor: encoder zero, direction, travel limits, dead zone")
    calibrate.add_argument("--port", required=True, help=_SERIAL_PORT_HELP)
    calibrate.add_argument("--robot", default="furuta", help="robot name or spec .yaml (default furuta)")
    calibrate.add_argument("--step", action="append", choices=["zero", "direction", "travel", "dead_zone"],
                           help="run only this step (repeatable); default all, in the order zero, direction, travel, "
                                "dead_zone")
    calibrate.add_argument("--robot-id", help="the unit: its calibration in --out-dir is where the steps start from")
    calibrate.add_argument("--calibration", help="start from this calibration .yaml instead (default: the unit's, "
                                                 "else the robot's nominal calibration/<robot>.yaml)")
    calibrate.add_argument("--out-dir", help="where <robot id>.yaml is written, earlier versions kept under history/ "
                                             "(default: the calibration/ folder)")
    calibrate.add_argument("--baud", type=int, default=921_600)
    calibrate.set_defaults(handler=_calibrate)

    excite = sub.add_parser("excite", help="drive a calibrated unit with a pendulum swing, then a chirp plus random "
                                           "steps, through the agent and its supervisor, and record it for system "
                                           "identification")
    excite.add_argument("--port", required=True, help=_SERIAL_PORT_HELP)
    excite.add_argument("--robot", default="furuta", help="robot name or spec .yaml (default furuta)")
    excite.add_argument("--calibration", required=True, help="the unit's calibration .yaml (directions confirmed)")
    excite.add_argument("--out", required=True, help="the transition log to record into (a new .sqlite file)")
    excite.add_argument("--seconds", type=_above_zero, default=40.0, help="length of the chirp and steps (default 40)")
    excite.add_argument("--swing-seconds", type=_zero_or_more, default=20.0,
                        help="length of the pendulum's swing before them, which identifies its damping (default 20; "
                             "0: none)")
    excite.add_argument("--volts", type=_above_zero, default=3.0, help="the most it commands (default 3 V)")
    excite.add_argument("--seed", type=int, default=0, help="seed of the random steps")
    excite.add_argument("--rate", type=_above_zero, help="control rate in Hz, where the device allows (default: the "
                                                         "spec's)")
    excite.add_argument("--baud", type=int, default=921_600)
    excite.set_defaults(handler=_excite)

    sysid = sub.add_parser("sysid", help="fit a unit's MuJoCo physics to its excitation logs (mujoco.sysid); writes "
                                         "the overlay validate --physics draws around, and a report")
    sysid.add_argument("logs", nargs="+", help="excitation logs from robot-app excite (each with its .json)")
    sysid.add_argument("--out", required=True, help="the fitted physics overlay to write (.yaml)")
    sysid.add_argument("--robot", default="furuta", help="robot name or spec .yaml (default furuta)")
    sysid.add_argument("--weighed", action="append", metavar="NAME=KG",
                       help="a mass the scale measured, e.g. arm_mass=0.0951 (repeatable); masses are weighed, not "
                            "fitted: without this they keep their MJCF values")
    sysid.add_argument("--report", help="report folder (default: OUT's name with .report)")
    sysid.add_argument("--max-iter", type=_positive, default=30, help="Gauss-Newton iterations at most (default 30)")
    sysid.add_argument("--overwrite", action="store_true", help="replace OUT and its report if they exist")
    sysid.set_defaults(handler=_sysid)

    agent = sub.add_parser("agent", help="the headless on-robot loop: sensors -> policy -> safety -> motor, logged")
    agent.add_argument("--port", required=True, help=_SERIAL_PORT_HELP)
    agent.add_argument("--robot", default="furuta", help="robot name or spec .yaml (default furuta)")
    agent.add_argument("--policy", required=True, help="an exported .onnx, or zero|random for bring-up")
    agent.add_argument("--calibration", help="calibration .yaml (default calibration/<robot>.yaml)")
    agent.add_argument("--rate", type=_above_zero, help="control rate in Hz (default: the spec's)")
    agent.add_argument("--baud", type=int, default=921_600)
    agent.add_argument("--log", default="runs/agent/transitions.sqlite", help="the durable transition log")
    agent.add_argument("--outbox-limit", type=int, default=2_000_000,
                       help="undelivered rows at which no new episode starts until the learner catches up")
    agent.add_argument("--episodes", type=_positive, help="stop after this many episodes")
    agent.add_argument("--duration", type=float, help="stop after this many seconds")
    agent.add_argument("--status-every", type=float, default=5.0, help="seconds between status lines on stderr")
    agent.add_argument("--summary-out", help="write the run summary (JSON) here at exit")
    agent.add_argument("--heartbeat", metavar="FILE",
                       help="touch this file on connecting and at every status line, for a healthcheck (robot-app "
                            "health FILE)")
    agent.add_argument("--realtime-priority", type=int, metavar="1-99",
                       help="run the loop under SCHED_FIFO at this priority, memory locked (needs CAP_SYS_NICE)")
    agent.add_argument("--cpus", help="pin the agent to these CPUs, e.g. 1 or 2,3")
    agent.add_argument("--pace", type=float, metavar="HZ", help="against a lockstep device, step at most this often")
    agent.add_argument("--robot-id", help="refuse a device reporting another id; also this robot's key name")
    explore = agent.add_mutually_exclusive_group()
    explore.add_argument("--sample", action="store_true",
                         help="learning on the robot: sample each action from the ONNX policy's stochastic actor "
                              "(SAC's own exploration), seeded by --seed; `zero`, `random` and planning artifacts "
                              "run as they are")
    explore.add_argument("--explore", type=float, default=0.0,
                         help="bring-up: add Gaussian noise of this many half-ranges to every action")
    _add_link_arguments(agent)
    agent.add_argument("--trusted-key", help="the gate's public signing key (.sign_pub): ONNX policies must carry "
                                             "its signature in <file>.sig")
    agent.add_argument("--accept-unsigned", action="store_true",
                       help="load ONNX policies without signature checks, for a development box only")
    agent.add_argument("--learner", type=_endpoint, help="the learner's ingest endpoint, e.g. tcp://10.0.0.2:5555")
    agent.add_argument("--announcements", type=_endpoint, help="the learner's policy announcement endpoint")
    agent.add_argument("--seed", type=int, default=0)
    agent.add_argument("--plan-deadline-ms", type=_above_zero,
                       help="a planning artifact's time per decision before pi's own action goes instead (default: "
                            "3/4 of the control period)")
    agent.set_defaults(handler=_agent)

    learner = sub.add_parser("learner", help="the learner service: ingest robots' transitions, train, publish")
    learner.add_argument("--robot", default="furuta", help="robot name or spec .yaml (default furuta)")
    learner.add_argument("--out", required=True, help="folder for the ingest store, checkpoints and candidates")
    learner.add_argument("--listen", type=_endpoint, default="tcp://127.0.0.1:5555",
                         help="ingest endpoint (default tcp://127.0.0.1:5555)")
    learner.add_argument("--announce", type=_endpoint, default="tcp://127.0.0.1:5556",
                         help="policy announcement endpoint (default tcp://127.0.0.1:5556)")
    learner.add_argument("--dashboard", type=_endpoint, metavar="ENDPOINT",
                         help="where operators' dashboards subscribe to telemetry and send software stops, e.g. "
                              "tcp://127.0.0.1:5557; with CURVE, KEYS/dashboards/*.key are the dashboards admitted")
    learner.add_argument("--metrics", type=_host_port, metavar="HOST:PORT",
                         help="serve Prometheus /metrics here, e.g. 127.0.0.1:9101")
    learner.add_argument("--push-candidates", action="store_true",
                         help="publish every candidate straight to the robots, unvalidated (development only)")
    learner.add_argument("--registry", help="the policy registry folder: candidates enter it, and its deployed "
                                            "policy is what the robots are offered")
    learner.add_argument("--signing-key", help="run the sim-validation gate on each new candidate and sign what "
                                               "passes (the gate's .sign_key)")
    learner.add_argument("--gate-config", help="gate thresholds (default sim/gate.yaml)")
    learner.add_argument("--gate-episodes", type=int, help="episodes per validation (default from the config)")
    learner.add_argument("--auto-deploy", action="store_true",
                         help="deploy each candidate the gate validates (off by default: an operator deploys)")
    learner.add_argument("--explore-below-bar", action="store_true",
                         help="learning from scratch: validate candidates on every safety check, but on the gate "
                              "config's `exploring` task bars, so robots explore with policies that do not balance yet "
                              "(their reports still give the success rate)")
    learner.add_argument("--horizon", type=int, default=3)
    learner.add_argument("--plan", action="store_true",
                         help="export planning artifacts as candidates: the robots plan with CEM-MPC over the model, "
                              "and the gate validates them in planned episodes")
    _add_planner_arguments(learner, "--plan", "plan-")
    learner.add_argument("--warmup", type=int, default=1000, help="transitions before the first update")
    learner.add_argument("--candidate-every", type=int, default=500, help="updates between candidate exports")
    learner.add_argument("--duration", type=float, help="seconds to run (default: until SIGTERM/SIGINT)")
    learner.add_argument("--seed", type=int, default=0)
    learner.add_argument("--torch-threads", type=int, metavar="N",
                         help="CPU threads for the updates (default: torch's, every core); the demo gives 1, leaving "
                              "the other cores to the robots and the gate")
    _add_link_arguments(learner)
    learner.set_defaults(handler=_learner)

    validate = sub.add_parser("validate", help="run the sim-validation gate on an ONNX policy; exit 1 on rejection")
    validate.add_argument("policy", help="an exported ONNX policy")
    validate.add_argument("--robot", default="furuta")
    validate.add_argument("--gate-config", help="gate thresholds (default sim/gate.yaml)")
    validate.add_argument("--episodes", type=_positive)
    validate.add_argument("--seed", type=int)
    validate.add_argument("--workers", type=_positive, help="parallel episodes (default: every core)")
    validate.add_argument("--report", help="report folder (default: POLICY's name with .validation)")
    _add_physics_arguments(validate)
    validate.set_defaults(handler=_validate)

    policies = sub.add_parser("policies", help="the policy registry: list, add, show, validate, deploy, rollback")
    policies.add_argument("action", choices=["list", "add", "show", "validate", "deploy", "rollback"])
    policies.add_argument("target", nargs="?", help="a version (show, validate, deploy) or an ONNX file (add)")
    policies.add_argument("--registry", default="registry", help="the registry folder (default registry/)")
    policies.add_argument("--actor", default=f"cli:{os.environ.get('USER', 'operator')}",
                          help="who makes the move, for the history")
    policies.add_argument("--signing-key", help="validate: the gate's secret signing key (.sign_key)")
    policies.add_argument("--gate-config", help="validate: gate thresholds (default sim/gate.yaml)")
    policies.add_argument("--episodes", type=_positive, help="validate: episodes (default from the config)")
    policies.add_argument("--robot", default="furuta", help="the robot the registry's policies drive (default furuta)")
    policies.add_argument("--json", action="store_true", help="list, show: JSON for scripts")
    _add_physics_arguments(policies, "validate: ")
    policies.set_defaults(handler=_policies)

    demo = sub.add_parser("demo", help="train the virtual Furuta online through serial and ZeroMQ, end to end")
    demo.add_argument("--out", default="runs/demo", help="the demo's folder: logs, keys, registry, plots (default "
                                                         "runs/demo)")
    demo.add_argument("--robots", type=_positive, default=1, help="virtual robots, each with its own agent")
    demo.add_argument("--transitions", type=int, default=36_000,
                      help="the budget: transitions the learner takes (default 36000; 0: until --minutes)")
    demo.add_argument("--minutes", type=float, default=20.0, help="a cap on the wall time (default 20)")
    demo.add_argument("--horizon", type=int, default=1,
                      help="the learner's SVG horizon; 0 is SAC (default 1: cheaper updates than H=3 on a CPU, with "
                           "most of its sample advantage over SAC; docs/BENCHMARKS.md has the figures)")
    demo.add_argument("--randomise", action=argparse.BooleanOptionalAction, default=True,
                      help="draw each virtual robot's physics anew between episodes from the ranges the gate draws "
                           "from (domain randomisation; default on: the robot learns on what the gate judges)")
    demo.add_argument("--dashboard-port", type=_port, default=8000,
                      help="serve the operator's dashboard on 127.0.0.1 at this port (default 8000, or a free one if "
                           "it is taken; 0: no dashboard, the demo runs headless)")
    demo.add_argument("--plan", action="store_true",
                      help="the robots plan with CEM-MPC over the learned model, within their control period "
                           "(the learner exports, and the gate validates, planning artifacts)")
    _add_planner_arguments(demo, "--plan", "plan-", defaults=DEMO_PLANNER)
    demo.set_defaults(handler=_demo)

    plot = sub.add_parser("plot", help="PNG curves of a training run or a demo folder, beside its files")
    plot.add_argument("folder", metavar="RUN_OR_DEMO_DIR")
    plot.set_defaults(handler=_plot)

    keys = sub.add_parser("keys", help="generate a CURVE key pair for the learner or a robot, or a signing pair")
    keys.add_argument("name", help="'learner', or the robot's id (the learner maps keys to robots by this name)")
    keys.add_argument("--dir", default="keys", help="where to write NAME.key and NAME.key_secret (default keys/)")
    keys.add_argument("--signing", action="store_true",
                      help="an Ed25519 policy-signing pair instead: NAME.sign_key (the gate's) and NAME.sign_pub "
                           "(for robots' --trusted-key)")
    keys.set_defaults(handler=_keys)

    episodes = sub.add_parser("episodes", help="an agent's or the learner's recorded transitions: export a table, or "
                                               "plot an episode")
    episodes.add_argument("action", choices=["export", "plot"])
    episodes.add_argument("log", metavar="LOG", help="an agent's transition log (--log) or a learner's ingest.sqlite")
    episodes.add_argument("--out", help="export: the folder for transitions and episodes tables; plot: the PNG "
                                        "(default: beside LOG)")
    episodes.add_argument("--format", choices=["csv", "parquet"], default="csv", help="export: the table format")
    episodes.add_argument("--episode", type=int, help="plot: the episode (default: the last recorded)")
    episodes.add_argument("--robot-id", help="plot: the robot, in a learner's store of several")
    episodes.add_argument("--robot", default="furuta", help="robot name or spec .yaml, for column names and limits")
    episodes.set_defaults(handler=_episodes)

    dashboard = sub.add_parser("dashboard", help="the operator's web dashboard: live fleet, learning, registry, "
                                                 "deploys, software stop; `dashboard token add` makes its tokens",
                               description="Serve the dashboard (loopback unless --public), or manage its tokens: "
                                           "robot-app dashboard token add NAME --role viewer|operator|admin")
    dashboard.add_argument("--state", default="dashboard", help="the dashboard's folder: tokens.json, audit.sqlite "
                                                                "(default dashboard/)")
    dashboard.add_argument("--learner", type=_endpoint, default="tcp://127.0.0.1:5557",
                           help="the learner's --dashboard endpoint (default tcp://127.0.0.1:5557)")
    dashboard.add_argument("--registry", help="the policy registry folder (the learner's --registry)")
    dashboard.add_argument("--learner-out", help="the learner's --out folder (its progress.jsonl)")
    dashboard.add_argument("--robot", default="furuta", help="robot name or spec .yaml (default furuta)")
    dashboard.add_argument("--host", default="127.0.0.1", help="interface to serve on (default 127.0.0.1)")
    dashboard.add_argument("--port", type=_port, default=8000, help="HTTP port (default 8000; 0 chooses)")
    dashboard.add_argument("--public", action="store_true",
                           help="allow a --host other than loopback (serve it behind TLS)")
    dashboard.add_argument("--origin", action="append", metavar="URL",
                           help="another Origin the page is served from, e.g. https://robots.example (repeatable)")
    _add_link_arguments(dashboard)
    dashboard.set_defaults(handler=_dashboard, dashboard_command=None)
    from robot_app.dashboard.tokens import ROLES

    dashboard_sub = dashboard.add_subparsers(dest="dashboard_command", metavar="token", parser_class=_Parser)
    token = dashboard_sub.add_parser("token", help="add, list or remove the dashboard's bearer tokens")
    token.add_argument("action", choices=["add", "list", "remove"])
    token.add_argument("--state", default=argparse.SUPPRESS, help="the dashboard's folder (default dashboard/)")
    token.add_argument("name", nargs="?", help="add, remove: the token's name (who holds it, for the audit log)")
    token.add_argument("--role", choices=ROLES,
                       help="add: viewer reads; operator also stops, resets, deploys, rolls back; admin manages tokens")

    health = sub.add_parser("health", help="a container healthcheck: exit 0 if an HTTP endpoint answers 2xx, or a "
                                           "--heartbeat file is fresh; 1 with the reason if not")
    health.add_argument("target", metavar="URL_OR_FILE", help="e.g. http://127.0.0.1:9101/metrics or a heartbeat file")
    health.add_argument("--max-age", type=_above_zero, default=30.0,
                        help="a heartbeat file older than this many seconds is unhealthy (default 30)")
    health.add_argument("--timeout", type=_above_zero, default=5.0, help="seconds an HTTP answer may take (default 5)")
    health.set_defaults(handler=_health)

    estop = sub.add_parser("estop", help="engage (or --reset) the e-stop of a running agent")
    estop.add_argument("pid", type=int, help="the agent's process id")
    estop.add_argument("--reset", action="store_true", help="release a latched e-stop")
    estop.set_defaults(handler=_estop)

    from robot_app.settings import defer_required, env_prefix

    for name in LONG_RUNNING:
        command = sub.choices[name]
        example = next(a for a in command._actions if a.option_strings and a.dest not in ("help", "config")).dest
        command.add_argument("--config", metavar="FILE.yaml",
                             help=f"settings from this YAML file, keyed by flag name (e.g. {example}: ...); flags and "
                                  f"{env_prefix(name)}<FLAG> variables override it. A run writes the settings it "
                                  f"resolved to robot-app-{name}.yaml, which feeds back here")
        defer_required(command)
    return parser


def _one_line(error: Exception) -> str:
    from pydantic import ValidationError

    from robot_app.common.files import describe_validation

    if isinstance(error, ValidationError):
        return describe_validation(error)
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


_EXTRAS = {  # what each extra brings that the commands import (pyproject.toml's optional dependencies)
    "agent": ("onnxruntime", "serial", "zmq", "msgpack", "cryptography"),
    "learner": ("torch", "onnx", "onnxscript", "onnxruntime", "tqdm", "cryptography", "zmq", "msgpack", "tensorboard",
                "pyarrow", "prometheus_client"),
    "sim": ("mujoco", "dm_control", "matplotlib", "tqdm", "colorama", "tabulate"),
    "dashboard": ("fastapi", "uvicorn", "websockets", "prometheus_client", "zmq", "msgpack"),
}


_NEEDS = {"agent": ("agent",), "calibrate": ("agent", "sim"), "excite": ("agent",), "sysid": ("agent", "sim"),
          "learner": ("learner",), "demo": ("agent", "learner", "sim"), "dashboard": ("dashboard",)}  # checked up front


class _MissingExtras(Exception):
    """Packages this install lacks, and the extras that bring them: all of them, or any one (`alternatives`)."""

    def __init__(self, modules: list[str], extras: list[str], alternatives: bool = False):
        named = (" or " if alternatives else " and ").join(f"`{extra}`" for extra in extras)
        plural = "s" if len(extras) > 1 and not alternatives else ""
        spec = extras[0] if alternatives else ",".join(extras)
        super().__init__(f"it needs {', '.join(modules)}, which this install lacks: install the {named} extra{plural} "
                         f"(pip install -e '.[{spec}]' in a checkout)")


def _require_extras(*extras: str) -> None:
    """Refuse at once, before any process or file starts, when an extra the command needs is not installed."""
    import importlib.util

    missing = {extra: [m for m in _EXTRAS[extra] if importlib.util.find_spec(m) is None] for extra in extras}
    lacking = [extra for extra in extras if missing[extra]]
    if lacking:
        raise _MissingExtras(list(dict.fromkeys(m for extra in lacking for m in missing[extra])), lacking)


_QUIET_LOGGERS = ("absl", "onnx_ir", "onnxscript", "torch.onnx", "matplotlib", "PIL")


def _quiet_third_party() -> None:
    """Third-party chatter at INFO (onnx_ir's export passes, absl's MUJOCO_GL line) says nothing to a user."""
    import warnings

    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*torchvision.*")
    logging.getLogger("torch.onnx._internal.exporter._registration").addFilter(
        lambda record: "torchvision is not installed" not in record.getMessage())  # torch's export warns of it 4 times


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _quiet_third_party()
    from pydantic import ValidationError

    from robot_app.common.artifact import ArtifactError

    expected: tuple[type[Exception], ...] = (_UsageError, _MissingExtras, ValidationError, ArtifactError, ValueError,
                                             OSError)
    try:
        if args.command in LONG_RUNNING:
            args = _resolve_settings(parser, args, sys.argv[1:] if argv is None else argv)
        _require_extras(*_NEEDS.get(args.command, ()))
        if args.command in ("agent", "learner", "dashboard"):
            import zmq

            expected += (zmq.ZMQError,)
        if args.command in ("calibrate", "excite"):
            from calibration.procedures import ProcedureError

            expected += (ProcedureError,)
        if args.command == "demo":
            from robot_app.demo import StackError

            expected += (StackError,)
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
    except BrokenPipeError:  # `robot-app ... | head`: the reader left; quiet, with a shell's status for SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit must not fail
        return 128 + signal.SIGPIPE
    except ModuleNotFoundError as error:
        module = (error.name or "").partition(".")[0]
        extras = [extra for extra, modules in _EXTRAS.items() if module in modules]
        if not extras:
            raise
        missing = _MissingExtras([module], extras, alternatives=True)
        print(f"robot-app {args.command}: error: {missing}", file=sys.stderr)
        return 2
    except expected as error:
        print(f"robot-app {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robot-app: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
