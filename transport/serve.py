"""``python -m transport serve``: a cloud on a host and port, for a device on another machine.

Loopback (the default) needs nothing more. Any other address is refused unless the server has TLS
(``--tls-cert``/``--tls-key``, PEM files) and a shared token (``--token-file``, or the
STIP_CLOUD_TOKEN environment variable; never on the command line, where `ps` shows it). Prints one
JSON line ``{"ready": true, "host": ..., "port": ...}`` on stdout when listening; logs go to
stderr; runs until SIGINT or SIGTERM.

    python -m transport serve --factory protocols.stip_over_socket:make_cloud_handler \
        --kwargs '{"checkpoint": "/srv/cloud_checkpoint", "head": "causal_lm"}' \
        --host 0.0.0.0 --port 7443 --tls-cert cert.pem --tls-key key.pem --token-file token
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import ssl
import sys

from transport import auth
from transport.cloud_server import CloudServer, load_factory
from transport.limits import ServerLimits

log = logging.getLogger(__name__)

TOKEN_ENV = auth.TOKEN_ENV
MIN_TOKEN_CHARS = 16
PATH_KWARGS = ("checkpoint",)  # factory arguments that are paths on the server: never told to clients


class ServeConfigError(ValueError):
    """A serve configuration that would expose the cloud unsafely, or cannot work."""


def is_loopback(host: str) -> bool:
    """Whether every address `host` resolves to is a loopback address."""
    try:
        return auth.is_loopback(host)
    except socket.gaierror as exc:
        raise ServeConfigError(f"cannot resolve host {host!r}: {exc}") from exc


def read_token(token_file: str | None) -> str | None:
    """The shared token from `token_file` (stripped; refused unless only its owner can read it) or
    $STIP_CLOUD_TOKEN; None if neither is given."""
    if token_file is not None:
        try:
            return auth.read_token_file(token_file)
        except auth.TokenError as exc:
            raise ServeConfigError(str(exc)) from None
    return os.environ.get(TOKEN_ENV) or None


def server_ssl_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """A TLS server context from PEM paths (TLS 1.2 or newer), or None when neither is given."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ServeConfigError("TLS needs both --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def check_exposure(host: str, context: ssl.SSLContext | None, token: str | None) -> None:
    """Refuse a non-loopback address without TLS and a strong enough token."""
    if is_loopback(host):
        return
    missing = [what for what, ok in (("TLS (--tls-cert, --tls-key)", context is not None),
                                     (f"a token (--token-file or ${TOKEN_ENV})", token is not None)) if not ok]
    if missing:
        raise ServeConfigError(f"host {host!r} is not loopback: serving there needs {' and '.join(missing)}; "
                               "or serve on 127.0.0.1 and tunnel to it")
    if len(token) < MIN_TOKEN_CHARS:  # type: ignore[arg-type]
        raise ServeConfigError(f"the token has {len(token)} characters; use at least {MIN_TOKEN_CHARS} random "  # type: ignore[arg-type]
                               "ones (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")


def build_server(args: argparse.Namespace) -> CloudServer:
    """Check the exposure rules, build the handler and bind the server."""
    token = read_token(args.token_file)
    context = server_ssl_context(args.tls_cert, args.tls_key)
    check_exposure(args.host, context, token)
    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as exc:
        raise ServeConfigError(f"--kwargs is not JSON: {exc}") from exc
    limits = ServerLimits.from_dict(json.loads(args.limits)) if args.limits else ServerLimits()
    handler = load_factory(args.factory)(**kwargs)
    settings = {k: v for k, v in kwargs.items() if k not in PATH_KWARGS}  # paths stay on this host
    return CloudServer(handler, host=args.host, port=args.port, limits=limits, token=token, ssl_context=context,
                       description={"factory": args.factory, "settings": settings})


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; exit 2 on a configuration the exposure rules refuse."""
    parser = argparse.ArgumentParser(prog="python -m transport serve", description=__doc__.splitlines()[0])
    parser.add_argument("--factory", required=True, help="'pkg.module:function' building the handler")
    parser.add_argument("--kwargs", default="{}", help="JSON keyword arguments of the factory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed when ready)")
    parser.add_argument("--tls-cert", help="PEM certificate (chain) of this server")
    parser.add_argument("--tls-key", help="PEM private key of the certificate")
    parser.add_argument("--token-file", help=f"file holding the shared token (default: ${TOKEN_ENV})")
    parser.add_argument("--limits", help="JSON of ServerLimits fields to change, e.g. '{\"max_connections\": 8}'")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s cloud[%(process)d] %(levelname)s %(name)s: %(message)s")
    try:
        server = build_server(args)
    except (ServeConfigError, OSError, ValueError) as exc:
        print(f"transport serve: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: server.close())
    signal.signal(signal.SIGINT, lambda *_: server.close())
    print(json.dumps({"ready": True, "host": server.host, "port": server.port, "pid": os.getpid(),
                      "tls": server.ssl_context is not None, "token": server.token is not None}), flush=True)
    log.info("serving %s on %s:%d (tls=%s, token=%s)", args.factory, server.host, server.port,
             server.ssl_context is not None, server.token is not None)
    server.serve_forever()
    return 0
