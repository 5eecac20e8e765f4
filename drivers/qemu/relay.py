"""Join one guest connection (stdin/stdout, as QEMU's `guestfwd=...-cmd:` hands it over)
to a TCP port on 127.0.0.1: `python -I relay.py PORT`. Standard library only, run as a
script, so that it starts in milliseconds for every connection a guest opens."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Callable


def _pump(read_fd: int, write: Callable[[bytes], object], done: Callable[[], object]) -> None:
    with contextlib.suppress(OSError):
        while chunk := os.read(read_fd, 65536):
            write(chunk)
    with contextlib.suppress(OSError):
        done()


def _to_guest(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]


def _guest_eof() -> None:
    """The stand-in has answered: end the guest's side now (stdin still holds the socket)."""
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(1)) as guest:
        guest.shutdown(socket.SHUT_WR)
    os.close(1)


def main() -> int:
    try:
        upstream = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
    except OSError:
        return 1  # the stand-in is gone: the guest sees its connection closed
    upstream.settimeout(None)
    back = threading.Thread(target=_pump, args=(upstream.fileno(), _to_guest, _guest_eof))
    back.start()
    _pump(0, upstream.sendall, lambda: upstream.shutdown(socket.SHUT_WR))
    back.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
