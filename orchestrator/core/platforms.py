"""Platforms in OCI terms (``os/arch[/variant]``). Pure."""

from __future__ import annotations

import re

_PLATFORM = re.compile(r"^[a-z0-9]+/[a-z0-9_]+(?:/[a-z0-9]+)?$")
# uname -m -> the OCI architecture (and variant)
_MACHINES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
             "armv7l": "arm/v7", "armv6l": "arm/v6", "ppc64le": "ppc64le",
             "s390x": "s390x", "riscv64": "riscv64", "i686": "386", "i386": "386"}
# OCI architecture -> the name of qemu's user-mode emulator for it
QEMU = {"arm64": "aarch64", "arm": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
        "riscv64": "riscv64", "386": "i386", "amd64": "x86_64", "mips64le": "mips64el"}


def check_platform(text: str) -> str | None:
    return None if _PLATFORM.match(text) else (
        f"{text!r} is not a platform: write OS/ARCH[/VARIANT], e.g. linux/amd64, linux/arm64")


def from_machine(machine: str) -> str:
    """This host's platform from ``uname -m``."""
    return "linux/" + _MACHINES.get(machine.lower(), machine.lower())


def split(platform: str) -> tuple[str, str, str | None]:
    parts = platform.split("/")
    return parts[0], parts[1], parts[2] if len(parts) > 2 else None


def of_descriptor(descriptor: dict[str, object]) -> str | None:
    """An index entry's platform as ``os/arch[/variant]`` (None when it has none)."""
    platform = descriptor.get("platform")
    if not isinstance(platform, dict):
        return None
    text = f"{platform.get('os')}/{platform.get('architecture')}"
    return f"{text}/{platform['variant']}" if platform.get("variant") else text


def tag_suffix(platform: str) -> str:
    """What a platform adds to a tag: linux/arm/v7 -> linux-arm-v7."""
    return platform.replace("/", "-")
