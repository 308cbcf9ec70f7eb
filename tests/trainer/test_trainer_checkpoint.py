"""Checkpoint saves survive a crash at every step of the swap."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from r3_trainer import checkpoint as ckpt
from r3_trainer.config import PPOConfig
from r3_trainer.trainer import PPOTrainer

STEP = 2


class Crash(BaseException):
    """A simulated power cut: nothing after it runs."""


def write_checkpoint(folder: Path, version: str) -> None:
    (folder / "policy.pt").write_text(version)
    (folder / ckpt.STATE_FILE).write_text(json.dumps({"step": STEP, "version": version}))


def crashing(monkeypatch: pytest.MonkeyPatch, at: int, tear: bool = False) -> list[str]:
    """Make the ``at``-th rename or delete in checkpoint.py crash instead of running.

    With ``tear``, a delete that crashes removes one file first (a half-deleted folder).
    Returns the log of operations that ran.
    """
    done: list[str] = []
    real_replace, real_rmtree = os.replace, shutil.rmtree

    def step(name: str, run: Callable[[], Any], path: Path) -> None:
        if len(done) == at:
            if tear and name == "rmtree" and Path(path).is_dir():
                (Path(path) / ckpt.STATE_FILE).unlink(missing_ok=True)
            raise Crash(name)
        done.append(name)
        run()

    def replace(src: Any, dst: Any) -> None:
        step("replace", lambda: real_replace(src, dst), Path(src))

    def rmtree(path: Any, ignore_errors: bool = False) -> None:
        step("rmtree", lambda: real_rmtree(path, ignore_errors=ignore_errors), Path(path))

    monkeypatch.setattr(ckpt.os, "replace", replace)
    monkeypatch.setattr(ckpt.shutil, "rmtree", rmtree)
    return done


def folders(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def saved_version(out: Path) -> str:
    found = ckpt.list_checkpoints(out)
    assert [s for s, _ in found] == [STEP]
    path = found[0][1]
    assert (path / "policy.pt").read_text() == ckpt.read_trainer_state(path)["version"]
    return str(ckpt.read_trainer_state(path)["version"])


def save(out: Path, version: str, crash_at: int | None, mp: pytest.MonkeyPatch) -> list[str]:
    """Write and commit checkpoint ``version`` of STEP, crashing before operation ``crash_at``."""
    tmp, final = ckpt.begin(out, STEP)
    write_checkpoint(tmp, version)
    with mp.context() as patch:
        done = crashing(patch, -1 if crash_at is None else crash_at, tear=True)
        try:
            ckpt.commit(tmp, final)
        except Crash:
            pass
    return done


# (operations that run before the crash, version found after recovery; None: no checkpoint)
REPLACING = [
    (0, "old"),  # before anything: the new folder was never committed
    (1, "old"),  # after clearing a stale .old
    (2, "old"),  # after step-N -> step-N.old: the old one goes back into place
    (3, "new"),  # after step-N.tmp -> step-N, while deleting step-N.old (half deleted)
]
FIRST = [(0, None), (1, "new")]


@pytest.mark.parametrize(("crash_at", "expected"), REPLACING)
def test_a_crash_while_replacing_a_checkpoint_leaves_a_whole_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: int, expected: str
) -> None:
    assert save(tmp_path, "old", None, monkeypatch) == ["replace", "rmtree"]
    done = save(tmp_path, "new", crash_at, monkeypatch)
    assert len(done) == crash_at
    ckpt.recover(tmp_path)
    assert folders(tmp_path) == ["step-000002"]  # no .tmp or .old left over
    assert saved_version(tmp_path) == expected


@pytest.mark.parametrize(("crash_at", "expected"), FIRST)
def test_a_crash_during_the_first_save_leaves_no_torn_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: int, expected: str | None
) -> None:
    save(tmp_path, "new", crash_at, monkeypatch)
    ckpt.recover(tmp_path)
    if expected is None:
        assert folders(tmp_path) == [] and ckpt.find_latest(tmp_path) is None
    else:
        assert folders(tmp_path) == ["step-000002"] and saved_version(tmp_path) == expected


def test_an_uninterrupted_replacement_runs_four_operations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save(tmp_path, "old", None, monkeypatch)
    assert save(tmp_path, "new", None, monkeypatch) == ["rmtree", "replace", "replace", "rmtree"]
    assert folders(tmp_path) == ["step-000002"] and saved_version(tmp_path) == "new"
    assert len(REPLACING) == 4  # so the table above crashes before each of them


def test_a_crash_while_writing_leaves_the_old_checkpoint(tmp_path: Path) -> None:
    save_dir, _ = ckpt.begin(tmp_path, STEP)
    write_checkpoint(save_dir, "old")
    ckpt.commit(save_dir, ckpt.checkpoint_dir(tmp_path, STEP))
    torn, _ = ckpt.begin(tmp_path, STEP)
    (torn / "policy.pt").write_text("half")  # no trainer_state.json yet: the crash came here
    ckpt.recover(tmp_path)
    assert folders(tmp_path) == ["step-000002"] and saved_version(tmp_path) == "old"


def tiny_config(tiny_lm_dir: Path, prompts: Path, out: Path, **changes: Any) -> PPOConfig:
    return PPOConfig(
        model=str(tiny_lm_dir),
        dataset=str(prompts),
        output_dir=str(out),
        batch_size=2,
        mini_batch_size=2,
        gradient_accumulation_steps=1,
        ppo_epochs=1,
        max_new_tokens=4,
        steps=2,
        eval_every=0,
        save_every=1,
        tensorboard=False,
        plot=False,
        progress_bar=False,
        **changes,
    )


def word_reward(*args: Any) -> list[float]:
    return [len(r.split()) / 10 for r in args[1]]


def test_a_trainer_recovers_an_interrupted_swap_on_restart(
    tiny_lm_dir: Path, tiny_prompts: Path, tmp_path: Path
) -> None:
    trainer = PPOTrainer(tiny_config(tiny_lm_dir, tiny_prompts, tmp_path), word_reward)
    trainer.train()
    trainer.close()
    final = ckpt.checkpoint_dir(tmp_path, 2)
    # the crash came between the two renames of a second save of step 2
    os.replace(final, final.with_name(final.name + ".old"))
    (final.with_name(final.name + ".tmp")).mkdir()
    resumed = PPOTrainer(
        tiny_config(tiny_lm_dir, tiny_prompts, tmp_path, resume="latest"), word_reward
    )
    resumed.close()
    assert resumed.step == 2
    assert folders(tmp_path) == ["step-000001", "step-000002"]
