"""Whether this host can run another platform's binaries (a RUN step built for
linux/arm64 on an amd64 host): QEMU user emulation, registered with binfmt_misc."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from orchestrator.core.errors import InputError
from orchestrator.core.platforms import QEMU, split

BINFMT = Path("/proc/sys/fs/binfmt_misc")


def handler_enabled(arch: str, binfmt: Path = BINFMT) -> bool:
    name = QEMU.get(arch.split("/")[0])
    if name is None:
        return False
    try:
        return (binfmt / f"qemu-{name}").read_text().splitlines()[0].strip() == "enabled"
    except (OSError, IndexError):
        return False


def check_emulation(platforms: Iterable[str], host: str, binfmt: Path = BINFMT) -> None:
    """Refuse (bad input, exit 2) a platform this host cannot run, saying what to install."""
    for platform in sorted(set(platforms)):
        if platform == host:
            continue
        _, arch, _ = split(platform)
        if split(host)[1] == "amd64" and arch == "386":
            continue  # runs natively
        if not handler_enabled(arch, binfmt):
            name = QEMU.get(arch, arch)
            raise InputError("[build] platforms", f"{platform} builds need QEMU user emulation "
                             f"on this host, and {binfmt}/qemu-{name} is not registered: "
                             "install qemu-user-static (and binfmt-support), or mount "
                             f"binfmt_misc first (mount -t binfmt_misc binfmt_misc {binfmt})")
