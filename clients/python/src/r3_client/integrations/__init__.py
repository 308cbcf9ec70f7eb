"""Adapters for RL training frameworks (TRL, veRL); they import nothing from those."""
