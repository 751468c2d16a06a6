"""A small internet in network namespaces: a public host, a home NAT and a carrier NAT.

::

    dev 10.0.1.2 ── home ── 198.51.100.2 ┐              ┌ 203.0.113.2 ── carrier ── view 100.64.0.2
                                         └─── pub ──────┘
                                      192.0.2.1: hub, coturn

* ``pub`` stands for the internet and the public server: it routes between the two NATs'
  public addresses and holds ``192.0.2.1`` (RFC 5737 documentation ranges for every
  "public" address: nothing here is routable outside the machine, and coturn's
  ``denied-peer-ip`` list of private ranges does not cover them).
* ``home`` masquerades the device's LAN keeping source ports (Linux's default): what a home
  router does. ``carrier`` masquerades with ``fully-random`` ports, so the mapping depends
  on the destination (RFC 4787 "endpoint-dependent mapping"): a peer learns a port from
  STUN that nobody else can reach, which is what makes mobile data need a relay.
  Both filter by address and port (conntrack only lets replies in).

Every name carries the test process id and a random tag; :meth:`NatLab.delete` removes
every namespace (the interfaces and nftables rules go with them), and :meth:`create`
first removes what a killed earlier run of this machine left behind. Nothing touches the
host's own interfaces, routes or rules. Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "CARRIER_PUBLIC",
    "DEVICE_IP",
    "HOME_PUBLIC",
    "SERVER_IP",
    "VIEWER_IP",
    "VIEWER_IP_2",
    "LabError",
    "NatLab",
]

SERVER_IP: Final = "192.0.2.1"
HOME_PUBLIC: Final = "198.51.100.2"
CARRIER_PUBLIC: Final = "203.0.113.2"
DEVICE_IP: Final = "10.0.1.2"
VIEWER_IP: Final = "100.64.0.2"
# A second address the viewer can move to (item 4: a phone that changes networks).
VIEWER_IP_2: Final = "100.64.1.2"
_PREFIX: Final = "ea-nat-"
_NO_DAD: Final = ("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
ROLES: Final = ("pub", "home", "dev", "carrier", "view")


class LabError(RuntimeError):
    """A lab command failed; the message names it and what it printed."""


@dataclass
class NatLab:
    """The five namespaces of one test (see the module docstring)."""

    tag: str = field(default_factory=lambda: f"{os.getpid()}-{secrets.token_hex(3)}")
    created: list[str] = field(default_factory=list)
    # Each end host's uplink (interface, gateway); the viewer's changes when it moves.
    uplinks: dict[str, tuple[str, str]] = field(
        default_factory=lambda: {"dev": ("eth0", "10.0.1.1"), "view": ("eth0", "100.64.0.1")}
    )

    def name(self, role: str) -> str:
        """The namespace of ``role`` (pub, home, dev, carrier, view)."""
        if role not in ROLES:
            raise ValueError(f"no namespace {role!r} in the lab")
        return f"{_PREFIX}{self.tag}-{role}"

    def prefix(self, role: str) -> list[str]:
        """The command prefix that runs a program in ``role``'s namespace."""
        return ["ip", "netns", "exec", self.name(role)]

    def create(self) -> None:
        """Build the namespaces, links, routes and NATs; :class:`LabError` on any failure."""
        if shutil.which("ip") is None or shutil.which("nft") is None:
            raise LabError(
                "the lab needs `ip` (iproute2) and `nft` (nftables): scripts/setup --test"
            )
        remove_leftovers()
        for role in ROLES:
            _run("ip", "netns", "add", self.name(role))
            self.created.append(self.name(role))
            # No IPv6 duplicate address detection: a link-local address turning from
            # tentative to preferred a second after link-up is a network change to a
            # Chromium already loading the viewer (ERR_NETWORK_CHANGED).
            self.run(role, "sysctl", "-q", "-w", *_NO_DAD)
            self.ip(role, "link", "set", "lo", "up")
        self._wire(("pub", "h0", "198.51.100.1/24"), ("home", "wan", f"{HOME_PUBLIC}/24"))
        self._wire(("pub", "c0", "203.0.113.1/24"), ("carrier", "wan", f"{CARRIER_PUBLIC}/24"))
        self._wire(("home", "lan", "10.0.1.1/24"), ("dev", "eth0", f"{DEVICE_IP}/24"))
        self._wire(("carrier", "lan", "100.64.0.1/24"), ("view", "eth0", f"{VIEWER_IP}/24"))
        # On pub's loopback: an address of that namespace alone, reached through routing.
        self.ip("pub", "addr", "add", f"{SERVER_IP}/32", "dev", "lo")
        self.ip("home", "route", "add", "default", "via", "198.51.100.1")
        self.ip("carrier", "route", "add", "default", "via", "203.0.113.1")
        self.ip("dev", "route", "add", "default", "via", "10.0.1.1")
        self.ip("view", "route", "add", "default", "via", "100.64.0.1")
        for router in ("pub", "home", "carrier"):
            self.run(router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        self.nft("home", _nat_rules(""))
        self.nft("carrier", _nat_rules(" fully-random"))

    def delete(self) -> None:
        """Remove every namespace made (safe to call twice, and after a failed create)."""
        while self.created:
            subprocess.run(
                ["ip", "netns", "delete", self.created.pop()], check=False, capture_output=True
            )

    def ip(self, role: str, *args: str) -> None:
        """``ip -n NS args``."""
        _run("ip", "-n", self.name(role), *args)

    def run(self, role: str, *command: str) -> str:
        """Run ``command`` inside ``role``'s namespace; its output."""
        return _run(*self.prefix(role), *command)

    def nft(self, role: str, rules: str) -> None:
        """Load an nftables ruleset inside ``role``'s namespace."""
        _run(*self.prefix(role), "nft", "-f", "-", stdin=rules)

    def block_udp(self, role: str) -> None:
        """Drop every UDP packet ``role`` sends or receives (a network that allows only TCP)."""
        self.nft(
            role,
            "table inet udpblock {\n"
            "  chain out { type filter hook output priority 0; meta l4proto udp drop; }\n"
            "  chain in { type filter hook input priority 0; meta l4proto udp drop; }\n"
            "}\n",
        )

    def unblock_udp(self, role: str) -> None:
        """Undo :meth:`block_udp`."""
        self.run(role, "nft", "delete", "table", "inet", "udpblock")

    def move_viewer(self) -> str:
        """Move the viewer to another network, as a phone going from Wi-Fi to mobile data:
        its interface goes away and a new one with a new address takes the default route.
        Every socket of the old address is cut off; the new path is up when this returns."""
        self._wire(("carrier", "lan2", "100.64.1.1/24"), ("view", "eth1", f"{VIEWER_IP_2}/24"))
        self.ip("view", "addr", "flush", "dev", "eth0")
        self.ip("view", "link", "set", "eth0", "down")
        self.ip("view", "route", "replace", "default", "via", "100.64.1.1", "dev", "eth1")
        self.uplinks["view"] = ("eth1", "100.64.1.1")
        return VIEWER_IP_2

    def link(self, role: str, up: bool) -> None:
        """Take ``role``'s uplink (dev, view) down or up."""
        interface, gateway = self.uplinks[role]
        self.ip(role, "link", "set", interface, "up" if up else "down")
        if up:
            self.ip(role, "route", "replace", "default", "via", gateway, "dev", interface)

    def _wire(self, left: tuple[str, str, str], right: tuple[str, str, str]) -> None:
        """A veth pair between two namespaces: (role, interface, address/prefix) each."""
        (left_ns, left_if, left_addr), (right_ns, right_if, right_addr) = left, right
        self.ip(left_ns, "link", "add", left_if, "type", "veth", "peer", "name", right_if,
                "netns", self.name(right_ns))  # fmt: skip
        self.ip(left_ns, "addr", "add", left_addr, "dev", left_if)
        self.ip(right_ns, "addr", "add", right_addr, "dev", right_if)
        self.ip(left_ns, "link", "set", left_if, "up")
        self.ip(right_ns, "link", "set", right_if, "up")


def remove_leftovers() -> None:
    """Delete lab namespaces whose test process is gone (a run killed before cleaning up)."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    for line in listing.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(_PREFIX):
            continue
        pid = name[len(_PREFIX) :].split("-")[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


def _nat_rules(options: str) -> str:
    return (
        "table ip nat {\n"
        "  chain post {\n"
        "    type nat hook postrouting priority srcnat;\n"
        f'    oifname "wan" masquerade{options}\n'
        "  }\n"
        "}\n"
    )


def _run(*command: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        command, input=stdin, capture_output=True, text=True, check=False, timeout=30
    )
    if done.returncode != 0:
        raise LabError(f"`{' '.join(command)}` failed: {done.stderr.strip() or done.stdout}")
    return done.stdout
