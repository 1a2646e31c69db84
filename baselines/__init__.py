"""Baselines that STIP is compared against (full cloud, model split, random projection, 2PC MPC)."""
