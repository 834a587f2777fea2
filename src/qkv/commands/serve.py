"""``qkv serve``: the explain report as a local web page (:mod:`qkv.viz.serve`)."""

from __future__ import annotations

import argparse
import errno

import qkv
from qkv.commands.common import MODEL_HELP, fail, port

__all__ = ["HELP", "configure", "run"]

HELP = "the explain report as a local web page"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``qkv serve``'s options to ``parser``."""
    parser.add_argument("--model", default="minilm", help=MODEL_HELP)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=port, default=8000, help="port (default: 8000; 0 picks a free one)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="a name of this machine the pages may be asked for besides localhost, 127.0.0.1, "
                             "[::1] and --host (repeatable; any other Host header is refused, against DNS "
                             "rebinding)")


def run(args: argparse.Namespace) -> int:
    """Run ``qkv serve``: the explain report as a local web page."""
    from qkv.viz.serve import make_server, serve_until_interrupted

    try:
        model, tokenizer = qkv.load(args.model)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        return fail("serve", str(err))
    try:
        server = make_server(model, tokenizer, host=args.host, port=args.port, allowed_hosts=args.allow_host)
    except OSError as err:  # socket.gaierror (an unknown host) is an OSError too
        if err.errno == errno.EADDRINUSE:
            return fail("serve", f"--port {args.port}: the port is already in use on {args.host} (another "
                                  f"server, or another qkv serve, listens there); choose another, e.g. "
                                  f"--port {args.port + 1 if args.port < 65535 else 8000}, or --port 0 for "
                                  f"any free one")
        return fail("serve", f"cannot listen on --host {args.host} --port {args.port}: {err.strerror or err}; "
                              f"--host must be an address of this machine, and ports below 1024 need root")
    serve_until_interrupted(server)
    return 0
