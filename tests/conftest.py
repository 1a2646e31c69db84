"""tests/helpers is importable as `helpers` through pyproject's pytest `pythonpath`; fixtures live there."""
from helpers.fixtures import restore_threads, set_offline_env

set_offline_env()

__all__ = ["restore_threads"]
