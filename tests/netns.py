"""Separate hosts on one Linux machine, for tests that need several machines (tests/pipeline/test_multihost.py).

A host is a network namespace (`ip netns add`), plus a mount and a UTS namespace of its own, kept alive by
one idle "holder" process (`ip netns exec <ns> unshare --mount --uts --propagation private ... sleep`):

- network: the first host (the hub) holds a bridge; every other host is linked to it by a veth pair and
  gets an address on a private /24. Nothing is added to the machine's own network namespace, so no
  address, route or link of the machine changes, and the hosts reach only each other;
- hostname: its own (`socket.gethostname()` in a host is the host's name);
- disk: a private tmpfs at `private` (the same path on every host; e.g. the checkout's path, so each host
  holds its own copy there) and another at /tmp. Paths named in `carry` (e.g. the installed virtualenv,
  which may lie inside `private`) stay visible at their place, read-only: every host shares them as
  machines share an image. Mounts are private to the host: the machine and other hosts never see them.

Commands run in a host through `nsenter --target <holder>` (`Host.command`), which execs the command in
place: a process started so is the process of its Popen, in the process group the caller gave it. The
test process itself reaches a host's network from one thread that joined that network namespace
(`network_thread`; a network namespace belongs to a thread, so the rest of the process is unaffected).

`hosts()` creates everything and, on the way out (also after an error or an interrupt), kills every
process left in its namespaces (`ip netns pids`), which ends the holders, their mounts and everything
the hosts started, then deletes the namespaces (and with them the veth links and the bridge). It first
removes what an earlier run that died outright (SIGKILL) left: namespaces of this prefix whose creating
process is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

PREFIX = "textrnn-mh"
CLONE_NEWNET = 0x40000000
# The tools and the Debian packages that bring them.
TOOLS = {"ip": "iproute2", "unshare": "util-linux", "nsenter": "util-linux", "mount": "mount", "tar": "tar"}
REFUSALS = ("Operation not permitted", "Permission denied")
SETUP_TIMEOUT_S = 30


class Refused(RuntimeError):
    """The machine refuses namespaces (EPERM): a reason to skip where that is allowed."""


def _run(args: Sequence[str], timeout: float = SETUP_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, timeout=timeout, check=False)


def _text(output: bytes) -> str:
    return output.decode(errors="replace").strip()


def _check(args: Sequence[str], timeout: float = SETUP_TIMEOUT_S) -> str:
    """Run a setup command; raise Refused on EPERM, RuntimeError (with its stderr) on any other failure."""
    result = _run(args, timeout)
    if result.returncode != 0:
        message = f"`{shlex.join(args)}` exited {result.returncode}: {_text(result.stderr)}"
        raise (Refused if any(refusal in _text(result.stderr) for refusal in REFUSALS) else RuntimeError)(message)
    return _text(result.stdout)


def unavailable() -> str | None:
    """Why this machine cannot make hosts, or None when it can. Only refusals are reasons: not root, a tool
    missing (the Debian package is named), or `ip netns add` / a private mount namespace refused (EPERM).
    Any other failure raises: a broken setup is an error, not a skip."""
    if os.geteuid() != 0:
        return "needs root: network and mount namespaces (run as root, as CI does)"
    missing = [f"{tool} (Debian package {package})" for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        return "not installed: " + ", ".join(missing)
    probe = f"{PREFIX}-{os.getpid()}-probe"
    try:
        _check(["ip", "netns", "add", probe])
    except Refused as refused:
        return f"the machine refuses network namespaces: {refused}"
    try:
        _check(["ip", "netns", "exec", probe, "unshare", "--mount", "--uts", "--propagation", "private",
                "sh", "-c", "hostname textrnn-probe && mount -t tmpfs textrnn-probe /tmp"])
    except Refused as refused:
        return f"the machine refuses private mount namespaces: {refused}"
    finally:
        _destroy([probe])
    return None


# ------------------------------------------------------------------------------------------ hosts


@dataclass
class Host:
    """One host: its role (e.g. "server"), network namespace, hostname, address and holder process."""

    role: str
    netns: str
    hostname: str
    address: str
    holder: subprocess.Popen | None = None

    def command(self, args: Sequence[str], cwd: str | Path = "/") -> list[str]:
        """`args` as a command line that runs in this host (its network, mounts and hostname), in `cwd` as
        the host sees it."""
        assert self.holder is not None, f"{self.role}: not started"
        return ["nsenter", f"--target={self.holder.pid}", "--net", "--mount", "--uts", f"--wdns={cwd}", "--",
                *map(str, args)]

    def run(self, args: Sequence[str], cwd: str | Path = "/", env: dict[str, str] | None = None,
            input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run `args` in this host and wait (at most `timeout` s); output captured as text."""
        result = subprocess.run(self.command(args, cwd), capture_output=True, input=input, env=env,
                                timeout=timeout, check=False)
        return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(errors="replace"),
                                           result.stderr.decode(errors="replace"))


# Where the holder keeps `carry` mounts while it covers /tmp and `private` (both may hold them, e.g. a checkout
# under /tmp): a tmpfs over one of these, in the host's mount namespace only, removed once they are moved back.
HOLDING_DIRS = (Path("/media"), Path("/mnt"), Path("/srv"))


def _holding_dir(private: Path, carry: Sequence[Path]) -> Path:
    """The first of HOLDING_DIRS that holds none of the paths, an empty one if there is one (it is hidden
    in the host for a moment)."""
    usable = [candidate for candidate in HOLDING_DIRS if candidate.is_dir()
              and not any(path.is_relative_to(candidate) for path in (private, *carry))]
    for candidate in sorted(usable, key=lambda candidate: any(candidate.iterdir())):
        return candidate
    raise RuntimeError(f"no directory to hold the carried mounts in (tried {', '.join(map(str, HOLDING_DIRS))})")


def _holder_script(host: Host, private: Path, carry: Sequence[Path]) -> str:
    """The holder's shell: hostname, a private /tmp, a private tmpfs at `private` with `carry` bound back
    read-only, then it idles (the namespaces live as long as it does)."""
    hold = _holding_dir(private, carry)
    lines = ["set -eu", f"hostname {shlex.quote(host.hostname)}",
             f"mount -t tmpfs -o mode=0700 {shlex.quote(f'{host.netns}-hold')} {hold}"]
    for index, path in enumerate(carry):  # held aside while /tmp and `private` are covered, then moved back
        lines += [f"mkdir {hold}/carry-{index}", f"mount --bind {shlex.quote(str(path))} {hold}/carry-{index}"]
    lines += [f"mount -t tmpfs -o mode=1777 {shlex.quote(f'{host.netns}-tmp')} /tmp",
              f"mkdir -p {shlex.quote(str(private))}",  # a checkout under /tmp is gone from the new /tmp
              f"mount -t tmpfs -o mode=0755 {shlex.quote(host.netns)} {shlex.quote(str(private))}"]
    for index, path in enumerate(carry):
        target = shlex.quote(str(path))
        lines += [f"mkdir -p {target}", f"mount --move {hold}/carry-{index} {target}",
                  f"mount -o remount,bind,ro {target}"]
    lines += [f"umount {hold}", "echo ready", "exec sleep infinity"]
    return "\n".join(lines)


def _start_holder(host: Host, private: Path, carry: Sequence[Path], timeout_s: float = SETUP_TIMEOUT_S) -> None:
    """Start the host's holder; return once its mounts are in place (it says `ready`)."""
    host.holder = subprocess.Popen(
        ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--uts", "--propagation", "private",
         "sh", "-c", _holder_script(host, private, carry)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    ready, _, _ = select.select([host.holder.stdout], [], [], timeout_s)
    line = host.holder.stdout.readline() if ready else b""
    if line.strip() != b"ready":
        host.holder.kill()
        _, err = host.holder.communicate(timeout=10)
        message = f"{host.role}: host setup failed: {_text(err) or 'no answer'}"
        raise (Refused if any(refusal in _text(err) for refusal in REFUSALS) else RuntimeError)(message)


def _link(hub: Host, host: Host, prefix_len: int) -> None:
    """A veth pair from the hub's bridge to `host` (its end is `eth0` there), addressed and up."""
    hub_end = f"to-{host.role}"[:15]
    _check(["ip", "-n", hub.netns, "link", "add", hub_end, "type", "veth", "peer", "name", "eth0",
            "netns", host.netns])
    _check(["ip", "-n", hub.netns, "link", "set", hub_end, "master", "br0", "up"])
    _check(["ip", "-n", host.netns, "addr", "add", f"{host.address}/{prefix_len}", "dev", "eth0"])
    _check(["ip", "-n", host.netns, "link", "set", "eth0", "up"])


@contextlib.contextmanager
def hosts(roles: Sequence[str], private: Path, carry: Sequence[Path] = (), subnet: str | None = None,
          ) -> Iterator[dict[str, Host]]:
    """One host per role (the first is the hub, at .1; the others at .11, .12, ...) on `subnet` (three
    octets, default 10.213.<pid % 250>), each with a private tmpfs at `private`; see the module docstring.
    Yields {role: Host}; everything is removed on the way out."""
    _remove_stale()
    pid = os.getpid()
    subnet = subnet or f"10.213.{pid % 250}"
    made: dict[str, Host] = {}
    try:
        for index, role in enumerate(roles):
            host = Host(role=role, netns=f"{PREFIX}-{pid}-{role}", hostname=f"{role}-{pid}",
                        address=f"{subnet}.{1 if index == 0 else 10 + index}")
            _check(["ip", "netns", "add", host.netns])
            made[role] = host
            _check(["ip", "-n", host.netns, "link", "set", "lo", "up"])
        hub, *others = made.values()
        _check(["ip", "-n", hub.netns, "link", "add", "br0", "type", "bridge"])
        _check(["ip", "-n", hub.netns, "addr", "add", f"{hub.address}/24", "dev", "br0"])
        _check(["ip", "-n", hub.netns, "link", "set", "br0", "up"])
        for host in others:
            _link(hub, host, 24)
        for host in made.values():
            _start_holder(host, private, carry)
        yield made
    finally:
        _destroy([host.netns for host in made.values()], [host.holder for host in made.values() if host.holder])


def _pids_in(netns: str) -> list[int]:
    result = _run(["ip", "netns", "pids", netns], timeout=10)
    return [int(pid) for pid in _text(result.stdout).split()] if result.returncode == 0 else []


def _destroy(names: Sequence[str], holders: Sequence[subprocess.Popen] = ()) -> None:
    """SIGKILL every process in the namespaces `names` (only processes these tests started live there), reap
    the holders, then delete the namespaces. Raises if a namespace is still listed afterwards."""
    deadline = time.monotonic() + 20
    for name in names:
        while (pids := _pids_in(name)) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for holder in holders:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    holder.wait(timeout=0.2)
            time.sleep(0.1)
    for holder in holders:
        with contextlib.suppress(subprocess.TimeoutExpired):
            holder.wait(timeout=5)
        for pipe in (holder.stdout, holder.stderr):
            if pipe is not None:
                pipe.close()
    for name in names:
        _run(["ip", "netns", "del", name], timeout=10)
    left = [name for name in names if name in listed()]
    if left:
        raise RuntimeError(f"network namespaces left behind: {left}")


def listed() -> list[str]:
    """The names `ip netns list` shows (all of them, not only ours)."""
    result = _run(["ip", "netns", "list"], timeout=10)
    return [line.split()[0] for line in _text(result.stdout).splitlines() if line.strip()]


def _remove_stale() -> None:
    """Remove the namespaces of this prefix whose creating process (the pid in their name) is gone."""
    for name in listed():
        if not name.startswith(f"{PREFIX}-"):
            continue
        owner = name[len(PREFIX) + 1:].split("-", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            _destroy([name])


# --------------------------------------------------------------------------- the test's own access


_libc = ctypes.CDLL(None, use_errno=True)


def _join_netns(netns: str) -> None:
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns {netns}: {os.strerror(error)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def network_thread(host: Host) -> Iterator[ThreadPoolExecutor]:
    """One thread of this process inside `host`'s network namespace: what is submitted to it reaches the
    hosts' addresses (and nothing else); the rest of the process stays in the machine's network."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"netns-{host.role}",
                                  initializer=_join_netns, initargs=(host.netns,))
    try:
        executor.submit(lambda: None).result(timeout=SETUP_TIMEOUT_S)  # joins now: an error surfaces here
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
