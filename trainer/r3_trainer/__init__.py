"""PPO trainer that learns from R^3 rewards over HTTP (arXiv 2402.03469, "PPO setup").

Entry points: ``r3-train`` (:mod:`r3_trainer.cli`), :class:`r3_trainer.trainer.PPOTrainer`,
:class:`r3_trainer.config.PPOConfig`.
"""

__version__ = "0.1.0"
