"""`python -m bench model=... protocol=... network=...` (Hydra CLI; `-m` for sweeps); exits 1 if any run failed."""
import sys

from bench.app import cli

if __name__ == "__main__":
    sys.exit(cli())
