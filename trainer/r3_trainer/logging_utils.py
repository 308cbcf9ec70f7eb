"""Run outputs: ``metrics.jsonl`` (one row per step), TensorBoard, the training plot, and the
evaluation sample table."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["MetricsLogger", "format_table", "plot_metrics", "read_metrics"]

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training.png"


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl`` file (empty if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            rows.append(json.loads(line))
    return rows


class MetricsLogger:
    """Appends step rows to ``metrics.jsonl`` and mirrors numbers to TensorBoard."""

    def __init__(
        self, output_dir: str | Path, tensorboard: bool = True, resume_step: int | None = None
    ) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.output_dir / METRICS_FILE
        if resume_step is not None:
            # Rows past the checkpoint came from the interrupted run and are redone.
            kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        elif self.path.exists():
            self.path.unlink()
        self.writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - tensorboard is a trainer dependency
                log.warning("tensorboard is not installed; TensorBoard logs are off")
            else:
                purge = resume_step + 1 if resume_step is not None else None
                self.writer = SummaryWriter(str(self.output_dir / "tensorboard"), purge_step=purge)

    def log(self, row: Mapping[str, Any]) -> None:
        """Append ``row`` (must hold ``step``) and write its numbers to TensorBoard."""
        clean = {k: _clean(v) for k, v in row.items()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
        if self.writer is not None:
            step = int(row["step"])
            for key, value in row.items():
                if (
                    key != "step"
                    and isinstance(value, (int, float))
                    and not isinstance(value, bool)
                ):
                    if math.isfinite(value):
                        self.writer.add_scalar(_tb_tag(key), value, step)
            self.writer.flush()

    def text(self, tag: str, text: str, step: int) -> None:
        """A text entry (e.g. the evaluation sample table) in TensorBoard."""
        if self.writer is not None:
            self.writer.add_text(tag, text, step)
            self.writer.flush()

    def rows(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _tb_tag(key: str) -> str:
    if key.startswith("eval_"):
        return "eval/" + key[5:]
    if key.startswith("time_") or key.endswith("_per_s"):
        return "time/" + key
    if key in ("reward_mean", "reward_std", "score_mean", "query_copy_rate"):
        return "env/" + key
    if key in ("kl", "kl_coef", "response_length_mean"):
        return "objective/" + key
    return "ppo/" + key


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], width: int = 60) -> str:
    """A Markdown table; cells are one line, cut to ``width`` characters."""

    def cell(v: Any) -> str:
        s = f"{v:.3f}" if isinstance(v, float) else str(v)
        s = " ".join(s.split()).replace("|", "\\|")
        return s if len(s) <= width else s[: width - 1] + "…"

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def plot_metrics(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> None:
    """Reward (with eval points), KL and response length per step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(int(r["step"]), r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        return [p[0] for p in pts], [float(p[1]) for p in pts]

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), dpi=80)
    # Lines carry markers so that a run of one step (one point per series) shows in every panel.
    steps, mean = series("reward_mean")
    _, std = series("reward_std")
    ax = axes[0]
    ax.plot(steps, mean, ".-", label="train", color="C0")
    if len(std) == len(mean):
        ax.fill_between(
            steps,
            [m - s for m, s in zip(mean, std)],
            [m + s for m, s in zip(mean, std)],
            color="C0",
            alpha=0.15,
            linewidth=0,
        )
    eval_steps, eval_mean = series("eval_reward_mean")
    if eval_steps:
        ax.plot(eval_steps, eval_mean, "o-", color="C3", label="held-out")
    ax.set_title("reward (mean ± std)")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(*series("kl"), ".-", color="C1", label="KL(policy ‖ ref)")
    ax.set_title("KL per response (nats)")
    ax2 = ax.twinx()
    ax2.plot(*series("kl_coef"), ".--", color="C7", linewidth=1)
    ax2.set_ylabel("β (dashed)", color="C7")
    ax2.ticklabel_format(axis="y", useOffset=False, style="plain")
    axes[2].plot(*series("response_length_mean"), ".-", color="C2")
    axes[2].set_title("response length (tokens)")
    for a in axes:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
