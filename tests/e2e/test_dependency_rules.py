"""DESIGN.md's dependency rules: the import contracts in pyproject.toml hold, and they hold at run time too (the agent
never imports torch/mujoco/dm_control; policies never imports zmq/fastapi/serial)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in BLOCKED:
                raise ImportError(f'{name} is blocked in this test')
    sys.meta_path.insert(0, Blocker())
    """
)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold():
    """The layers, no cycles, and the forbidden imports of pyproject.toml's [tool.importlinter], checked statically."""
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=root,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and " kept" in result.stdout


def test_importing_the_agent_pulls_in_neither_torch_nor_mujoco():
    result = run_python(
        "import sys, pkgutil, importlib, robot_app.agent, robot_app.hardware, robot_app.robot, robot_app.transport\n"
        "for pkg in (robot_app.agent, robot_app.hardware, robot_app.robot, robot_app.transport):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__): importlib.import_module(pkg.__name__ + '.' + m.name)\n"
        "heavy = sorted(m for m in ('torch', 'mujoco', 'dm_control') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    assert result.returncode == 0, result.stderr


def test_the_dashboard_serves_with_torch_mujoco_and_onnx_blocked(tmp_path):
    """The dashboard's extra has none of them: every module imports, and the app is built, without them."""
    result = run_python(
        f"BLOCKED = {{'torch', 'mujoco', 'dm_control', 'onnx', 'serial'}}\n{BLOCKER}\n"
        "import pkgutil, importlib, pathlib, robot_app.dashboard\n"
        "for m in pkgutil.iter_modules(robot_app.dashboard.__path__):\n"
        "    importlib.import_module('robot_app.dashboard.' + m.name)\n"
        "from robot_app.dashboard.app import DashboardConfig, create_app\n"
        "from robot_app.dashboard.feed import LearnerFeed\n"
        "from robot_app.robot.spec import load_robot_spec\n"
        f"config = DashboardConfig(state=pathlib.Path({str(tmp_path)!r}), origins=set())\n"
        "create_app(config, LearnerFeed('tcp://127.0.0.1:9', load_robot_spec('furuta'), None, lambda *_: None))\n"
    )
    assert result.returncode == 0, result.stderr


def test_policies_never_import_transport_or_web_libraries():
    result = run_python(
        "import sys, pkgutil, importlib, policies\n"
        "for m in pkgutil.iter_modules(policies.__path__): importlib.import_module('policies.' + m.name)\n"
        "bad = sorted(m for m in ('zmq', 'fastapi', 'serial', 'sim', 'calibration') if m in sys.modules)\n"
        "bad += sorted(m for m in sys.modules if m.startswith('robot_app.') and not m.startswith('robot_app.common'))\n"
        "assert not bad, bad\n"
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("blocked", [("torch", "mujoco", "dm_control")])
def test_agent_runs_a_policy_with_torch_and_mujoco_absent(blocked, tmp_path):
    # Export with torch in this process, then run the artifact where torch cannot be imported.
    from policies.export import DeployedPolicy, export_onnx
    from policies.networks import SquashedGaussianActor
    from policies.normalizer import RunningNormalizer

    path = tmp_path / "p.onnx"
    export_onnx(DeployedPolicy(RunningNormalizer(3), SquashedGaussianActor(3, 1, (8,)), [-1.0], [1.0]), path,
                env="e", obs_layout=[("x", 3)], action_layout=["u"], action_repeat=1, training_step=0,
                source_run="r", horizon=0)
    result = run_python(
        f"BLOCKED = {blocked!r}\n" + BLOCKER +
        "from robot_app.agent.policy_runner import OnnxPolicy\n"
        f"p = OnnxPolicy({str(path)!r}); p.check_compatible(3, 1)\n"
        "a = p([0.1, 0.2, 0.3]); assert a.shape == (1,) and -1 <= a[0] <= 1, a\n"
        "import sys; assert 'torch' not in sys.modules\n"
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("policy", ["random", "planning"])
def test_the_agent_drives_the_virtual_robot_with_torch_and_mujoco_blocked(tmp_path, policy, request):
    # The virtual robot needs mujoco; the agent process beside it may not import torch, mujoco or dm_control, also
    # with a planning artifact loaded and planning (its world model runs on onnxruntime).
    if policy == "planning":
        policy = str(request.getfixturevalue("furuta_planning_artifact"))
    robot = subprocess.Popen([sys.executable, "-m", "robot_app.cli", "virtual-robot", "--lockstep"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = robot.stdout.readline().strip()
        result = run_python(
            "BLOCKED = ('torch', 'mujoco', 'dm_control')\n" + BLOCKER +
            "import sys\nfrom robot_app.cli import main\n"
            f"code = main(['agent', '--port', {port!r}, '--policy', {policy!r}, '--episodes', '1',"
            f" '--log', {str(tmp_path / 't.sqlite')!r}])\n"
            "assert code == 0, code\nassert not {'torch', 'mujoco', 'dm_control'} & set(sys.modules)\n"
        )
    finally:
        robot.terminate()
        robot.wait(timeout=20)
    assert result.returncode == 0, result.stderr
    assert "agent stopped (1 episodes done): 1 episodes" in result.stdout
