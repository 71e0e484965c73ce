"""Entry of the worker processes: ``python -m app.jobs --inference-server FD`` / ``--render-server FD``.

Imports no Qt: ``app.jobs`` loads its Qt modules lazily, and the servers are Qt-free.
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str]) -> int:
    from multiprocessing.connection import Connection

    from . import inference_server, render_server

    servers = {"--render-server": render_server.serve, "--inference-server": inference_server.serve}
    if len(argv) != 2 or argv[0] not in servers:
        print("usage: python -m app.jobs --render-server|--inference-server FD", file=sys.stderr)
        return 2
    if argv[0] == "--inference-server":
        logging.basicConfig(level=logging.WARNING, format="inference process: %(levelname)s %(name)s: %(message)s")
    servers[argv[0]](Connection(int(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
