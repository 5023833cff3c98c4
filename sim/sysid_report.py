"""The identification report: the fitted values against the datasheet's, and measured against simulated held-out
windows, as Markdown with PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robot_app.robot.physics import PhysicsOverlay
from sim.sysid import Fit, Recording, count_rad

SHOWN_WINDOWS = 4  # held-out windows plotted, from the first log


def write_sysid_report(folder: str | Path, physics: PhysicsOverlay, fit: Fit, recordings: list[Recording]) -> Path:
    """report.md and held_out.png in `folder`; returns report.md's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    floor = physics.quantisation_floor_counts
    joints = ("arm", "pendulum")
    lines = [f"# System identification of {physics.robot_id} ({physics.robot})", "",
             f"{physics.created}; {physics.method}. Fitted in {physics.fit_seconds:.0f} s from "
             f"{', '.join(physics.logs)}.", "",
             "| parameter | nominal | fitted | 95% interval (±) | fitted / nominal |", "|---|---|---|---|---|"]
    for name, p in physics.parameters.items():
        ratio = f"{p.value / p.nominal:.3f}" if p.nominal else "-"
        lines.append(f"| {name} | {p.nominal:.4g} | {p.value:.4g} | "
                     f"{p.interval_95:.2g}{'' if p.interval_95 else ' (weighed)'} | {ratio} |")
    lines += [f"| dead zone (V), negative, positive | | {physics.dead_zone_v[0]:.3f}, {physics.dead_zone_v[1]:.3f} "
              "| | |", f"| arm spring zero (rad) | 0 | {physics.arm_spring_zero_rad:.4f} | | |", "",
              "Held-out RMSE, counts (each window's start state refitted, the physics held):", "",
              "| joint | fitted | datasheet | quantisation floor | fitted / floor |", "|---|---|---|---|---|"]
    for joint, held, nominal in zip(joints, physics.held_out_rmse_counts, physics.datasheet_held_out_rmse_counts):
        lines.append(f"| {joint} | {held:.3f} | {nominal:.2f} | {floor:.3f} | {held / floor:.2f} |")
    lines += ["", "The plant latency is the command's mean delay, as fitted, less half the control jitter found in the "
              "residuals.", "",
              "![held-out windows](held_out.png)"]
    _plot(folder / "held_out.png", fit, recordings[0])
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _plot(path: Path, fit: Fit, recording: Recording) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    starts, fitted, nominal = fit.held_out_starts[0], fit.held_out_errors[0], fit.nominal_held_out_errors[0]
    counts = count_rad(recording)
    figure, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    for start, f, n in list(zip(starts, fitted, nominal))[:SHOWN_WINDOWS]:
        t = (start + np.arange(fit.window)) * recording.period_s
        measured = recording.angles[start:start + fit.window]
        for joint in range(2):
            axes[0, joint].plot(t, measured[:, joint], "k", lw=1.5, label="measured" if start == starts[0] else None)
            axes[0, joint].plot(t, measured[:, joint] + f[:, joint] * counts[joint], "tab:blue", lw=0.8,
                                label="fitted" if start == starts[0] else None)
            axes[0, joint].plot(t, measured[:, joint] + n[:, joint] * counts[joint], "tab:orange", lw=0.8, ls="--",
                                label="datasheet" if start == starts[0] else None)
            axes[1, joint].plot(t, f[:, joint], "tab:blue", lw=0.8)
            axes[1, joint].plot(t, n[:, joint], "tab:orange", lw=0.8, ls="--")
    for joint, name in enumerate(("arm", "pendulum")):
        axes[0, joint].set_title(f"{name}, held-out windows")
        axes[0, joint].set_ylabel("angle (rad)")
        axes[1, joint].set_ylabel("simulated - measured (counts)")
        axes[1, joint].set_xlabel("time (s)")
        axes[0, joint].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
