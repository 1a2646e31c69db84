"""Benchmarks share the tests' helpers (`helpers`, on pytest's `pythonpath`) and fixtures."""
from helpers.fixtures import restore_threads, set_offline_env

set_offline_env()

__all__ = ["restore_threads"]
