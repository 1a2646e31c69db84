"""Two-party MPC (CrypTen) baseline: Transformer forward over secret shares with pluggable approximations.

Import `baselines.mpc.compat.import_crypten()` (never `import crypten` directly): torch 2.13 needs a shim.
"""
