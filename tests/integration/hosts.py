"""Booted Debian 12 machines for the install and systemd tests: a rootfs made
with mmdebstrap (cached under the test bed's folder), unpacked fresh for each
machine and booted with systemd-nspawn (../shared/HOST.md). The network is the
host's, so the test bed's loopback registry is reachable from inside."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("TESTBED_DIR", ROOT / ".testbed")) / "hosts"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")

# What a freshly installed Debian 12 build host has before the README's steps:
# systemd, Debian's python3 (no pip), buildah. docker.io and what it needs are
# downloaded (not installed) so that a Docker host is made without the network.
PACKAGES = "systemd,systemd-sysv,dbus,procps,python3,python3-venv,buildah,ca-certificates"
DOCKER_DEBS = "/var/cache/apt/archives"
MMDEBSTRAP = [
    "mmdebstrap", "--quiet", "--format=tar", "--variant=minbase", f"--include={PACKAGES}",
    # apt's lists stay, so `apt-get install` of what is there (or cached) works offline.
    "--skip=cleanup/apt",
    # The host reaches PyPI through a TLS-intercepting proxy: its CA is the
    # organisation CA such a host trusts.
    "--customize-hook=cp " + str(HOST_CA) + ' "$1/usr/local/share/ca-certificates/host-ca.crt"'
    ' && chroot "$1" update-ca-certificates >/dev/null 2>&1',
    '--customize-hook=chroot "$1" apt-get clean && chroot "$1" apt-get install -y -qq '
    "--no-install-recommends --download-only docker.io >/dev/null",
    "bookworm",
]


def base_rootfs() -> Path:
    """The cached rootfs tarball, made when missing (about 80 s, ~450 MB)."""
    key = hashlib.sha256("\0".join(MMDEBSTRAP).encode() + HOST_CA.read_bytes()).hexdigest()
    tarball = CACHE / f"rootfs-{key[:12]}.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    for old in CACHE.glob("rootfs-*.tar*"):
        old.unlink()
    part = tarball.with_suffix(".tar.part")
    subprocess.run([*MMDEBSTRAP, str(part)], check=True, capture_output=True, timeout=900)
    part.rename(tarball)
    return tarball


def unpack(tarball: Path, into: Path) -> Path:
    into.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(into), "--numeric-owner", "-xpf", str(tarball)],
                   check=True, timeout=300)
    return into


def copy_repository(rootfs: Path, dest: str = "/root/orchestrator") -> str:
    """The clone's tracked and new files (what a user's clone holds), no venv or
    test bed state."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard",
                             "-z"], check=True, capture_output=True).stdout
    target = rootfs / dest.lstrip("/")
    for rel in filter(None, listed.decode().split("\0")):
        src = ROOT / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the work tree
        out = target / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out, follow_symlinks=False)
    return dest


def readme_block(heading: str) -> str:
    """The sh block that follows the README line starting with ``heading``: the
    tests run the README's own commands, not a copy of them."""
    text = (ROOT / "README.md").read_text()
    start = text.index(heading)
    match = re.search(r"```sh\n(.*?)```", text[start:], re.S)
    assert match, f"no sh block after {heading!r} in README.md"
    return match.group(1)


class Machine:
    """One booted container. ``run`` executes a shell command inside it as root
    (or another user) with a clean environment, as a login on that host would."""

    def __init__(self, rootfs: Path, log: Path, binds: tuple[str, ...] = ()) -> None:
        self.rootfs = rootfs
        self.log_path = log
        self.binds = binds
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def boot(self, timeout: float = 120) -> Machine:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-q", "-b", "--register=no", "--keep-unit", "--console=pipe",
             "-D", str(self.rootfs), *(f"--bind={b}" for b in self.binds)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.leader:
            self.leader = self._init_pid()
            self._check_alive(deadline)
            time.sleep(0.1)
        while True:
            state = self.run("systemctl is-system-running", check=False, timeout=30)
            if state.stdout.strip() in ("running", "degraded"):
                return self
            self._check_alive(deadline)
            time.sleep(0.3)

    def _check_alive(self, deadline: float) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"nspawn exited {self.proc.returncode}:\n{self.console()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the machine did not boot in time:\n{self.console()}")

    def _init_pid(self) -> int:
        assert self.proc is not None
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            for pid in children.split():
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return int(pid)
        return 0

    def console(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def run(self, command: str, user: str = "root", check: bool = True, timeout: float = 300,
            cwd: str = "/root") -> subprocess.CompletedProcess[str]:
        env = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LANG=C.UTF-8", "TERM=dumb"]
        inner = f"cd {shlex.quote(cwd)} && {command}"
        if user != "root":
            argv = [*env, "runuser", "-u", user, "--", "bash", "-ec", inner]
        else:
            argv = [*env, "HOME=/root", "bash", "-ec", inner]
        proc = subprocess.run(["nsenter", "-t", str(self.leader), "-a", *argv],
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"in the machine, `{command}` exited {proc.returncode}:\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def poweroff(self, timeout: float = 90) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # SIGTERM to nspawn asks the container's systemd for an orderly poweroff.
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            if self.leader:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.leader, signal.SIGKILL)
            self.proc.wait(30)
        self.leader = 0


def nspawn_missing() -> str | None:
    for tool in ("systemd-nspawn", "mmdebstrap", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (scripts/testbed install)"
    if os.geteuid() != 0:
        return "booting a machine needs root"
    return None
