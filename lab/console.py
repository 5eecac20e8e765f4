"""The serial console: a timestamped log, panic watchers, milestones, login, framed commands.

A pump thread reads the byte stream as it arrives, so every line gets the host time it
was seen (not the time someone happened to call expect), the watchers and milestones
run even while no test is waiting, and the log is complete. pexpect reads what the pump
buffered through a small spawn class (the same pattern as pexpect's PopenSpawn).
"""

from __future__ import annotations

import codecs
import contextlib
import itertools
import random
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import pexpect
from pexpect.spawnbase import SpawnBase

from lab import timeline as tl
from lab.errors import BootError, BootTimeout, CommandError, GuestPanic, HostError
from lab.redact import redact
from lab.result import Result

# (what it means, regex on one console line). Any of these fails the boot at once, quoting
# the lines around it: a guest that went there never recovers, so waiting is pointless.
WATCHERS: list[tuple[str, re.Pattern[str]]] = [
    ("kernel panic", re.compile(r"Kernel panic - not syncing")),
    ("init was killed", re.compile(r"Attempted to kill init")),
    ("kernel oops", re.compile(r"\bOops\b|Internal error: Oops")),
    ("kernel BUG", re.compile(r"\bBUG: ")),
    ("init segfault", re.compile(r"\[1\]: segfault at ")),
    ("kernel call trace", re.compile(r"^\s*(?:\[[\s\d.]+\]\s*)?Call [Tt]race:")),
]
KERNEL_LINE_RE = re.compile(r"^\[\s*\d+\.\d+\] .*\n?", re.M)
STARTED_RE = re.compile(r"^(\S+) (v?\d[^\s]*) started\s*$")
BANNER_LINE_RE = re.compile(r"^\S+ v?\d\S* started[ \t]*(?:\n|\Z)", re.M)
ANSI = r"(?:\x1b\[[0-9;?]*[A-Za-z])*"  # busybox ash asks for the cursor position after a prompt
LOGIN_RE = re.compile(r"login:\s*" + ANSI + r"\Z")  # \Z: the prompt is the last thing printed
SHELL_PROMPT_RE = re.compile(r"[$#] ?" + ANSI + r"\Z")
PASSWORD_RE = re.compile(r"[Pp]assword:\s*\Z")
# a prompt a kernel message was printed right after, on the same line: the user Docker
# loading br_netfilter as the console's shell starts does it in one boot of three
PROMPT_THEN_KERNEL_RE = re.compile(r"(?:[$#]|login:) ?" + ANSI + r"\[\s*\d+\.\d+\] ")
PROMPT_SETTLE = 0.3  # seconds of silence that tell a shell prompt from a half-printed line
QUIET_ENTER = 10.0  # seconds of silence after init before pressing Enter for a fresh prompt
PANIC_CONTEXT_LINES = 25  # lines kept after the trigger (the call trace)
PANIC_SETTLE_SECONDS = 1.0  # time given to the guest to print the rest of the panic


def _strip(line: str) -> str:
    # terminal noise: carriage returns and ANSI colour/cursor sequences
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line).replace("\r", "")


class StreamSpawn(SpawnBase):
    """pexpect over bytes another thread puts in; sends go through `write_fn`."""

    def __init__(self, write_fn: Callable[[bytes], None], timeout: float = 30) -> None:
        super().__init__(timeout=timeout, encoding="utf-8", codec_errors="replace")
        self._write = write_fn
        self._cond = threading.Condition()
        self._pending = bytearray()
        self._eof = False

    def feed(self, data: bytes) -> None:
        with self._cond:
            self._pending += data
            self._cond.notify_all()

    def feed_eof(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def read_nonblocking(self, size: int = 1, timeout: float | None = -1) -> str:
        if timeout == -1:
            timeout = self.timeout
        with self._cond:
            if not self._pending and not self._eof:
                self._cond.wait(timeout)
            if self._pending:
                chunk = bytes(self._pending[:size])
                del self._pending[:size]
                text = self._decoder.decode(chunk, final=False)
                self._log(text, "read")
                return text
            if self._eof:
                self.flag_eof = True
                raise pexpect.EOF("the console stream closed")
            raise pexpect.TIMEOUT("no console output")

    def send(self, s: str | bytes) -> int:
        data = s if isinstance(s, bytes) else s.encode()
        self._write(data)
        return len(data)

    def sendline(self, s: str = "") -> int:
        return self.send(s + "\n")


class Console:
    """One machine's console. `log_path` is the timestamped log: `[  12.345] line`."""

    def __init__(
        self,
        stream: socket.socket,
        timeline: tl.Timeline,
        log_path: Path,
        exit_reason: Callable[[], str] = lambda: "",
    ) -> None:
        self.stream = stream
        self.timeline = timeline
        self.log_path = log_path
        self.exit_reason = exit_reason
        self.started: tuple[str, str] | None = None  # (OS name, version) from "... started"
        self.tee: Callable[[bytes], None] | None = None  # an interactive attach sees bytes here
        self.child = StreamSpawn(self._send)
        self.last_rx = time.monotonic()
        self._lines: deque[str] = deque(maxlen=400)
        self._partial = ""
        self._cut_prompt_at: float | None = None  # when a prompt was seen under a kernel line
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._panic: tuple[str, int] | None = None  # (what, index into the line count)
        self._log_error: str | None = None
        self._panic_at = 0.0
        self._line_count = 0
        self._lock = threading.Lock()
        self._log = log_path.open("a", encoding="utf-8", buffering=1)
        # markers differ per machine and per command, so old output never matches
        self._marks = itertools.count(random.randrange(10_000, 90_000) * 1000)
        self._thread = threading.Thread(target=self._pump, name="roslab-console", daemon=True)
        self._thread.start()

    # the pump ------------------------------------------------------------------------------

    def _pump(self) -> None:
        while True:
            try:
                data = self.stream.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._flush_partial()
                self.child.feed_eof()
                return
            now = self.last_rx = time.monotonic()
            self.child.feed(data)
            if self.tee is not None:
                self.tee(data)
            self._take(self._decoder.decode(data), now)

    def _take(self, text: str, now: float) -> None:
        with self._lock:
            self._partial += text
            *complete, self._partial = self._partial.split("\n")
            for raw in complete:
                self._line(_strip(raw), now)
            # a shell prompt is told from half a kernel line only by the silence after it:
            # login() marks that one
            if LOGIN_RE.search(_strip(self._partial)):
                self.timeline.mark(tl.LOGIN_PROMPT, now)

    def _line(self, line: str, now: float) -> None:
        line = redact(line)  # the log and the lines quoted in errors are evidence
        if self._log_error is None:
            try:
                self._log.write(f"[{now - self.timeline.t0:9.3f}] {line}\n")
            except OSError as exc:  # a full disk: say so at the next wait, not at its end
                self._log_error = f"cannot write the console log {self.log_path}: {exc}"
        self._lines.append(line)
        self._line_count += 1
        if "Linux version" in line:
            self.timeline.mark(tl.KERNEL, now)
        elif "Trying to unpack rootfs image as initramfs" in line:
            self.timeline.mark(tl.UNPACK_START, now)
        elif "Freeing initrd memory" in line:
            self.timeline.mark(tl.UNPACKED, now)
        elif "Run /init as init process" in line or "Run /sbin/init" in line:
            self.timeline.mark(tl.INIT, now)
        elif LOGIN_RE.search(line):
            self.timeline.mark(tl.LOGIN_PROMPT, now)
        elif (m := STARTED_RE.match(line.strip())) and self.started is None:
            self.started = (m.group(1), m.group(2))
            self.timeline.mark(tl.STARTED, now)
        if tl.INIT in self.timeline.marks and PROMPT_THEN_KERNEL_RE.search(line):
            self._cut_prompt_at = now
        if self._panic is None:
            for what, pattern in WATCHERS:
                if pattern.search(line):
                    self._panic = (what, self._line_count)
                    self._panic_at = now
                    break

    def _flush_partial(self) -> None:
        with self._lock:
            if self._partial:
                self._line(_strip(self._partial), time.monotonic())
                self._partial = ""

    def _send(self, data: bytes) -> None:
        try:
            self.stream.sendall(data)
        except OSError as exc:
            raise BootError(f"cannot write to the console: {exc}. {self.exit_reason()}",
                            milestone=self.timeline.last_reached(), log_path=str(self.log_path),
                            last_lines=self.last_lines()) from exc

    # reading -------------------------------------------------------------------------------

    def last_lines(self, n: int = 15) -> list[str]:
        with self._lock:
            lines = list(self._lines)[-n:]
            if self._partial.strip():
                lines.append(redact(_strip(self._partial)))
        return lines

    def check_panic(self, expected: str = "") -> None:
        """Raise GuestPanic, with the lines around the trigger, if a watcher fired."""
        if self._panic is None:
            return
        what, at = self._panic
        # let the guest finish printing the panic and its trace, bounded
        while (time.monotonic() - self._panic_at < PANIC_SETTLE_SECONDS
               and self._line_count - at < PANIC_CONTEXT_LINES and self._thread.is_alive()):
            time.sleep(0.05)
        with self._lock:
            lines = list(self._lines)
            start = max(0, len(lines) - (self._line_count - at) - 3)
            excerpt = lines[start : start + PANIC_CONTEXT_LINES]
        raise GuestPanic(f"guest {what}", expected=expected,
                         milestone=self.timeline.last_reached(), last_lines=excerpt,
                         log_path=str(self.log_path))

    def expect(self, patterns: list[str | re.Pattern[str]], timeout: float, expected: str) -> int:
        """Index of the first pattern seen; panic, stream end and timeout raise BootError."""
        deadline = time.monotonic() + timeout
        while True:
            if self._log_error is not None:
                raise HostError(f"{self._log_error} (while waiting for {expected}); free "
                                f"space where the lab keeps its machines, or point TMPDIR "
                                f"elsewhere")
            self.check_panic(expected)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.timeout_error(expected, timeout)
            try:
                index = self.child.expect(patterns, timeout=min(0.5, remaining))
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                self._thread.join(2)
                self.check_panic(expected)
                raise BootError(
                    f"the console closed while waiting for {expected}: "
                    f"{self.exit_reason() or 'the machine stopped'}",
                    expected=expected, milestone=self.timeline.last_reached(),
                    last_lines=self.last_lines(), log_path=str(self.log_path),
                ) from None
            self.check_panic(expected)
            return index

    def timeout_error(self, expected: str, timeout: float) -> BootTimeout:
        return BootTimeout(f"no {expected} on the console within {timeout:.0f} s",
                           expected=expected, milestone=self.timeline.last_reached(),
                           last_lines=self.last_lines(), log_path=str(self.log_path))

    @property
    def match(self) -> re.Match[str]:
        return self.child.match

    # shell ---------------------------------------------------------------------------------

    def login(self, user: str, password: str, timeout: float) -> None:
        """Reach a shell: answer a login prompt or take the autologin shell, then sync.

        A prompt can be followed by late kernel messages, so after quiet seconds the lab
        presses Enter to have it printed again.
        """
        deadline = time.monotonic() + timeout
        wanted = "a login prompt or an autologin shell"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self.timeout_error(wanted, timeout)
            if self._cut_prompt_at is not None:
                # the prompt was there, under a kernel line: Enter prints a fresh one at once
                self.timeline.mark(tl.LOGIN_PROMPT, self._cut_prompt_at)
                self._cut_prompt_at = None
                self.child.send("\n")
                self.last_rx = time.monotonic()
            elif tl.INIT in self.timeline.marks and time.monotonic() - self.last_rx > QUIET_ENTER:
                self.child.send("\n")
                self.last_rx = time.monotonic()
            try:
                index = self.expect([LOGIN_RE, SHELL_PROMPT_RE, PASSWORD_RE], min(1.0, left),
                                    wanted)
            except BootTimeout:
                continue
            if index == 1:
                # kernel lines printed in pieces ("CPUs: #1") can end in "#" for a moment:
                # a prompt comes after init and is followed by silence
                seen = time.monotonic()
                time.sleep(PROMPT_SETTLE)
                if tl.INIT in self.timeline.marks and self.last_rx < seen:
                    self.timeline.mark(tl.LOGIN_PROMPT, seen)
                    break
                continue
            if index == 2:  # an early Enter was taken as the user name: start over
                self.child.send("\n")
                continue
            self.child.sendline(user)
            self.expect([PASSWORD_RE], 20, "the password prompt")
            self.child.sendline(password)
            if self.expect([SHELL_PROMPT_RE, re.compile(r"[Ll]ogin incorrect")], 30,
                           "a shell after login") == 1:
                raise BootError(f"login as {user} failed: 'Login incorrect'",
                                expected="a shell", milestone=self.timeline.last_reached(),
                                last_lines=self.last_lines(), log_path=str(self.log_path))
            break
        self.sync()

    def sync(self, attempts: int = 5) -> None:
        """Make the shell quiet and framable: no echo, no prompts; proves it answers."""
        for _ in range(attempts):
            n = next(self._marks)
            self.child.sendline(f"stty -echo; PS1=''; PS2=''; echo R$(({n}+1))Y")
            try:
                # no milestone here: the login prompt is marked only where one was seen
                self.expect([f"R{n + 1}Y\r?\n"], 10, "the shell to answer")
                return
            except BootTimeout:
                self.child.send("\x03")  # abandon a half-typed line
        raise self.timeout_error("answer from the shell", attempts * 10)

    def run(self, cmd: str, timeout: float = 60, check: bool = False) -> Result:
        """Run `cmd` in the console shell; the exit status and output are framed by markers
        the guest computes, so neither an echo nor a prompt can be taken for them."""
        n = next(self._marks)
        banner_due = self.started is None
        # a brace group keeps cd/export effects and copes with a trailing comment in cmd
        self.child.sendline(f"echo R$(({n}+1))S; {{ {cmd}\n}}; echo R$(({n}+1))E$?")
        try:
            self.expect([re.compile(rf"R{n + 1}S\r?\n(.*?)R{n + 1}E(\d+)\r?\n", re.S)],
                        timeout, f"the end of {cmd!r}")
        except BootTimeout as exc:
            self.child.send("\x03")  # interrupt it so the console stays usable
            raise CommandError(f"command {cmd!r} did not finish within {timeout:.0f} s; "
                               f"last console lines:\n" + "\n".join(exc.last_lines)) from None
        output = self.match.group(1).replace("\r\n", "\n").replace("\r", "")
        # the kernel prints to the same serial line: its messages are logged and watched,
        # but they are not the command's output
        output = KERNEL_LINE_RE.sub("", output)
        if banner_due:  # so does the OS's "<name> <version> started", at the end of its boot
            output = BANNER_LINE_RE.sub("", output, count=1)
        result = Result(cmd=cmd, rc=int(self.match.group(2)), output=output.removesuffix("\n"))
        return result.check() if check else result

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.stream.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        with contextlib.suppress(OSError):  # a full disk was reported when it happened
            self._flush_partial()
            self._log.close()
