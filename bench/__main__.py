"""`python -m bench model=... protocol=... network=...` (Hydra CLI; `-m` for sweeps)."""
from bench.app import main

if __name__ == "__main__":
    main()
