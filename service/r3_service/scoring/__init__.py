"""Reward scoring: query types (classifier) -> embeddings (engine) -> the R^3 formula."""

from r3_service.scoring.scorer import RewardBatch, RewardItem, RewardScorer

__all__ = ["RewardBatch", "RewardItem", "RewardScorer"]
