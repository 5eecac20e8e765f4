"""What users' scripts expect of the console, as RancherOS's own test cases use it: bash
(`sudo bash script`, a `#!/bin/bash` /etc/rc.local that starts a container, a `#!/bin/bash`
network pre_up hook in the network container), parted, blkid and GNU coreutils
(`ros env printenv NAME`); write_files entries that replace /usr/bin/test and a busybox
applet link (vi) leave the console and SSH working; rancher.modules loads btrfs. One
cloud-config carries all of them: the module costs one boot."""

from __future__ import annotations

from fixtures.profiles import Profile
from lab.machine import Machine

BASH_SCRIPT = "/home/rancher/bashisms.sh"
# arrays, [[ ]] and BASH_VERSINFO: what a POSIX sh (busybox ash) cannot run
BASH_BODY = """#!/bin/bash
words=(bash "${BASH_VERSINFO[0]}" ok)
[[ -n ${BASH_VERSION} ]] && echo "${words[*]}"
"""
PRE_UP = "/usr/local/bin/roslab-pre-up"
PRE_UP_LOG = "/var/log/roslab-pre-up.log"  # /var/log is shared by every system container
RC_LOCAL_CONTAINER = "roslab-rc-local"
# the replacement RancherOS's case writes: anything the OS still ran through it would fail
USER_TEST = "#!/bin/bash\necho user-test-was-run\nexit 3\n"
# a busybox applet link too (coreutils' test is a file of its own here): the user's file
# replaces the link, where writing through it would replace busybox, the console's shell
USER_VI = "#!/bin/sh\necho user-vi-was-run\n"
ENV_NAME, ENV_VALUE = "ROSLAB_PRINTENV", "seen-by-printenv"
MODULE = "btrfs"


def cloud_config_for(profile: Profile) -> dict:
    """rc.local runs an image the user Docker has (the profile's; on RancherOS busybox,
    pulled)."""
    image = profile.local_image or "busybox"
    rc_local = f"""#!/bin/bash
wait-for-docker
# the image may come a little after the user Docker (preloaded) or need a pull
for _ in $(seq 120); do
  docker image inspect {image} >/dev/null 2>&1 && break
  sleep 1
done
docker run -d --name {RC_LOCAL_CONTAINER} {image} sleep 86400
"""
    return {
        "write_files": [
            {"path": BASH_SCRIPT, "content": BASH_BODY, "permissions": "0755",
             "owner": "rancher"},
            {"path": "/etc/rc.local", "content": rc_local, "permissions": "0755"},
            {"path": PRE_UP, "container": "network", "permissions": "0755",
             "content": f"#!/bin/bash\nwords=(pre_up ran in bash)\n"
                        f"echo \"${{words[*]}}\" >> {PRE_UP_LOG}\n"},
            {"path": "/usr/bin/test", "content": USER_TEST, "permissions": "0755"},
            {"path": "/usr/bin/vi", "content": USER_VI, "permissions": "0755"},
        ],
        "rancher": {
            "environment": {ENV_NAME: ENV_VALUE},
            "modules": [MODULE],
            "network": {"interfaces": {"eth*": {"dhcp": True, "pre_up": PRE_UP}}},
        },
    }


def test_bash_runs_scripts_in_the_console_and_the_network_container(machine: Machine) -> None:
    problems = []
    for how in (BASH_SCRIPT, f"sudo bash {BASH_SCRIPT}"):
        got = machine.run(how)
        if got.output.strip() != "bash 5 ok":
            problems.append(f"`{how}` in the console printed {got.output.strip()!r} "
                            f"(exit {got.rc}), expected 'bash 5 ok'")
    log = machine.run(f"sudo cat {PRE_UP_LOG}").output
    if "pre_up ran in bash" not in log:
        problems.append(f"the network container's #!/bin/bash pre_up hook {PRE_UP} did not run: "
                        f"{PRE_UP_LOG} holds {log.strip()!r}")
    assert not problems, "; ".join(problems)


def test_console_has_the_tools_users_expect(machine: Machine) -> None:
    checks = {
        "parted": "sudo parted --version",
        "blkid": "sudo blkid -V",
        "lsblk": "lsblk --version",
        "printenv": "printenv HOME",
        "ros env printenv": f"sudo ros env printenv {ENV_NAME}",
        "nohup": "nohup true",
        "install": "install --version",
        "split": "split --version",
    }
    wanted = {"printenv": "/home/rancher", "ros env printenv": ENV_VALUE}
    problems = []
    for tool, cmd in checks.items():
        got = machine.run(cmd)
        out = got.output.strip()
        if got.rc != 0 or (tool in wanted and out != wanted[tool]):
            problems.append(f"{tool}: `{cmd}` exited {got.rc} with {out[-120:]!r}")
    assert not problems, "the console lacks: " + "; ".join(problems)


def test_rc_local_starts_a_container(machine: Machine) -> None:
    def running() -> str:
        return machine.run(f"docker inspect --format '{{{{.State.Status}}}}' "
                           f"{RC_LOCAL_CONTAINER}").output.strip()

    state = machine.wait_until(lambda: running() == "running" and "running", timeout=120,
                               interval=3) or running()
    log = machine.run("sudo cat /var/log/boot/rc.local.log").output.strip()
    assert state == "running", (
        f"the #!/bin/bash /etc/rc.local did not start {RC_LOCAL_CONTAINER}: the user Docker "
        f"says {state!r}; /var/log/boot/rc.local.log: {log[-300:]!r}")


def test_write_files_replacing_usr_bin_test_leaves_the_console_usable(
        machine: Machine) -> None:
    problems = []
    for path, mark in (("/usr/bin/test", "user-test-was-run"), ("/usr/bin/vi", "user-vi-was-run")):
        # never cat it: busybox's bytes on the console would read as a kernel error
        if not machine.run(f"grep -q {mark} {path}").ok:
            listed = machine.run(f"ls -l {path}").output.strip()
            problems.append(f"{path} is not the user's file: {listed[-120:]!r}")
    shell = machine.run("sh -c 'echo $((6 * 7))'")
    if shell.output.strip() != "42":
        problems.append(f"the console's shell is broken: {shell.output.strip()[:120]!r}")
    if machine.capabilities.ssh:
        ssh = machine.ssh().run("echo ssh-$((6 * 7))", timeout=60)
        if ssh.stdout.strip() != "ssh-42":
            problems.append(f"SSH answers {(ssh.stdout + ssh.stderr).strip()[:120]!r}")
    assert not problems, "write_files replaced /usr/bin/test and vi: " + "; ".join(problems)


def test_rancher_modules_loads_btrfs(machine: Machine) -> None:
    loaded = machine.run(f"test -d /sys/module/{MODULE}").ok
    fs = machine.run("cat /proc/filesystems").output.split()
    log = machine.run("sudo cat /var/log/boot/cloud-init-save.log").output
    why = [line for line in log.splitlines() if MODULE in line][-2:]
    assert loaded and MODULE in fs, (
        f"rancher.modules: [{MODULE}]: {MODULE} is not loaded "
        f"(/sys/module/{MODULE} {'exists' if loaded else 'missing'}, "
        f"{'in' if MODULE in fs else 'not in'} /proc/filesystems); the log says {why}")
