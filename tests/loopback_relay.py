"""A byte relay between a TCP port and a Unix socket: how a test-harness pod reaches the API server.

Each pod of tests/pod_executor.py has a network namespace of its own (as on a real node: its own loopback and
ports), where nothing but its own loopback exists. A Unix socket crosses that boundary: on the host, the
executor relays `host.sock` → the API server's TCP port; inside the pod, this script relays 127.0.0.1:PORT →
`host.sock`, so the pod's kubernetes client talks to https://127.0.0.1:PORT as it would to its Service.

    python loopback_relay.py SOCKET PORT READY_FILE     # inside the pod's network namespace
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def serve(
    listener: socket.socket, connect: Callable[[], socket.socket], stop: threading.Event | None = None
) -> None:
    """Relay every connection accepted on `listener` to a new `connect()`, both ways, until `stop` is set."""
    listener.settimeout(0.5)
    while stop is None or not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        conn.settimeout(None)
        try:
            upstream = connect()
        except OSError:
            conn.close()
            continue
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def unix_connector(path: str) -> Callable[[], socket.socket]:
    def connect() -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        return s

    return connect


if __name__ == "__main__":
    sock_path, port, ready = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    # The pod's volumes may be mounted over the socket's directory later (an emptyDir at /tmp, say): the
    # working directory keeps the original one within reach.
    os.chdir(sock_path.parent)
    server = socket.create_server(("127.0.0.1", port))
    Path(ready).touch()
    serve(server, unix_connector(sock_path.name))
