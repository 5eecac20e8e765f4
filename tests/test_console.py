"""Console on a real kernel: login, marker framing, milestones, config drive in a guest.

One tiny guest boot (~5 s under TCG) serves the whole module.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from lab import timeline as tl
from lab.errors import CommandError
from lab.machine import Machine


@pytest.fixture(scope="module")
def shell(tiny_guests: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    from drivers.machines import make_machine

    machine = make_machine("qemu", tiny_guests["shell"], "x86_64",
                           {"hostname": "framed", "runcmd": ["echo R123E0"]}, "configdrive",
                           tmp_path_factory.mktemp("console"), "tcg", cpus=1, memory_mb=512)
    with machine:
        machine.boot(timeout=120)
        yield machine


def test_login_and_milestones(shell: Machine) -> None:
    marks = shell.timeline.marks
    assert marks[tl.KERNEL] < marks[tl.INIT] <= marks[tl.STARTED] <= marks[tl.LOGIN_PROMPT]
    # the initramfs unpack, a phase of its own in the profile (seconds on a large initrd)
    assert marks[tl.KERNEL] < marks[tl.UNPACK_START] < marks[tl.UNPACKED] < marks[tl.INIT]
    assert shell.info["os"] == "Tiny v0.0.1"
    # the shell the login gave runs as root (the tiny guest has no `id`: ask the kernel)
    uid = shell.run(r"sed -n 's/^Uid:[[:space:]]*\([0-9]*\).*/\1/p' /proc/self/status")
    assert (uid.rc, uid.output) == (0, "0"), uid


def test_framing_is_not_fooled_by_echo_prompts_or_marker_lookalikes(shell: Machine) -> None:
    # output that looks like prompts, like the markers, and like the typed command
    cmd = "echo '/ # '; echo 'R$((1+1))E0'; echo R2E0; printf 'no newline'"
    result = shell.run(cmd)
    assert result.rc == 0
    assert result.output == "/ # \nR$((1+1))E0\nR2E0\nno newline"


def test_exit_status_and_multiline(shell: Machine) -> None:
    assert shell.run("sh -c 'exit 7'").rc == 7
    result = shell.run("for i in 1 2 3; do echo line$i; done # a trailing comment")
    assert (result.rc, result.output) == (0, "line1\nline2\nline3")
    assert shell.run("true").output == ""


def test_the_os_banner_printed_while_a_command_runs_is_not_its_output(shell: Machine) -> None:
    # an OS prints "<name> <version> started" as its boot ends, on the console a command may
    # be running on: soak's contract check once read it as a Docker ID
    assert shell.console is not None
    shell.console.started = None  # as before the banner
    result = shell.run("(sleep 0.3; echo 'Tiny v0.0.1 started') & echo before; sleep 1; "
                       "echo after", timeout=30)
    assert result.output == "before\nafter", result
    assert shell.console.started == ("Tiny", "v0.0.1")
    # once the banner was seen, a command that prints such a line keeps it
    assert shell.run("echo 'Tiny v0.0.1 started'").output == "Tiny v0.0.1 started"


def test_check_raises_with_command_and_output(shell: Machine) -> None:
    with pytest.raises(CommandError, match=r"'ls /nonexistent' failed with exit status 1"):
        shell.run("ls /nonexistent", check=True)


def test_timeout_interrupts_and_the_console_stays_usable(shell: Machine) -> None:
    with pytest.raises(CommandError, match="did not finish within 2 s"):
        shell.run("sleep 30", timeout=2)
    assert shell.run("echo back").output == "back"


def test_config_drive_reaches_the_guest(shell: Machine) -> None:
    text = shell.run("cat /media/config-2/openstack/latest/user_data", check=True).output
    assert text.splitlines()[0] == "#cloud-config"
    assert "hostname: framed" in text


def test_console_log_is_timestamped(shell: Machine) -> None:
    lines = shell.console_log.read_text().splitlines()
    assert any("Linux version" in line for line in lines)
    assert all(line.startswith("[") and "] " in line for line in lines)


@pytest.mark.parametrize("datasource", ["url", "cmdline"])
def test_other_datasources_reach_the_kernel_cmdline(make_tiny: Callable[..., Machine],
                                                    datasource: str) -> None:
    machine = make_tiny("shell", {"hostname": "ds"}, datasource).boot(timeout=120)
    cmdline = machine.run("cat /proc/cmdline", check=True).output
    if datasource == "url":
        assert "rancher.cloud_init.datasources=[url:http://10.0.2.2:" in cmdline
        # the lab serves it for the machine's lifetime (10.0.2.2 is the host's 127.0.0.1)
        port = cmdline.split("10.0.2.2:")[1].split("/")[0]
        served = urllib.request.urlopen(f"http://127.0.0.1:{port}/user-data", timeout=5)
        assert "hostname: ds" in served.read().decode()
    else:
        assert "rancher.cloud_init.datasources=[cmdline]" in cmdline
        assert "cc.hostname=ds" in cmdline


def test_a_prompt_a_kernel_line_cuts_is_still_the_login_prompt(
        make_tiny: Callable[..., Machine]) -> None:
    """A kernel line printed right after the shell's prompt, on its line: the prompt is
    marked when it came and the lab asks for a fresh one at once (it used to wait for ten
    quiet seconds, and boots that hit this measured their login 10-20 s late)."""
    machine = make_tiny("cut-prompt").boot(timeout=120)
    lines = machine.console_log.read_text().splitlines()
    cut = next((line for line in lines if re.search(r"[#$] \[\s*\d+\.\d+\] ", line)), None)
    assert cut is not None, "no kernel line followed the prompt:\n" + "\n".join(lines[-8:])
    cut_at = float(cut[1:cut.index("]")])
    # the log's timestamps are rounded to the millisecond
    assert machine.timeline.marks[tl.LOGIN_PROMPT] <= cut_at + 0.0005
    assert machine.run("echo answered", check=True).output == "answered"
