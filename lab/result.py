"""The outcome of a command run in a guest, over the console or over SSH."""

from __future__ import annotations

from dataclasses import dataclass, fields

from lab.errors import CommandError
from lab.redact import redact


@dataclass
class Result:
    cmd: str
    rc: int
    output: str = ""  # console: stdout and stderr as the terminal showed them
    stdout: str = ""  # ssh
    stderr: str = ""  # ssh

    def __repr__(self) -> str:
        # tracebacks in reports quote it (pytest shows a frame's `self`): never a secret
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return redact(f"Result({shown})")

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def check(self) -> Result:
        if not self.ok:
            text = self.output or "\n".join(s for s in (self.stdout, self.stderr) if s)
            raise CommandError(f"command {self.cmd!r} failed with exit status {self.rc}:\n{text}")
        return self
