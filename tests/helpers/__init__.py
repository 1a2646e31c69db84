"""Shared test helpers: config-built tiny models of every family, and the STIP-vs-plaintext comparison."""
