"""Loading what a robot runs: a bring-up policy by name, or an artifact file, verified, opened and checked."""

from __future__ import annotations

from pathlib import Path

from robot_app.agent.policy_runner import ConstantPolicy, OnnxPolicy, Policy, RandomPolicy, open_session
from robot_app.agent.world_planner import PlanningPolicy
from robot_app.common.artifact import WORLD_METADATA_KEY, ArtifactError
from robot_app.robot.spec import RobotSpec

SIGNATURE_SUFFIX = ".sig"  # beside an artifact: the gate's signature of its bytes, in hex
PLAN_DEADLINE_SHARE = 0.75  # of the control period: a plan's time from the call on, before pi's goes (agent --help)


def load_policy(name_or_path: str, spec: RobotSpec, obs_layout, seed: int = 0, trusted_key=None,
                plan_deadline_s: float | None = None) -> Policy:
    """`zero`, `random`, or an ONNX file checked against the robot's task layout and command limits: a policy
    artifact, or a planning artifact (planned within `plan_deadline_s`, by default PLAN_DEADLINE_SHARE of the control
    period). With a trusted key (an Ed25519 public key), the file must carry the gate's signature in <file>.sig, or it
    is refused."""
    low, high = spec.command_limits
    if name_or_path == "zero":
        return ConstantPolicy([a.safe_command for a in spec.actuators])
    if name_or_path == "random":
        return RandomPolicy(low, high, seed)
    path = Path(name_or_path)
    if not path.is_file():
        raise ArtifactError(f"no policy file at {path}")
    data = path.read_bytes()  # read once: the bytes verified are the bytes run
    if trusted_key is not None:
        from robot_app.common.signing import verify

        signature_file = Path(name_or_path + SIGNATURE_SUFFIX)
        signature = signature_file.read_text().strip() if signature_file.is_file() else ""
        verify(data, signature, trusted_key, str(path))
    session = open_session(data, name_or_path)
    if WORLD_METADATA_KEY in session.get_modelmeta().custom_metadata_map:
        deadline = PLAN_DEADLINE_SHARE * spec.period_s if plan_deadline_s is None else plan_deadline_s
        policy = PlanningPolicy(name_or_path, session, deadline, seed)
    else:
        policy = OnnxPolicy(name_or_path, data, session)
    trained_on = policy.metadata.env
    if trained_on.partition(":")[0] != spec.name:
        raise ArtifactError(f"{name_or_path} was trained on {trained_on!r}, not on a {spec.name} task: robot "
                            f"{spec.name} and its gate take only {spec.name}:* policies (score a sim-only policy with "
                            "`robot-app evaluate`)")
    policy.check_robot(obs_layout, [a.name for a in spec.actuators], low, high)
    return policy
