"""The benchmark harness: a Hydra app that runs protocols and records tidy rows."""
