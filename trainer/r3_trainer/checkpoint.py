"""Checkpoints: everything needed to continue a run exactly where it stopped.

``OUTPUT_DIR/checkpoints/step-NNNNNN/`` holds

- ``policy.pt``: the trainable weights (LoRA adapters, or the whole LM) and the value head;
- ``adapter/`` (LoRA, with the tokenizer) or, in the final checkpoint of a full fine-tune,
  ``model/``: the policy in transformers/peft format, for use outside the trainer;
- ``value_head.pt``, ``optimizer.pt``, ``scheduler.pt``;
- ``trainer_state.json``: step, data position, KL controller, score statistics, config;
- ``rng_state_<rank>.pt``: Python, NumPy and torch (CPU and CUDA) random states per process.

A checkpoint is written to ``step-NNNNNN.tmp``, synced to disk and renamed into place, so a
crash never leaves a torn one. Replacing a checkpoint of the same step first renames the old
one to ``step-NNNNNN.old``, and deletes it only once the new one is in place; :func:`recover`
(run when a trainer starts) finishes or undoes a swap that a crash interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from r3_trainer.logging_utils import PLOT_FILE

if TYPE_CHECKING:
    from r3_trainer.trainer import PPOTrainer

__all__ = [
    "begin",
    "checkpoint_dir",
    "commit",
    "find_latest",
    "get_rng_state",
    "list_checkpoints",
    "load_rng_state",
    "prune_checkpoints",
    "read_trainer_state",
    "recover",
    "resume",
    "save",
]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d+)$")
_OLD = ".old"
_TMP = ".tmp"
STATE_FILE = "trainer_state.json"
#: Settings that may differ on resume without changing what the next step computes.
RESUME_FREE = frozenset(
    {
        "steps",
        "resume",
        "output_dir",
        "save_every",
        "keep_checkpoints",
        "eval_every",
        "eval_samples",
        "tensorboard",
        "plot",
        "progress_bar",
        "reward_url",
        "api_key",
        "reward_timeout",
        "reward_max_retries",
        "reward_patience",
        "reward_backoff_max",
    }
)


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    """``OUTPUT_DIR/checkpoints/step-NNNNNN``."""
    return Path(output_dir) / "checkpoints" / f"step-{step:06d}"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``output_dir``, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _NAME.match(child.name)
        if m and (child / STATE_FILE).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def find_latest(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def prune_checkpoints(output_dir: str | Path, keep: int | None) -> None:
    """Delete all but the newest ``keep`` checkpoints (None keeps all)."""
    if keep is None or keep <= 0:
        return
    for _, path in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch random states of this process."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def load_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """The ``trainer_state.json`` of a checkpoint folder."""
    data = json.loads((Path(path) / STATE_FILE).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: bad {STATE_FILE}")
    return data


def begin(output_dir: str | Path, step: int) -> tuple[Path, Path]:
    """``(temporary folder, final folder)`` for the checkpoint of ``step``."""
    final = checkpoint_dir(output_dir, step)
    tmp = final.with_name(final.name + _TMP)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp, final


def _fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder``, and the folders themselves, to disk."""
    for path in sorted(folder.rglob("*"), reverse=True) + [folder]:
        flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def commit(tmp: Path, final: Path) -> None:
    """Move a finished temporary checkpoint into place.

    Each step leaves a state that :func:`recover` turns into a complete checkpoint:
    ``final`` (if any) is renamed to ``final.old``, ``tmp`` to ``final``, then
    ``final.old`` is deleted. Renames within one folder are atomic.
    """
    _fsync_tree(tmp)
    old = final.with_name(final.name + _OLD)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_tree(final.parent)
    shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint saved: %s", final)


def recover(output_dir: str | Path) -> None:
    """Undo what a crash during :func:`begin` / :func:`commit` left behind.

    A ``step-N.old`` whose ``step-N`` is missing goes back into place (the crash came
    between the two renames); one whose ``step-N`` exists is deleted (the crash came after
    them). Leftover ``.tmp`` folders are deleted: they were never committed.
    """
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return
    for child in sorted(root.iterdir()):
        stem, suffix = child.name[: -len(_OLD)], child.name[-len(_OLD) :]
        if suffix == _OLD and _NAME.match(stem):
            final = child.with_name(stem)
            if final.exists():
                shutil.rmtree(child)
            else:
                os.replace(child, final)
                log.warning("restored %s after an interrupted checkpoint save", final)
    for child in root.iterdir():
        if child.name.endswith(_TMP) and _NAME.match(child.name[: -len(_TMP)]):
            shutil.rmtree(child)


# -- a trainer's checkpoints -----------------------------------------------------------------


def save(trainer: PPOTrainer, rng_state: dict[str, Any] | None = None) -> Path:
    """Checkpoint the trainer's current step (``rng_state``: this process's RNG to store
    instead of the current one); every process calls it."""
    final = checkpoint_dir(trainer.output_dir, trainer.step)
    tmp = final.with_name(final.name + _TMP)
    accelerator = trainer.accelerator
    accelerator.wait_for_everyone()
    if trainer.is_main:
        begin(trainer.output_dir, trainer.step)
    accelerator.wait_for_everyone()
    torch.save(rng_state or get_rng_state(), tmp / f"rng_state_{trainer.rank}.pt")
    if trainer.is_main:
        _write(trainer, tmp)
        commit(tmp, final)
        prune_checkpoints(trainer.output_dir, trainer.cfg.keep_checkpoints)
    accelerator.wait_for_everyone()
    return final


def _write(trainer: PPOTrainer, folder: Path) -> None:
    """Weights, optimizer, scheduler, trainer state and plot into ``folder`` (main process)."""
    cfg, policy = trainer.cfg, trainer.policy
    trainable = policy.trainable_state_dict()
    torch.save(trainable, folder / "policy.pt")
    torch.save(
        {k: v for k, v in trainable.items() if k.startswith("v_head.")},
        folder / "value_head.pt",
    )
    torch.save(trainer.optimizer.state_dict(), folder / "optimizer.pt")
    torch.save(trainer.scheduler.state_dict(), folder / "scheduler.pt")
    if policy.is_peft:
        lm: Any = policy.lm
        lm.save_pretrained(folder / "adapter", save_embedding_layers=False)
        trainer.tokenizer.save_pretrained(folder / "adapter")
    elif trainer.step == cfg.steps:
        policy.hf_model().save_pretrained(folder / "model")
        trainer.tokenizer.save_pretrained(folder / "model")
    state = {
        "step": trainer.step,
        "data": trainer.stream.state_dict(),
        "kl_controller": trainer.kl_ctl.state_dict(),
        "score_moments": trainer.moments.state_dict(),
        "world_size": trainer.world,
        "config": dataclasses.asdict(cfg),
    }
    (folder / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")
    trainer.write_plot()
    plot = trainer.output_dir / PLOT_FILE
    if plot.is_file():
        shutil.copy(plot, folder / PLOT_FILE)


def resume(trainer: PPOTrainer) -> bool:
    """Load the checkpoint ``cfg.resume`` names (``latest``: the newest) into ``trainer``:
    weights, optimizer, scheduler, KL controller, score statistics, data position and this
    process's RNG. False when there is none to resume."""
    cfg = trainer.cfg
    assert cfg.resume is not None
    path = find_latest(trainer.output_dir) if cfg.resume == "latest" else Path(cfg.resume)
    if path is None:
        log.warning("no checkpoint in %s; starting from scratch", trainer.output_dir)
        return False
    state = read_trainer_state(path)
    saved = state.get("config", {})
    changed = [
        k
        for k, v in dataclasses.asdict(cfg).items()
        if k not in RESUME_FREE and k in saved and saved[k] != v
    ]
    if changed:
        log.warning("resuming with changed settings: %s", ", ".join(changed))
    if state.get("world_size", 1) != trainer.world:
        log.warning("resuming on %d processes, saved on %d", trainer.world, state["world_size"])
    trainer.policy.load_trainable_state_dict(torch.load(path / "policy.pt", map_location="cpu"))
    trainer.optimizer.load_state_dict(
        torch.load(path / "optimizer.pt", map_location=trainer.device)
    )
    trainer.scheduler.load_state_dict(torch.load(path / "scheduler.pt"))
    trainer.kl_ctl.load_state_dict(state["kl_controller"])
    trainer.moments.load_state_dict(state["score_moments"])
    trainer.stream.load_state_dict(state["data"])
    trainer.step = int(state["step"])
    rng_file = path / f"rng_state_{trainer.rank}.pt"
    if not rng_file.is_file():
        rng_file = path / "rng_state_0.pt"
    load_rng_state(torch.load(rng_file, weights_only=False))
    log.info("resumed from %s at step %d", path, trainer.step)
    return True
