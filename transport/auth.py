"""The shared token of a remote cloud: where it may be read from, where it may travel, how it is compared.

One place for the rules both ends apply: a token file readable by group or others is refused (it names
the file and ``chmod 600``), a token never leaves this host without TLS, and tokens are compared in
constant time as bytes; a token that is not valid text is simply a wrong token.
"""
from __future__ import annotations

import hmac
import ipaddress
import os
import socket
import stat
from pathlib import Path

TOKEN_ENV = "STIP_CLOUD_TOKEN"


class TokenError(ValueError):
    """A token that must not be used: unreadable, empty, or in a file others can read."""


def is_loopback(host: str) -> bool:
    """Whether every address `host` resolves to is a loopback address (socket.gaierror when it does not resolve)."""
    infos = socket.getaddrinfo(host, None)
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def token_file_problem(path: str | os.PathLike) -> str | None:
    """Why `path` must not hold a token (missing, not a file, readable by group or others), or None."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"token file {os.fspath(path)!r} is not readable ({exc.strerror}); give the path of the token file"
    if not stat.S_ISREG(st.st_mode):
        return f"token file {os.fspath(path)!r} is not a regular file"
    if st.st_mode & 0o077:
        return (f"token file {os.fspath(path)!r} has mode {stat.S_IMODE(st.st_mode):04o}: group or others can read "
                f"the token; run `chmod 600 {os.fspath(path)}`")
    return None


def read_token_file(path: str | os.PathLike) -> str:
    """The token in `path` (stripped), refused when the file is readable by others or empty."""
    problem = token_file_problem(path)
    if problem:
        raise TokenError(problem)
    token = Path(path).read_text(encoding="utf-8").strip()
    if not token:
        raise TokenError(f"token file {os.fspath(path)!r} is empty")
    return token


def token_bytes(token: object) -> bytes | None:
    """The token as UTF-8 bytes, or None when it is not valid text (not a str, or a lone surrogate)."""
    if not isinstance(token, str):
        return None
    try:
        return token.encode("utf-8")
    except UnicodeEncodeError:
        return None


def tokens_match(given: object, expected: str) -> bool:
    """Constant-time comparison (hmac.compare_digest on bytes); anything that is not valid text never matches."""
    want = token_bytes(expected)
    got = token_bytes(given)
    if want is None:
        raise TokenError("the server's own token is not valid text")
    return hmac.compare_digest(got if got is not None else b"", want) and got is not None


def plaintext_token_problem(host: str, token: object, tls: bool) -> str | None:
    """Why sending `token` to `host` would expose it (no TLS off loopback), or None."""
    if token is None or tls:
        return None
    try:
        loopback = is_loopback(host)
    except OSError:
        loopback = False
    if loopback:
        return None
    return (f"{host} is not loopback and the connection has no TLS: the token would travel in clear text; "
            "give the server's certificate or CA (cloud.ca_file=..., RemoteCloud(ca_file=...)), or tunnel to "
            "127.0.0.1")
