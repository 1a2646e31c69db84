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


MASK_NAMES = ("attention_mask",)  # request tensors that are masks wherever they appear: 0 or 1 only


def mask(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` if every value is 0 or 1 (a mask; other values would be read as 1 silently)."""
    if tensor.is_complex() or not bool(((tensor == 0) | (tensor == 1)).all()):
        bad = tensor[(tensor != 0) & (tensor != 1)].flatten()[:3].tolist() if not tensor.is_complex() else "complex"
        raise RequestError(f"{name} must hold only 0 and 1, got {bad}; send 1 for tokens to attend, 0 for padding")
    return tensor


def request_size(tensors: Mapping[str, torch.Tensor], max_batch_tokens: int) -> None:
    """Refuse a request whose batch x sequence (the first two dimensions of any tensor) passes the server's
    `max_batch_tokens`, before any compute: memory grows with it far beyond the frame's bytes."""
    for name, tensor in tensors.items():
        if tensor.dim() >= 2 and int(tensor.shape[0]) * int(tensor.shape[1]) > max_batch_tokens:
            raise RequestError(f"{name} has shape {tuple(tensor.shape)}: batch x sequence = "
                               f"{int(tensor.shape[0]) * int(tensor.shape[1])} passes this server's "
                               f"max_batch_tokens={max_batch_tokens}; send smaller batches, or serve with "
                               f"--limits '{{\"max_batch_tokens\": N}}'")
    for name in MASK_NAMES:
        if name in tensors:
            mask(name, tensors[name])
