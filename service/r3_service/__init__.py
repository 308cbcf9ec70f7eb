"""R^3 reward service: Regularized Relevance Reward (arXiv 2402.03469) over HTTP."""

__version__ = "0.1.0"
