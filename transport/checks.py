"""Checks a cloud handler runs on what a client sent, before any work: types, finiteness, shapes.

A request arrives as JSON meta and safetensors tensors from an untrusted peer; Python's truthiness
would read ``last_only="no"`` as True and torch would compute on NaN without complaint, so each
value is checked for exactly the type and range it needs. Failures raise RequestError, which the
server answers as a HandlerError naming the value.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch


class RequestError(ValueError):
    """A request value of the wrong type, range or shape."""


def meta_bool(name: str, value: Any) -> bool:
    """`value` if it is a JSON boolean (not a string, not a number)."""
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false, got {value!r} ({type(value).__name__})")
    return value


def meta_int(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None,
             optional: bool = False) -> int | None:
    """`value` if it is an integer in [minimum, maximum] (None allowed when `optional`)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum or (maximum is not None and value > maximum):
        raise RequestError(f"{name}={value} is out of range [{minimum}, {maximum if maximum is not None else 'inf'}]")
    return value


def meta_str(name: str, value: Any, *, max_len: int = 256, optional: bool = False) -> str | None:
    """`value` if it is a string of at most `max_len` characters (None allowed when `optional`)."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise RequestError(f"{name} must be a string of at most {max_len} characters, got {type(value).__name__}")
    return value


def finite(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` if it holds no NaN or infinity (integer tensors always pass)."""
    if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
        raise RequestError(f"{name} contains NaN or infinite values; send finite numbers")
    return tensor


def integer(name: str, tensor: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """`tensor` if it is an integer or bool tensor (of `shape`, when given)."""
    if tensor.is_floating_point() or tensor.is_complex():
        raise RequestError(f"{name} must be an integer or bool tensor, got {tensor.dtype}")
    if shape is not None and tuple(tensor.shape) != tuple(shape):
        raise RequestError(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
    return tensor


def only(tensors: Mapping[str, torch.Tensor], allowed: tuple[str, ...]) -> None:
    """Refuse tensor names outside `allowed`."""
    unknown = sorted(set(tensors) - set(allowed))
    if unknown:
        raise RequestError(f"unexpected tensors {unknown}; this call takes {list(allowed)}")
