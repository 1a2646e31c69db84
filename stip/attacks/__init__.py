"""Attacks a curious cloud can run on what STIP sends it, measured, not assumed (STIP.md, issue 12).

One module per attack; each states its assumption in its docstring and in every row it returns.
"""
from .kpa import assignment_permutation, known_plaintext_permutation
from .multiset import fingerprint_token_recovery, vit_patch_recovery

__all__ = ["assignment_permutation", "fingerprint_token_recovery", "known_plaintext_permutation",
           "vit_patch_recovery"]
