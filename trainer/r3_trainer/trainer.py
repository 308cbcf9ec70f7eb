"""The PPO loop: sample, score over HTTP, penalise KL, GAE, clipped updates, log, checkpoint.

This module holds the loop and the rollouts; the update is :mod:`r3_trainer.update`,
evaluation :mod:`r3_trainer.evaluation`, checkpoints :mod:`r3_trainer.checkpoint`, plots and
logs :mod:`r3_trainer.logging_utils`, the equations :mod:`r3_trainer.ppo`.

One step (TRL-style PPO, as the paper ran it):

1. take ``batch_size / samples_per_prompt`` prompts and sample ``samples_per_prompt``
   responses to each (until end-of-turn or a stop string);
2. score the responses (the reward function; over HTTP by default, retried patiently) and keep
   the tokens of each response that the reward accounted for (the service says where it cut);
3. log-probs and values of the policy, log-probs of the frozen reference (no grad);
4. scale / normalise / clip the scores (or, with ``advantage_estimator`` rloo / group_norm,
   take each score relative to its prompt's group), per-token reward = -beta KL_t, plus the
   score on the last token; GAE advantages (or, without a critic, the returns to go),
   whitened;
5. ``ppo_epochs`` passes over shuffled mini-batches, ``gradient_accumulation_steps`` of them
   per optimizer step, minimising the clipped policy loss + vf_coef x the clipped value loss
   (the value loss only with GAE);
6. update the adaptive KL coefficient; log a row to ``metrics.jsonl``; maybe evaluate, save.

Runs data-parallel under ``accelerate launch`` (each process samples its own prompts; gradients
are averaged by DDP); on one process it needs no launcher.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from r3_trainer import checkpoint as ckpt
from r3_trainer import evaluation
from r3_trainer.config import PPOConfig
from r3_trainer.data import Example, PromptStream, load_examples, split_eval
from r3_trainer.logging_utils import PLOT_FILE, MetricsLogger, plot_metrics
from r3_trainer.policy import PolicyWithValue, end_of_turn_ids, load_policy, load_tokenizer
from r3_trainer.ppo import AdaptiveKLController, FixedKLController, RunningMoments, masked_mean
from r3_trainer.rewards import (
    HTTPReward,
    PatientReward,
    RewardFn,
    RewardUnavailableError,
    Scores,
    is_transient,
)
from r3_trainer.rollout import Rollouts, Samples, encode_prompts, format_prompt, sample_responses
from r3_trainer.update import (
    PPOUpdate,
    Targets,
    compute_targets,
    forward_no_grad,
    updates_per_step,
)

__all__ = ["PPOTrainer"]

log = logging.getLogger(__name__)


def _default_accelerator(cfg: PPOConfig) -> Any:
    from accelerate import Accelerator

    # accelerate runs several processes on CPUs only when told to use the CPU.
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(cpu=cfg.cpu or (distributed and not torch.cuda.is_available()))


class PPOTrainer:
    """PPO against a reward function; see the module docstring for one step.

    ``reward_fn`` defaults to :class:`HTTPReward` on ``cfg.reward_url``; any callable
    ``(queries, responses, references, qtypes) -> rewards`` works (tests pass local ones).
    ``tokenizer`` and ``policy`` may be given ready-made (else loaded from ``cfg``).
    """

    def __init__(
        self,
        cfg: PPOConfig,
        reward_fn: RewardFn | None = None,
        *,
        tokenizer: Any = None,
        policy: PolicyWithValue | None = None,
        accelerator: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from accelerate.utils import set_seed

        self.cfg = cfg
        self.accelerator = accelerator if accelerator is not None else _default_accelerator(cfg)
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.device = self.accelerator.device
        self.output_dir = Path(cfg.output_dir)
        set_seed(cfg.seed, device_specific=True)

        self._check_output_dir()
        self._load_data()
        self._load_model(tokenizer, policy)
        self._build_optimizer()
        self.kl_ctl: FixedKLController = (
            AdaptiveKLController(cfg.init_kl_coef, cfg.target_kl, cfg.kl_horizon)
            if cfg.adap_kl_ctrl
            else FixedKLController(cfg.init_kl_coef)
        )
        self.moments = RunningMoments()
        base_fn = reward_fn or HTTPReward(
            cfg.reward_url,
            api_key=cfg.api_key,
            options=cfg.service_options(),
            timeout=cfg.reward_timeout,
            max_retries=cfg.reward_max_retries,
        )
        self.reward_fn = PatientReward(
            base_fn, patience=cfg.reward_patience, backoff_max=cfg.reward_backoff_max, sleep=sleep
        )
        self._stop_strings: list[str] | None = None
        self.step = 0
        self._last_saved = -1
        self._mutating = False
        self._step_times: list[float] = []

        resumed = self._resume() if cfg.resume else False
        self.metrics: MetricsLogger | None = None
        if self.is_main:
            self.metrics = MetricsLogger(
                self.output_dir, cfg.tensorboard, resume_step=self.step if resumed else None
            )

    def _check_output_dir(self) -> None:
        """Finish an interrupted checkpoint swap; refuse another run's checkpoints."""
        if self.cfg.dataset is None:
            raise ValueError("a dataset is required (--dataset FILE.json[l])")
        if self.is_main:
            ckpt.recover(self.output_dir)
        self.accelerator.wait_for_everyone()
        if not self.cfg.resume and ckpt.list_checkpoints(self.output_dir):
            raise FileExistsError(
                f"{self.output_dir} holds checkpoints of another run: "
                "pass --resume to continue it, or choose another --output-dir"
            )

    def _load_data(self) -> None:
        cfg = self.cfg
        assert cfg.dataset is not None
        rows = load_examples(cfg.dataset)
        if cfg.eval_dataset:
            train_rows, eval_rows = rows, load_examples(cfg.eval_dataset)
        else:
            held = cfg.eval_size if cfg.eval_every > 0 else 0
            train_rows, eval_rows = split_eval(rows, held, cfg.seed)
        self.stream = PromptStream(train_rows, cfg.seed)
        self.eval_examples = eval_rows[: cfg.eval_batch_size]

    def _load_model(self, tokenizer: Any, policy: PolicyWithValue | None) -> None:
        cfg = self.cfg
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg)
        self.policy = policy if policy is not None else load_policy(cfg, len(self.tokenizer))
        self.end_ids = end_of_turn_ids(self.tokenizer, self.policy.hf_model().config)
        self.policy.to(self.device)
        for ref in self.policy._reference:
            ref.to(self.device)

    def _build_optimizer(self) -> None:
        from transformers import get_scheduler

        cfg = self.cfg
        params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, eps=1e-8
        )
        self.scheduler = get_scheduler(
            cfg.lr_scheduler,
            self.optimizer,
            num_warmup_steps=cfg.warmup_steps,
            num_training_steps=cfg.steps * updates_per_step(cfg),
        )
        self.model = self.accelerator.prepare_model(self.policy)
        self.update = PPOUpdate(
            cfg,
            self.policy,
            self.model,
            self.optimizer,
            self.scheduler,
            self.accelerator,
            self._mean_all,
        )

    # -- rollouts --------------------------------------------------------------

    def generation_stop_strings(self) -> list[str]:
        """Where sampling may stop a row early: ``stop_strings``, else the service's defaults.

        Only saves time (the service decides where each response ends). A local reward
        function without ``stop_strings`` gets none; an unreachable service is asked again
        next time.
        """
        if self._stop_strings is None:
            ask = getattr(self.reward_fn.fn, "stop_strings", None)
            if self.cfg.stop_strings is not None:
                self._stop_strings = list(self.cfg.stop_strings)
            elif not callable(ask):
                self._stop_strings = []
            else:
                try:
                    self._stop_strings = list(ask() or [])
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    log.warning("cannot ask the service for its stop strings: %s", exc)
                    return []
        return self._stop_strings

    def sample(self, examples: Sequence[Example], *, do_sample: bool = True) -> Samples:
        """Responses of the current policy to ``examples`` (sampled as in training, or greedy).

        Does not touch the optimizer; sampling draws from torch's global random state.
        """
        cfg, tok = self.cfg, self.tokenizer
        prompts = [
            format_prompt(
                tok, e.input, cfg.system_prompt, cfg.use_chat_template, cfg.alpaca_template
            )
            for e in examples
        ]
        templated = not cfg.alpaca_template and (
            cfg.use_chat_template and bool(getattr(tok, "chat_template", None))
        )
        ids, mask = encode_prompts(tok, prompts, cfg.max_prompt_length, templated)
        self.policy.eval()
        return sample_responses(
            self.policy,
            tok,
            ids.to(self.device),
            mask.to(self.device),
            end_ids=self.end_ids,
            stop_strings=self.generation_stop_strings(),
            max_new_tokens=cfg.max_new_tokens,
            do_sample=do_sample,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            chunk_size=cfg.generation_batch_size or cfg.batch_size,
        )

    def score(self, examples: Sequence[Example], texts: Sequence[str]) -> Scores:
        """The reward of each response (patient: waits out outages up to ``reward_patience``)."""
        return self.reward_fn(
            [e.input for e in examples],
            list(texts),
            [e.output for e in examples],
            [e.qtype for e in examples],
        )

    def rollouts(self, samples: Samples, scores: Scores) -> Rollouts:
        """The rollouts to train on: the tokens of each response the reward accounted for."""
        keep = samples.keep(self.tokenizer, scores.stop_end)
        texts = scores.scored if scores.scored is not None else samples.texts
        return samples.to_rollouts(keep, self.tokenizer.pad_token_id, texts)

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        return self.accelerator.gather(x) if self.world > 1 else x

    def _mean_all(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], device=self.device)
        return float(self.accelerator.reduce(t, reduction="mean"))

    # -- one step --------------------------------------------------------------

    def train_step(self) -> dict[str, Any]:
        """Run one PPO step; return its metrics row (without ``step``)."""
        cfg = self.cfg
        clock = [time.perf_counter()]
        k = cfg.samples_per_prompt
        prompts = self.stream.next_batch(cfg.batch_size // k, self.rank, self.world)
        examples = [e for e in prompts for _ in range(k)]  # each group's k responses together
        samples = self.sample(examples)
        clock.append(time.perf_counter())
        scores = self.score(examples, samples.texts)
        clock.append(time.perf_counter())
        self._mutating = True  # from here on, the model and optimizer change

        rollouts = self.rollouts(samples, scores)
        mask = rollouts.response_mask.float()
        old_logprobs, values, ref_logprobs = forward_no_grad(
            self.policy, rollouts, cfg, self.device
        )
        targets = compute_targets(
            cfg,
            scores.rewards,
            old_logprobs,
            ref_logprobs,
            values,
            mask,
            kl_ctl=self.kl_ctl,
            moments=self.moments,
            gather=self._gather,
        )
        clock.append(time.perf_counter())
        stats = self.update.run(
            rollouts, old_logprobs, values, targets.advantages, targets.returns, mask
        )
        clock.append(time.perf_counter())
        seq_kl = ((old_logprobs - ref_logprobs) * mask).sum(1)
        return self._finish_step(rollouts, scores, seq_kl, values, mask, targets, stats, clock)

    def _finish_step(
        self,
        rollouts: Rollouts,
        scores: Scores,
        seq_kl: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        t: Targets,
        stats: dict[str, float],
        clock: list[float],
    ) -> dict[str, Any]:
        """Update the KL controller; the step's metrics row, gathered over processes."""
        cfg = self.cfg
        n_all = cfg.batch_size * self.world
        copies = evaluation.copy_flags(scores, len(rollouts), self.device)
        all_kl, all_len = self._gather(seq_kl), self._gather(rollouts.lengths.float())
        mean_kl = float(all_kl.mean())
        self.kl_ctl.update(mean_kl, n_all)
        elapsed = clock[-1] - clock[0]
        self._step_times.append(elapsed)
        ev = t.explained_variance
        return {
            "reward_mean": float(t.all_scores.mean()),
            "reward_std": float(t.all_scores.std()) if n_all > 1 else 0.0,
            "score_mean": self._mean_all(float(t.processed.mean())),
            "kl": mean_kl,
            "kl_coef": t.kl_coef,
            "non_score_reward": self._mean_all(float(t.non_score.sum(1).mean())),
            "response_length_mean": float(all_len.mean()),
            "query_copy_rate": float(self._gather(copies).mean()),
            "explained_variance": self._mean_all(ev) if math.isfinite(ev) else ev,
            "advantages_mean": float(masked_mean(t.advantages, mask)),
            "returns_mean": self._mean_all(float(masked_mean(t.returns, mask))),
            "values_mean": self._mean_all(float(masked_mean(values, mask))),
            **{k: self._mean_all(v) for k, v in stats.items()},
            "lr": float(self.scheduler.get_last_lr()[0]),
            "time_step_s": elapsed,
            "time_generate_s": clock[1] - clock[0],
            "time_reward_s": clock[2] - clock[1],
            "time_forward_s": clock[3] - clock[2],
            "time_train_s": clock[4] - clock[3],
            "rollouts_per_s": n_all / elapsed if elapsed > 0 else float("nan"),
            # Other work on the machine slows a step: the 1-minute load average at its end.
            "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
        }

    # -- evaluation ------------------------------------------------------------

    def evaluate(self) -> dict[str, Any]:
        """Reward and length on the held-out prompts (``r3_trainer.evaluation``)."""
        return evaluation.evaluate(self)

    # -- the loop --------------------------------------------------------------

    def train(self, until: int | None = None) -> list[dict[str, Any]]:
        """Train up to ``cfg.steps`` (or stop after step ``until``, saving a checkpoint there).

        Returns the metrics rows of this call. If the reward service stays down past
        ``reward_patience`` (or on Ctrl-C) while a step is still collecting rollouts, the last
        finished step is checkpointed before the error propagates: no finished step is lost.
        """
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        cfg = self.cfg
        last = cfg.steps if until is None else min(cfg.steps, until)
        rows: list[dict[str, Any]] = []
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="PPO",
            unit="step",
            disable=not (self.is_main and cfg.progress_bar),
            dynamic_ncols=True,
        )
        try:
            with logging_redirect_tqdm():
                if self.step == 0 and cfg.eval_every > 0 and last > 0:
                    evaluation.baseline_eval(self)
                while self.step < last:
                    row = self._one_step(last)
                    rows.append(row)
                    bar.update(1)
                    bar.set_postfix(
                        reward=f"{row['reward_mean']:.3f}",
                        kl=f"{row['kl']:.2f}",
                        len=f"{row['response_length_mean']:.0f}",
                    )
        finally:
            bar.close()
            self.write_plot()  # also when interrupted: the plot shows the steps that finished
        if self._step_times and self.is_main:
            mean = sum(self._step_times) / len(self._step_times)
            log.info(
                "%d steps in this run: %.2f s/step, %.2f rollouts/s",
                len(self._step_times),
                mean,
                cfg.batch_size * self.world / mean,
            )
        return rows

    def _one_step(self, last: int) -> dict[str, Any]:
        """One step with its evaluation, log row and checkpoint, as due."""
        cfg = self.cfg
        rng, stream = ckpt.get_rng_state(), self.stream.state_dict()
        self._mutating = False
        try:
            row = self.train_step()
        except (RewardUnavailableError, KeyboardInterrupt):
            # Single process only: other processes may sit in a collective.
            if self.world == 1 and not self._mutating and self.step > self._last_saved:
                self.stream.load_state_dict(stream)
                log.warning("stopping: saving the last finished step %d", self.step)
                self.save(rng_state=rng)
            raise
        self.step += 1
        row = {"step": self.step, **row}
        if self.is_main:
            log.info(
                "step %d: reward %.4f, kl %.3f, length %.1f tokens, %.1f s",
                self.step,
                row["reward_mean"],
                row["kl"],
                row["response_length_mean"],
                row["time_step_s"],
            )
        finished = self.step == cfg.steps
        if cfg.eval_every > 0 and (self.step % cfg.eval_every == 0 or finished):
            row.update(self.evaluate())
        if self.metrics is not None:
            self.metrics.log(row)
        due = cfg.save_every > 0 and self.step % cfg.save_every == 0
        if due or self.step == last:
            self.save()
        return row

    def close(self) -> None:
        """Close logs and the reward client."""
        if self.metrics is not None:
            self.metrics.close()
        close = getattr(self.reward_fn.fn, "close", None)
        if callable(close):
            close()

    # -- checkpoints -----------------------------------------------------------

    def save(self, rng_state: dict[str, Any] | None = None) -> Path:
        """Checkpoint the current step (``rng_state``: this process's RNG to store instead)."""
        final = ckpt.save(self, rng_state)
        self._last_saved = self.step
        return final

    def write_plot(self) -> None:
        """Write ``output_dir/training.png`` from the metrics so far (main process)."""
        if not (self.is_main and self.cfg.plot and self.metrics is not None):
            return
        rows = self.metrics.rows()
        if rows:
            plot_metrics(
                rows, self.output_dir / PLOT_FILE, title=f"R^3 PPO · {self.output_dir.name}"
            )

    def _resume(self) -> bool:
        resumed = ckpt.resume(self)
        if resumed:
            self._last_saved = self.step
        return resumed
