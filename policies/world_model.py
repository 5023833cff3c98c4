"""The planning artifact: one decision of the planner (model, actor, critic, normaliser inside) as one ONNX graph,
with pi's own policy artifact inside its metadata, the robot's fallback when a plan misses its deadline."""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime
import logging
import os
import warnings

import numpy as np
import torch

from policies.export import DeployedPolicy, actor_artifact, weights_sha256
from policies.planner import PlannerConfig, PlanningGraph
from policies.sac_svg import SACSVG
from robot_app.common.artifact import (
    PLAN_INPUTS, PLAN_OUTPUTS, WORLD_METADATA_KEY, WORLD_POLICY_KEY, ArtifactError, WorldModelMetadata,
)
from robot_app.common.files import write_atomic

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-4  # in units of the action's half-range, on the first action and the final mean


def export_world_model(agent: SACSVG, path: str | os.PathLike, *, env: str, obs_layout, action_layout, action_low,
                       action_high, action_repeat: int, training_step: int, source_run: str,
                       planner: PlannerConfig = PlannerConfig(), parity_decisions: int = 8,
                       seed: int = 0) -> WorldModelMetadata:
    """Write the planning artifact atomically: the graph of `PlanningGraph` over a copy of the agent, its shapes
    fixed by `planner`; raise ArtifactError if torch and onnxruntime plan differently."""
    import onnxruntime

    horizon = planner.horizon or agent.config.horizon
    graph = PlanningGraph(copy.deepcopy(agent).cpu().eval(), planner, horizon)
    metadata = WorldModelMetadata(
        env=env, obs_layout=[(name, int(width)) for name, width in obs_layout], action_layout=list(action_layout),
        action_low=[float(v) for v in action_low], action_high=[float(v) for v in action_high],
        action_repeat=action_repeat, training_step=training_step, source_run=source_run, gamma=agent.config.gamma,
        alpha=float(graph.alpha), planner={**dataclasses.asdict(planner), "horizon": horizon},
        weights_sha256=weights_sha256(graph),
        exported_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    generator = torch.Generator().manual_seed(seed)
    log.info("exporting the planner (N=%d, K=%d, I=%d, H=%d) to ONNX ...", planner.samples, planner.elites,
             planner.iterations, horizon)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, decision_inputs(metadata, graph, generator), input_names=list(PLAN_INPUTS),
                                    output_names=list(PLAN_OUTPUTS), dynamo=True, external_data=False, verbose=False)
    fallback, _ = actor_artifact(DeployedPolicy(agent.normalizer, agent.actor, action_low, action_high), env=env,
                                 obs_layout=obs_layout, action_layout=action_layout, action_repeat=action_repeat,
                                 training_step=training_step, source_run=source_run, horizon=agent.config.horizon)
    proto = program.model_proto
    proto.metadata_props.add(key=WORLD_METADATA_KEY, value=metadata.to_json())
    proto.metadata_props.add(key=WORLD_POLICY_KEY, value=base64.b64encode(fallback).decode())
    data = proto.SerializeToString()

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    error = 0.0
    for _ in range(parity_decisions):
        inputs = decision_inputs(metadata, graph, generator)
        with torch.no_grad():
            expected = [out.numpy() for out in graph(*inputs)]
        got = session.run(list(PLAN_OUTPUTS), dict(zip(PLAN_INPUTS, (t.numpy() for t in inputs))))
        error = max(error, *(float(np.max(np.abs(g - e))) for g, e in zip(got, expected)))  # actions: unit range
    if not error < PARITY_TOLERANCE:
        raise ArtifactError(f"planner parity check failed: max |torch - onnxruntime| = {error:.3g} >= "
                            f"{PARITY_TOLERANCE} (of the action's half-range)")
    write_atomic(path, data)
    log.info("exported %s (parity max error %.3g, sha256 %s)", path, error, metadata.weights_sha256[:12])
    return metadata


def decision_inputs(metadata: WorldModelMetadata, graph: PlanningGraph, generator: torch.Generator) -> tuple:
    """One decision's inputs: an observation spread like the normaliser's statistics, a warm start, the noise."""
    normalizer = graph.normalizer
    obs = normalizer.mean + 2.0 * torch.sqrt(normalizer.var + normalizer.eps) * torch.randn(
        metadata.obs_dim, generator=generator)
    warm = torch.rand(graph.horizon, metadata.action_dim, generator=generator) * 2.0 - 1.0
    shapes = graph.config.noise_shapes(graph.horizon, metadata.action_dim)
    return (obs, warm, *(torch.randn(shape, generator=generator) for shape in shapes.values()))
