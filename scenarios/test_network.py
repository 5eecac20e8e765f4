"""rancher.network as RancherOS applies it: interfaces chosen by exact name, by glob and by
`mac=` (a MAC match wins over the name), static addresses, MTU, the gateway, DNS
nameservers and search domains, a bond (`bond:` on its members, `bond_opts`), a bridge
(`bridge:` on its port), VLANs (`vlans: 100,200:NAME`), pre_cmds and post_cmds; and the
host name a DHCP server offers when the cloud-config names none. pre_cmds make links
to match (dummy interfaces with chosen MACs), so one boot checks every way of matching;
the bond, the bridge and the VLANs are made over the machine's own NICs eth1 to eth4,
where its platform gives it more than one; eth0 keeps its DHCP lease.

The cloud-config comes by URL: that datasource has no metadata, so only DHCP can name
the machine."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lab.machine import Machine

datasource = "url"
MAC = "02:00:00:00:00:42"
POST_FILE = "/var/lib/rancher/roslab-post-cmds.txt"
NAMESERVERS = ["10.0.2.3", "192.0.2.53"]
SEARCH = ["roslab.test", "lab.example"]
# the NICs after eth0, in order: eth1 and eth2 make a bond, eth3 is a bridge's port and
# eth4 a VLAN trunk
extra_nics = ["52:54:00:12:34:51", "52:54:00:12:34:52", "52:54:00:12:34:53",
              "52:54:00:12:34:54"]
BOND_MEMBERS = ["eth1", "eth2"]
cloud_config = {
    "rancher": {
        "network": {
            "pre_cmds": [
                "modprobe dummy",
                "ip link add rl-static type dummy",
                "ip link add rl-glob0 type dummy",
                f"ip link add rl-mac address {MAC} type dummy",
            ],
            # runs once the interfaces are configured: it sees rl-static's address
            "post_cmds": [f"ip -4 -o addr show dev rl-static > {POST_FILE}"],
            "dns": {"nameservers": NAMESERVERS, "search": SEARCH},
            "interfaces": {
                "rl-static": {"address": "192.0.2.10/24", "gateway": "192.0.2.1", "mtu": 1400},
                "rl-glob*": {"addresses": ["198.51.100.10/24", "198.51.100.11/24"],
                             "mtu": 1300},
                f"mac={MAC}": {"address": "203.0.113.10/24", "mtu": 1280},
                "rl-mac": {"address": "203.0.113.99/24"},  # the MAC match wins over this
                **{name: {"bond": "bond0"} for name in BOND_MEMBERS},
                "bond0": {"address": "10.99.1.10/24",
                          "bond_opts": {"mode": "1", "miimon": "100"}},
                "eth3": {"bridge": "br0"},
                "br0": {"address": "10.99.2.10/24"},
                "eth4": {"vlans": "100,200:vlan200"},
                "eth4.100": {"address": "10.99.3.10/24"},
                "vlan200": {"address": "10.99.4.10/24"},
            },
        },
    },
}


def _link(machine: Machine, name: str) -> tuple[list[str], str]:
    """(IPv4 addresses with prefix, MTU) of link `name` in the guest."""
    out = machine.run(f"ip -4 -o addr show dev {name}").output
    addrs = [f[f.index("inet") + 1] for f in (line.split() for line in out.splitlines())
             if "inet" in f]
    mtu = machine.run(f"cat /sys/class/net/{name}/mtu").output.strip()
    return addrs, mtu


@pytest.mark.parametrize(("link", "addresses", "mtu"), [
    ("rl-static", ["192.0.2.10/24"], "1400"),
    ("rl-glob0", ["198.51.100.10/24", "198.51.100.11/24"], "1300"),
    ("rl-mac", ["203.0.113.10/24"], "1280"),
], ids=["by-name", "by-glob", "by-mac"])
def test_interface_gets_its_static_addresses_and_mtu(machine: Machine, link: str,
                                                    addresses: list[str], mtu: str) -> None:
    got_addrs, got_mtu = _link(machine, link)
    got = {"addresses": sorted(got_addrs), "mtu": got_mtu}
    want = {"addresses": addresses, "mtu": mtu}
    assert got == want, f"rancher.network.interfaces for {link}: got {got}, expected {want}"


def _bond(machine: Machine) -> list[str]:
    problems = []
    slaves = machine.run("cat /sys/class/net/bond0/bonding/slaves").output.split()
    if sorted(slaves) != BOND_MEMBERS:
        problems.append(f"bond0 has members {slaves}, expected {BOND_MEMBERS}")
    mode = machine.run("cat /sys/class/net/bond0/bonding/mode").output.strip()
    if mode != "active-backup 1":
        problems.append(f"bond_opts mode 1: bond0's mode is {mode!r}")
    return problems


def _bridge(machine: Machine) -> list[str]:
    if not machine.run("test -d /sys/class/net/br0/bridge").ok:
        return ["br0 is not a bridge (or does not exist)"]
    master = machine.run("basename $(readlink /sys/class/net/eth3/master)").output.strip()
    return [] if master == "br0" else [f"eth3's master is {master!r}, not br0"]


def _vlan_links(machine: Machine) -> list[str]:
    problems = []
    for name, vid in (("eth4.100", 100), ("vlan200", 200)):
        # the kernel's own account of a VLAN link: "VID: 100 ..." and "Device: eth4"
        details = machine.run(f"sudo cat /proc/net/vlan/{name}").output
        if f"VID: {vid}\t" not in details or "Device: eth4" not in details:
            problems.append(f"{name} is not VLAN {vid} on eth4: {details.strip()[:160]!r}")
    return problems


@pytest.mark.parametrize(("kind", "check", "addresses"), [
    ("bond", _bond, {"bond0": "10.99.1.10/24"}),
    ("bridge", _bridge, {"br0": "10.99.2.10/24"}),
    ("vlans", _vlan_links, {"eth4.100": "10.99.3.10/24", "vlan200": "10.99.4.10/24"}),
], ids=["bond", "bridge", "vlans"])
@pytest.mark.needs("extra_nics")
def test_bond_bridge_and_vlans_are_made(machine: Machine, kind: str,
                                        check: Callable[[Machine], list[str]],
                                        addresses: dict[str, str]) -> None:
    problems = check(machine)
    for link, address in addresses.items():
        got = _link(machine, link)[0]
        if got != [address]:
            problems.append(f"{link} has addresses {got}, expected [{address!r}]")
    if problems:  # which NIC is which, should the guest have named them otherwise
        problems.append("the guest's links: " + " | ".join(
            machine.run("ip -o link show").output.splitlines()))
    assert not problems, f"rancher.network {kind}: " + "; ".join(problems)


def test_gateway_is_the_default_route(machine: Machine) -> None:
    route = machine.run("ip -4 route get 8.8.8.8", check=True).output.strip()
    assert "via 192.0.2.1 dev rl-static" in route, (
        f"rancher.network.interfaces.rl-static.gateway 192.0.2.1 is not the default route: "
        f"`ip route get 8.8.8.8` says {route!r}")


def test_dns_nameservers_and_search(machine: Machine) -> None:
    conf = machine.run("cat /etc/resolv.conf", check=True).output
    servers = [f[1] for f in (line.split() for line in conf.splitlines())
               if len(f) > 1 and f[0] == "nameserver"]
    search = [f[1:] for f in (line.split() for line in conf.splitlines())
              if f and f[0] == "search"]
    problems = []
    if servers != NAMESERVERS:
        problems.append(f"nameservers {servers}, expected {NAMESERVERS}")
    if search != [SEARCH]:
        problems.append(f"search {search}, expected {SEARCH}")
    assert not problems, "/etc/resolv.conf: " + "; ".join(problems) + f"\n{conf}"


def test_pre_cmds_then_post_cmds_ran(machine: Machine) -> None:
    post = machine.run(f"sudo cat {POST_FILE}").output
    assert "192.0.2.10/24" in post, (
        f"post_cmds did not run after the interfaces were configured (pre_cmds made "
        f"rl-static): {POST_FILE} holds {post.strip()!r}")


def test_dhcp_offered_hostname_is_used_when_none_is_set(machine: Machine) -> None:
    offered = machine.driver.dhcp_hostname()
    if offered is None:
        pytest.skip(f"the {machine.driver.name} machine's DHCP server offers no host name")
    got = machine.run("hostname", check=True).output.strip()
    assert got == offered, (
        f"hostname is {got!r}; no cloud-config hostname is set and DHCP offered {offered!r}")
