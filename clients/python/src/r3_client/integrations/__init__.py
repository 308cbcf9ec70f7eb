"""Adapters for RL frameworks: TRL (``trl``), veRL (``verl``, ``verl_manager``) and OpenRLHF
(``openrlhf``). Only ``verl_manager`` imports its framework; see docs/integrations.md."""
