"""The file tree of a boot image, shared by the initrd (a newc cpio, stages/initrd.py) and the
verity rootfs (an erofs/ext4 image, stages/rootfs.py): the entry kinds, the default directories
both images carry, and the one rule for paths inside an image.

Paths are absolute inside the image (``/etc/hostname``); :func:`image_path` normalizes them to
the archive form (``etc/hostname``) and refuses anything that could resolve outside the image
root. Modes are permission bits 0..0o7777; owners are always root.
"""

from __future__ import annotations

from dataclasses import dataclass

from builder.errors import CCBuildError


@dataclass(frozen=True)
class Dir:
    path: str
    mode: int = 0o755


@dataclass(frozen=True)
class File:
    """A file from the recipe: ``path`` in the image, its bytes and mode."""
    path: str
    data: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str


@dataclass(frozen=True)
class Device:
    path: str
    kind: str          # "chardev" | "blockdev"
    major: int
    minor: int
    mode: int = 0o600


# The directories every image has (the mount points the kernel and the agent expect).
DEFAULT_DIRS = (Dir("/dev"), Dir("/proc", 0o555), Dir("/sys", 0o555), Dir("/tmp", 0o1777),
                Dir("/run"), Dir("/etc"), Dir("/root", 0o700))


def image_path(path: str, image: str = "image") -> str:
    """Normalize a path in the image to its archive name (no leading ``/``), refusing anything
    that could resolve outside the image root."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise CCBuildError(f"{image} path {path!r} is empty or not a string")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in path.split("/"):
        raise CCBuildError(f"{image} path {path!r} escapes the image root ('..')",
                           hint="give the target path inside the image, e.g. /etc/name")
    if not parts:
        raise CCBuildError(f"{image} path {path!r} names the image root itself")
    return "/".join(parts)


def check_mode(path: str, mode: int, image: str = "image") -> int:
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777:
        raise CCBuildError(f"{image} path {path!r}: bad mode {mode!r}", hint="use 0o000..0o7777")
    return mode
