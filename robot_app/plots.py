"""`robot-app plot`: PNG curves of a training run (eval.jsonl, metrics.jsonl) or a demo (learner/progress.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path


def read_rows(path: Path) -> list[dict]:
    """The rows of a JSONL file (none if it is missing); a bad line is a ValueError naming the file and line."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not a JSON row ({error.msg})") from None
    return rows


def plot_folder(folder: str | Path) -> list[Path]:
    """Write the folder's curves into <folder>/plots/ and return their paths, the learning curve first."""
    import matplotlib

    matplotlib.use("Agg")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(2, "no such folder", str(folder))
    progress = read_rows(folder / "progress.jsonl") or read_rows(folder / "learner" / "progress.jsonl")
    evaluations, metrics = read_rows(folder / "eval.jsonl"), read_rows(folder / "metrics.jsonl")
    if not (progress or evaluations or metrics):
        raise ValueError(f"{folder} holds no curves: give a training run's folder (eval.jsonl, metrics.jsonl), a "
                         "learner's --out (progress.jsonl) or a demo folder (learner/progress.jsonl)")
    (folder / "plots").mkdir(exist_ok=True)
    if progress:
        return _demo_plots(progress, folder / "plots")
    return _run_plots(evaluations, metrics, folder / "plots")


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def _demo_plots(progress: list[dict], plots: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    rows = [r for r in progress if r["recent_return"] is not None]
    figure, (by_transitions, by_updates) = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
    by_transitions.plot([r["transitions"] for r in rows], [r["recent_return"] for r in rows])
    by_transitions.set(xlabel="transitions", ylabel="return (mean of the last 10 episodes)", ylim=(0, 400))
    by_updates.plot([r["updates"] for r in rows], [r["recent_return"] for r in rows])
    by_updates.set(xlabel="updates")
    figure.suptitle("the robot's episode returns as it learns (400: balanced all episode)")
    paths = [_save(figure, plots / "learning.png")]

    figure, (rate, ratio) = plt.subplots(1, 2, figsize=(10, 3.5))
    pairs = list(zip(progress, progress[1:]))
    rate.plot([b["elapsed_s"] / 60 for _, b in pairs],
              [(b["updates"] - a["updates"]) / max(b["elapsed_s"] - a["elapsed_s"], 1e-9) for a, b in pairs])
    rate.set(xlabel="minutes", ylabel="updates/s")
    shown = [r for r in progress if r.get("updates_per_transition") is not None]
    ratio.plot([r["transitions"] for r in shown], [r["updates_per_transition"] for r in shown], label="kept up")
    if shown:
        ratio.axhline(shown[-1]["configured_updates_per_transition"], linestyle="--", color="grey", label="configured")
    ratio.set(xlabel="transitions", ylabel="updates per transition")
    ratio.legend()
    paths.append(_save(figure, plots / "progress.png"))
    paths.append(_losses([{"update": r["updates"], **r.get("losses", {})} for r in progress], plots))
    return paths


def _run_plots(evaluations: list[dict], metrics: list[dict], plots: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = []
    if evaluations:
        figure, axis = plt.subplots(figsize=(6, 3.5))
        steps = [r["env_step"] for r in evaluations]
        axis.plot(steps, [r["return_mean"] for r in evaluations], label="mean")
        axis.fill_between(steps, [r["return_min"] for r in evaluations], [r["return_max"] for r in evaluations],
                          alpha=0.3, label="min-max")
        axis.set(xlabel="env steps", ylabel="deterministic return", title="evaluation")
        axis.legend()
        paths.append(_save(figure, plots / "evaluation.png"))
    if metrics:
        figure, axis = plt.subplots(figsize=(6, 3.5))
        axis.plot([r["env_step"] for r in metrics], [r["updates_per_s"] for r in metrics])
        axis.set(xlabel="env steps", ylabel="updates/s (since the run started)", title="progress")
        paths.append(_save(figure, plots / "progress.png"))
        paths.append(_losses(metrics, plots))
    return paths


def _losses(rows: list[dict], plots: Path) -> Path:
    import matplotlib.pyplot as plt

    names = sorted({k for r in rows for k in r} - {"update", "env_step", "updates_per_s"})
    figure, axes = plt.subplots(max(len(names), 1), 1, figsize=(7, 1.6 * max(len(names), 1)), sharex=True,
                                squeeze=False)
    for axis, name in zip(axes[:, 0], names):
        shown = [r for r in rows if name in r]
        axis.plot([r["update"] for r in shown], [r[name] for r in shown])
        axis.set_ylabel(name, fontsize=8)
    axes[-1, 0].set_xlabel("updates")
    return _save(figure, plots / "losses.png")
