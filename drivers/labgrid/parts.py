"""What labgrid 26 lacks for a RancherOS box: an IPMI power port and driver, a strategy.

Registered with labgrid's factory on import, so a place exported with an
`IPMIPowerPort` and an environment file naming `IPMIPowerDriver` or
`RancherOSStrategy` work like labgrid's own classes.

IPMI goes through `ipmitool -I lanplus` (what BMC owners use and what the lab's tests
ran against ipmi_sim). The password travels to ipmitool in its environment (`-E`,
IPMI_PASSWORD), never on a command line another user could read, and is registered as a
secret so no log or error quotes it. It comes from the resource (an environment file
kept on the lab host) or `ROSLAB_IPMI_PASSWORD`, never from the coordinator: exported
resource parameters are visible to every client of the farm.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import attr
from labgrid.driver.common import Driver
from labgrid.factory import target_factory
from labgrid.protocol import ConsoleProtocol, PowerProtocol
from labgrid.resource.common import Resource
from labgrid.step import step
from labgrid.strategy.common import Strategy, StrategyError

from lab.errors import ConfigError, PlatformError
from lab.redact import keep_secret, redact

PASSWORD_VARIABLE = "ROSLAB_IPMI_PASSWORD"
USER_VARIABLE = "ROSLAB_IPMI_USER"
IPMITOOL_SECONDS = 30.0


@target_factory.reg_resource
@attr.s(eq=False)
class IPMIPowerPort(Resource):
    """A BMC reachable over IPMI LAN (RMCP+): host, UDP port, user; password kept local."""

    host = attr.ib(validator=attr.validators.instance_of(str))
    port = attr.ib(default=623, converter=int)
    username = attr.ib(default="", validator=attr.validators.instance_of(str))
    password = attr.ib(default=None, repr=False)  # env file only; else ROSLAB_IPMI_PASSWORD
    interface = attr.ib(default="lanplus", validator=attr.validators.instance_of(str))
    cipher = attr.ib(default=3, converter=int)  # without -C 3 ipmitool waits 10 s per call


class BMCError(PlatformError):
    """The BMC could not be reached or refused the lab; says which."""


def _diagnose(output: str, where: str) -> str:
    if "HMAC is invalid" in output or "unauthorized name" in output:
        return (f"the BMC at {where} refused the lab's credentials (wrong user or password; "
                f"the password comes from {PASSWORD_VARIABLE} or the environment file)")
    if "Get Auth Capabilities error" in output or "No response" in output \
            or "Unable to establish" in output:
        return f"the BMC at {where} does not answer (IPMI over LAN, UDP): is it reachable?"
    return f"the BMC at {where} failed: {output.strip().splitlines()[-1:] or ['no output']}"


@target_factory.reg_driver
@attr.s(eq=False)
class IPMIPowerDriver(Driver, PowerProtocol):
    """Chassis power over IPMI LAN with ipmitool; `get()` asks the BMC."""

    bindings = {"port": "IPMIPowerPort"}

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._tool = shutil.which("ipmitool")

    def _password(self) -> str:
        password = self.port.password or os.environ.get(PASSWORD_VARIABLE, "")
        if not password:
            raise ConfigError(f"no IPMI password for the BMC at {self.where}: set "
                              f"{PASSWORD_VARIABLE} (or `password:` in the environment file)")
        keep_secret(password, "IPMI password")
        return password

    @property
    def where(self) -> str:
        return f"{self.port.host}:{self.port.port}"

    def ipmitool(self, *args: str) -> str:
        if self._tool is None:
            raise ConfigError("ipmitool is not installed: install the package ipmitool")
        user = self.port.username or os.environ.get(USER_VARIABLE, "")
        argv = [self._tool, "-v", "-I", self.port.interface, "-H", self.port.host,
                "-p", str(self.port.port), "-U", user, "-E", "-C", str(self.port.cipher),
                "-R", "2", "-N", "2", *args]
        env = {**os.environ, "IPMI_PASSWORD": self._password()}
        try:
            proc = subprocess.run(argv, env=env, capture_output=True, text=True,
                                  timeout=IPMITOOL_SECONDS, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise BMCError(f"the BMC at {self.where} did not answer `{' '.join(args)}` within "
                           f"{IPMITOOL_SECONDS:.0f} s") from None
        if proc.returncode != 0:
            raise BMCError(redact(_diagnose(proc.stderr + proc.stdout, self.where)))
        return proc.stdout

    @Driver.check_active
    @step()
    def on(self) -> None:
        self.ipmitool("chassis", "power", "on")

    @Driver.check_active
    @step()
    def off(self) -> None:
        self.ipmitool("chassis", "power", "off")

    @Driver.check_active
    @step()
    def cycle(self) -> None:
        self.ipmitool("chassis", "power", "cycle")

    @Driver.check_active
    def get(self) -> bool:
        out = self.ipmitool("chassis", "power", "status")
        if "is on" in out:
            return True
        if "is off" in out:
            return False
        raise BMCError(f"the BMC at {self.where} gave no power state: {out.strip()!r}")


@target_factory.reg_driver
@attr.s(eq=False)
class RancherOSStrategy(Strategy):
    """off -> on for a RancherOS box: the console is connected before power-on so the lab
    sees every byte; login and milestones are the lab's Console's (as on QEMU).

    labgrid's ShellStrategy waits for a systemd-style shell; a RancherOS console is a
    busybox getty or autologin, which the lab's Console handles.
    """

    bindings = {"power": PowerProtocol, "console": ConsoleProtocol}
    status = attr.ib(default="unknown")

    def transition(self, status: str) -> None:
        if status == self.status:
            return
        if status == "off":
            self.target.activate(self.power)
            self.power.off()
        elif status == "on":
            self.transition("off")
            self.target.activate(self.console)
            self.power.on()
        else:
            raise StrategyError(f"RancherOSStrategy knows off and on, not {status!r}")
        self.status = status

    def force(self, status: str) -> None:
        self.status = status
