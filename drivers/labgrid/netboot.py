"""The lab's netboot server: a release's `rancheros.ipxe` with the run's base URL and
cloud-config, its kernel and initrd, and the cloud-config itself, over HTTP for one run.

The box's DHCP points its iPXE at `<base URL>/boot.ipxe` (set once per box on the farm);
the lab serves that name for the duration of a run, so each run boots what it asked for.
Requests are milestones only this server sees: the box asked for its script (firmware
and DHCP are done) and the initrd was sent whole (the netboot transfer is done).
"""

from __future__ import annotations

import http.server
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab.errors import ConfigError, ImageError
from lab.timeline import NETBOOT, NETBOOT_LOADED

SCRIPT = "boot.ipxe"


def ipxe_script(release_script: str, base_url: str, extra_args: list[str]) -> str:
    """The release's script with `set base-url` pointed at the lab and the lab's kernel
    arguments on its `kernel` line (a datasource the release sets is replaced)."""
    if not re.search(r"^set base-url ", release_script, re.M) or \
            not re.search(r"^kernel ", release_script, re.M):
        raise ImageError("rancheros.ipxe has no `set base-url` or no `kernel` line: not a "
                         "RancherOS release's iPXE script")
    script = re.sub(r"^set base-url .*$", f"set base-url {base_url}", release_script,
                    flags=re.M)
    replaced = {a.split("=", 1)[0] for a in extra_args if "=" in a}

    def kernel_line(m: re.Match[str]) -> str:
        words = [w for w in m.group(0).split() if w.split("=", 1)[0] not in replaced]
        return " ".join([*words, *extra_args])

    return re.sub(r"^kernel .*$", kernel_line, script, count=1, flags=re.M)


class NetbootServer:
    """Serves `files` (URL name -> path or bytes) at http://`listen`/ until `stop()`, to
    the `clients` addresses only and only while a boot window is open (`open_window`).

    boot.ipxe holds the console password and user-data the run's secrets: any other
    client, or the box outside its boot, gets 403.
    """

    def __init__(self, listen: str, files: dict[str, Path | bytes],
                 on_milestone: Callable[[str, float], None],
                 clients: frozenset[str] | set[str]) -> None:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"netboot listen address {listen!r}: expected HOST:PORT")
        if not clients:
            raise ConfigError("the netboot server needs the box's address (netboot_client): "
                              "it answers no one else")
        self.files = files
        self.clients = frozenset(clients)
        self._closes_at = 0.0  # host-monotonic end of the boot window; closed until opened
        server_self = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 -- name fixed by http.server
                if not server_self.admits(self.client_address[0]):
                    self.send_error(403)
                    return
                name = self.path.split("?")[0].lstrip("/")
                item = server_self.files.get(name)
                if item is None:
                    self.send_error(404)
                    return
                if name == SCRIPT:
                    on_milestone(NETBOOT, time.monotonic())
                data = item if isinstance(item, bytes) else None
                size = len(data) if data is not None else Path(item).stat().st_size
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                if data is not None:
                    self.wfile.write(data)
                else:
                    with open(item, "rb") as fh:
                        shutil.copyfileobj(fh, self.wfile, 1 << 20)
                if name == "initrd":
                    on_milestone(NETBOOT_LOADED, time.monotonic())

            def log_message(self, *args: Any) -> None:
                pass

        try:
            self._server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
        except OSError as exc:
            raise ConfigError(f"cannot serve netboot files on {listen}: {exc.strerror} (another "
                              f"run on this box's netboot port?)") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="roslab-netboot", daemon=True)
        self._thread.start()

    def open_window(self, seconds: float) -> None:
        """Answer the box for `seconds` from now (its boot: power-on to cloud-config read)."""
        self._closes_at = time.monotonic() + seconds

    def close_window(self) -> None:
        self._closes_at = 0.0

    def admits(self, address: str) -> bool:
        return address in self.clients and time.monotonic() < self._closes_at

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
