"""The PPO loop: sample, score over HTTP, penalise KL, GAE, clipped updates, log, checkpoint.

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

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from r3_trainer import checkpoint as ckpt
from r3_trainer.config import PPOConfig
from r3_trainer.data import Example, PromptStream, load_examples, split_eval
from r3_trainer.logging_utils import PLOT_FILE, MetricsLogger, format_table, plot_metrics
from r3_trainer.policy import PolicyWithValue, end_of_turn_ids, load_policy, load_tokenizer
from r3_trainer.ppo import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    entropy_from_logits,
    explained_variance,
    gae,
    group_scores,
    kl_per_token,
    masked_mean,
    masked_whiten,
    policy_loss,
    process_scores,
    returns_to_go,
    token_rewards,
    value_loss,
)
from r3_trainer.rewards import (
    HTTPReward,
    PatientReward,
    RewardFn,
    RewardUnavailableError,
    Scores,
    is_transient,
)
from r3_trainer.rollout import Rollouts, Samples, encode_prompts, format_prompt, sample_responses

__all__ = ["PPOTrainer"]

log = logging.getLogger(__name__)

# Settings that may differ on resume without changing what the next step computes.
_RESUME_FREE = {
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


@dataclass
class _Targets:
    """What PPO trains towards in one step, and the numbers behind it."""

    advantages: torch.Tensor
    returns: torch.Tensor
    all_scores: torch.Tensor
    processed: torch.Tensor
    non_score: torch.Tensor
    kl_coef: float
    explained_variance: float


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
        backward_batch = min(cfg.backward_batch_size, cfg.batch_size)
        self.updates_per_step = cfg.ppo_epochs * math.ceil(cfg.batch_size / backward_batch)
        self.scheduler = get_scheduler(
            cfg.lr_scheduler,
            self.optimizer,
            num_warmup_steps=cfg.warmup_steps,
            num_training_steps=cfg.steps * self.updates_per_step,
        )
        self.model = self.accelerator.prepare_model(self.policy)

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

    def _score(self, examples: list[Example], texts: Sequence[str]) -> Scores:
        return self.reward_fn(
            [e.input for e in examples],
            list(texts),
            [e.output for e in examples],
            [e.qtype for e in examples],
        )

    def _rollouts(self, samples: Samples, scores: Scores) -> Rollouts:
        """The rollouts to train on: the tokens of each response the reward accounted for."""
        keep = samples.keep(self.tokenizer, scores.stop_end)
        texts = scores.scored if scores.scored is not None else samples.texts
        return samples.to_rollouts(keep, self.tokenizer.pad_token_id, texts)

    @torch.no_grad()
    def _forward_no_grad(
        self, rollouts: Rollouts
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Policy log-probs, values and reference log-probs of the rollouts (eval mode)."""
        cfg = self.cfg
        n, width = rollouts.response_mask.shape
        logprobs = torch.zeros(n, width, device=self.device)
        values = torch.zeros(n, width, device=self.device)
        ref_logprobs = torch.zeros(n, width, device=self.device)
        self.policy.eval()
        # Rows of similar prompt and response length together: less padding to compute.
        prompt_len = rollouts.attention_mask[:, : rollouts.response_start].sum(1)
        order = sorted(range(n), key=lambda i: (int(prompt_len[i]), int(rollouts.lengths[i])))
        for start in range(0, n, cfg.forward_batch_size):
            idx = order[start : start + cfg.forward_batch_size]
            sub = rollouts.select(idx)
            w = sub.response_mask.shape[1]
            lp, _, v = self.policy(
                sub.input_ids, sub.attention_mask, sub.response_start, cfg.temperature
            )
            assert v is not None
            logprobs[idx, :w] = lp
            values[idx, :w] = v.float()
            ref_logprobs[idx, :w] = self.policy.reference_logprobs(
                sub.input_ids, sub.attention_mask, sub.response_start, cfg.temperature
            )
        mask = rollouts.response_mask.float()
        return logprobs * mask, values * mask, ref_logprobs * mask

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
        scores = self._score(examples, samples.texts)
        clock.append(time.perf_counter())
        self._mutating = True  # from here on, the model and optimizer change

        rollouts = self._rollouts(samples, scores)
        mask = rollouts.response_mask.float()
        old_logprobs, values, ref_logprobs = self._forward_no_grad(rollouts)
        targets = self._targets(scores, old_logprobs, ref_logprobs, values, mask)
        clock.append(time.perf_counter())
        stats = self._ppo_update(
            rollouts, old_logprobs, values, targets.advantages, targets.returns, mask
        )
        clock.append(time.perf_counter())
        seq_kl = ((old_logprobs - ref_logprobs) * mask).sum(1)
        return self._finish_step(rollouts, scores, seq_kl, values, mask, targets, stats, clock)

    def _targets(
        self,
        scores: Scores,
        old_logprobs: torch.Tensor,
        ref_logprobs: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
    ) -> _Targets:
        """Processed scores, per-token rewards (score - beta KL), GAE advantages and returns."""
        cfg = self.cfg
        raw = torch.tensor(scores.rewards, dtype=torch.float32, device=self.device)
        kl = kl_per_token(old_logprobs, ref_logprobs, cfg.kl_penalty) * mask
        all_scores = self._gather(raw)
        critic = cfg.advantage_estimator == "gae"
        if critic:
            processed = process_scores(
                raw,
                self.moments,
                cfg.use_score_scaling,
                cfg.use_score_norm,
                cfg.score_clip,
                moments_batch=all_scores,
            )
        else:  # each score against the other responses to its prompt (groups are per process)
            processed = group_scores(raw, cfg.samples_per_prompt, cfg.advantage_estimator)
        kl_coef = self.kl_ctl.value
        rewards, non_score = token_rewards(processed, kl, mask, kl_coef)
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
        if critic:
            advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        else:
            advantages = returns = returns_to_go(rewards, mask, cfg.gamma)
        ev = explained_variance(values, returns, mask)
        return _Targets(
            advantages=masked_whiten(advantages, mask) * mask,
            returns=returns,
            all_scores=all_scores,
            processed=processed,
            non_score=non_score,
            kl_coef=kl_coef,
            explained_variance=ev,
        )

    def _finish_step(
        self,
        rollouts: Rollouts,
        scores: Scores,
        seq_kl: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        t: _Targets,
        stats: dict[str, float],
        clock: list[float],
    ) -> dict[str, Any]:
        """Update the KL controller; the step's metrics row, gathered over processes."""
        cfg = self.cfg
        n_all = cfg.batch_size * self.world
        copies = _copy_flags(scores, len(rollouts), self.device)
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

    def _ppo_update(
        self,
        rollouts: Rollouts,
        old_logprobs: torch.Tensor,
        old_values: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        mask: torch.Tensor,
    ) -> dict[str, float]:
        """``ppo_epochs`` passes of clipped updates over shuffled mini-batches."""
        cfg = self.cfg
        n = len(rollouts)
        backward_batch = min(cfg.backward_batch_size, n)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        sums: dict[str, float] = {}
        count = 0
        old = (old_logprobs, old_values, advantages, returns, mask)
        self.model.train()
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(n).tolist()
            for b0 in range(0, n, backward_batch):
                batch = order[b0 : b0 + backward_batch]
                micro = [
                    batch[i : i + cfg.mini_batch_size]
                    for i in range(0, len(batch), cfg.mini_batch_size)
                ]
                for j, idx in enumerate(micro):
                    step_stats = self._micro_step(
                        rollouts, idx, old, len(micro), j + 1 == len(micro)
                    )
                    for key, value in step_stats.items():
                        sums[key] = sums.get(key, 0.0) + value
                    count += 1
                if cfg.max_grad_norm is not None:
                    grad_norm = self.accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                    sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        out = {k: v / count for k, v in sums.items() if k not in ("grad_norm", "skipped")}
        if "grad_norm" in sums:
            out["grad_norm"] = sums["grad_norm"] / self.updates_per_step
        out["skipped_minibatches"] = sums.get("skipped", 0.0)
        return out

    def _micro_step(
        self,
        rollouts: Rollouts,
        idx: list[int],
        old: tuple[torch.Tensor, ...],
        n_micro: int,
        sync: bool,
    ) -> dict[str, float]:
        """Forward and backward of one mini-batch (gradients accumulate); its statistics."""
        cfg = self.cfg
        old_logprobs, old_values, advantages, returns, mask = old
        sub = rollouts.select(idx)
        w = sub.response_mask.shape[1]
        m = mask[idx, :w]
        ctx = nullcontext() if sync else self.accelerator.no_sync(self.model)
        with ctx:
            logprobs, logits, vpred = self.model(
                sub.input_ids, sub.attention_mask, sub.response_start, cfg.temperature
            )
            pl = policy_loss(logprobs, old_logprobs[idx, :w], advantages[idx, :w], m, cfg.cliprange)
            vl = value_loss(
                vpred.float(), old_values[idx, :w], returns[idx, :w], m, cfg.cliprange_value
            )
            loss = pl.loss
            if cfg.advantage_estimator == "gae":  # the group estimators use no critic
                loss = loss + cfg.vf_coef * vl.loss
            ratio = self._mean_all(float(pl.ratio_mean))
            skipped = ratio > cfg.ratio_threshold  # TRL: skip a runaway mini-batch
            if skipped:
                loss = loss * 0.0
            self.accelerator.backward(loss / n_micro)
        with torch.no_grad():
            return {
                "policy_loss": float(pl.loss),
                "value_loss": float(vl.loss),
                "clipfrac": float(pl.clipfrac),
                "value_clipfrac": float(vl.clipfrac),
                "approx_kl": float(pl.approx_kl),
                "ratio_mean": ratio,
                "entropy": float(masked_mean(entropy_from_logits(logits.detach()), m)),
                "skipped": float(skipped),
            }

    # -- evaluation ------------------------------------------------------------

    def evaluate(self) -> dict[str, Any]:
        """Reward and length on the held-out prompts; logs a sample table (main process)."""
        cfg = self.cfg
        if not self.eval_examples or not self.is_main:
            return {}
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):  # leaves the training RNG untouched
            torch.manual_seed(cfg.seed)
            samples = self.sample(self.eval_examples, do_sample=not cfg.eval_greedy)
        scores = self._score(self.eval_examples, samples.texts)
        rollouts = self._rollouts(samples, scores)
        lengths = rollouts.lengths.tolist()
        rewards = scores.rewards
        shown = [
            (e.input, r, s, int(n))
            for e, r, s, n in zip(self.eval_examples, rollouts.texts, rewards, lengths)
        ][: cfg.eval_samples]
        table = format_table(["prompt", "response", "reward", "tokens"], shown)
        copies = _copy_flags(scores, len(rollouts), self.device)
        row = {
            "eval_reward_mean": sum(rewards) / len(rewards),
            "eval_reward_std": float(torch.tensor(rewards).std()) if len(rewards) > 1 else 0.0,
            "eval_response_length_mean": sum(lengths) / len(lengths),
            "eval_query_copy_rate": float(copies.mean()),
        }
        log.info(
            "eval at step %d: reward %.4f, length %.1f tokens, copies %.0f%%\n%s",
            self.step,
            row["eval_reward_mean"],
            row["eval_response_length_mean"],
            100 * row["eval_query_copy_rate"],
            table,
        )
        if self.metrics is not None:
            self.metrics.text("eval/samples", table, self.step)
        return row

    def _baseline_eval(self) -> None:
        """Evaluate the untrained policy as step 0, leaving the RNG streams as they were."""
        rng = ckpt.get_rng_state()
        row = self.evaluate()
        ckpt.load_rng_state(rng)
        if row and self.metrics is not None:
            self.metrics.log({"step": 0, **row})

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
                    self._baseline_eval()
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
        final = ckpt.checkpoint_dir(self.output_dir, self.step)
        tmp = final.with_name(final.name + ".tmp")
        self.accelerator.wait_for_everyone()
        if self.is_main:
            ckpt.begin(self.output_dir, self.step)
        self.accelerator.wait_for_everyone()
        torch.save(rng_state or ckpt.get_rng_state(), tmp / f"rng_state_{self.rank}.pt")
        if self.is_main:
            self._write_checkpoint(tmp)
            ckpt.commit(tmp, final)
            ckpt.prune_checkpoints(self.output_dir, self.cfg.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        self._last_saved = self.step
        return final

    def _write_checkpoint(self, folder: Path) -> None:
        """Weights, optimizer, scheduler, trainer state and plot into ``folder`` (main process)."""
        cfg = self.cfg
        trainable = self.policy.trainable_state_dict()
        torch.save(trainable, folder / "policy.pt")
        torch.save(
            {k: v for k, v in trainable.items() if k.startswith("v_head.")},
            folder / "value_head.pt",
        )
        torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), folder / "scheduler.pt")
        if self.policy.is_peft:
            lm: Any = self.policy.lm
            lm.save_pretrained(folder / "adapter", save_embedding_layers=False)
            self.tokenizer.save_pretrained(folder / "adapter")
        elif self.step == cfg.steps:
            self.policy.hf_model().save_pretrained(folder / "model")
            self.tokenizer.save_pretrained(folder / "model")
        state = {
            "step": self.step,
            "data": self.stream.state_dict(),
            "kl_controller": self.kl_ctl.state_dict(),
            "score_moments": self.moments.state_dict(),
            "world_size": self.world,
            "config": dataclasses.asdict(cfg),
        }
        (folder / ckpt.STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")
        self.write_plot()
        plot = self.output_dir / PLOT_FILE
        if plot.is_file():
            shutil.copy(plot, folder / PLOT_FILE)

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
        cfg = self.cfg
        assert cfg.resume is not None
        path = ckpt.find_latest(self.output_dir) if cfg.resume == "latest" else Path(cfg.resume)
        if path is None:
            log.warning("no checkpoint in %s; starting from scratch", self.output_dir)
            return False
        state = ckpt.read_trainer_state(path)
        saved = state.get("config", {})
        changed = [
            k
            for k, v in dataclasses.asdict(cfg).items()
            if k not in _RESUME_FREE and k in saved and saved[k] != v
        ]
        if changed:
            log.warning("resuming with changed settings: %s", ", ".join(changed))
        if state.get("world_size", 1) != self.world:
            log.warning("resuming on %d processes, saved on %d", self.world, state["world_size"])
        self.policy.load_trainable_state_dict(torch.load(path / "policy.pt", map_location="cpu"))
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=self.device))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt"))
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.moments.load_state_dict(state["score_moments"])
        self.stream.load_state_dict(state["data"])
        self.step = self._last_saved = int(state["step"])
        rng_file = path / f"rng_state_{self.rank}.pt"
        if not rng_file.is_file():
            rng_file = path / "rng_state_0.pt"
        ckpt.load_rng_state(torch.load(rng_file, weights_only=False))
        log.info("resumed from %s at step %d", path, self.step)
        return True


def _copy_flags(scores: Scores, n: int, device: Any) -> torch.Tensor:
    """1.0 where a response copies its query, per the reward; NaN where it did not say."""
    if scores.copies_query is None:
        return torch.full((n,), float("nan"), device=device)
    return torch.tensor([float(c) for c in scores.copies_query], device=device)
