"""SSH host keys kept in the config (rancher.ssh.keys), as RancherOS's console keeps them:
a machine with a state partition keeps its host keys across reboots, and
`ros config export` shows them only with --private."""

from __future__ import annotations

import os
import subprocess

from ros import config, config_cli

KINDS = ("ed25519", "ecdsa")


def setup(cfg: dict) -> None:
    for kind in KINDS:
        key = f"/etc/ssh/ssh_host_{kind}_key"
        if os.path.exists(key):
            continue
        saved = config.get(cfg, f"rancher.ssh.keys.{kind}")
        saved_pub = config.get(cfg, f"rancher.ssh.keys.{kind}-pub")
        if saved and saved_pub:
            config_cli.write_file(key, str(saved), 0o600)
            config_cli.write_file(f"{key}.pub", str(saved_pub), 0o644)
            continue
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", key], check=True)
        for name, path in ((kind, key), (f"{kind}-pub", f"{key}.pub")):
            with open(path) as fh:
                config_cli.set_value(f"rancher.ssh.keys.{name}", fh.read())
