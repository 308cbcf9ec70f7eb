"""PPO trainer that learns from R^3 rewards over HTTP."""
