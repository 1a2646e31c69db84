"""Errors shared by the STIP parties (kept apart so small helper modules can raise them)."""


class StipInputError(ValueError):
    """A request whose tensors do not fit the model (wrong hidden size, rank, dtype or input name)."""
