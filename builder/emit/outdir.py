"""Writing an output directory atomically.

All files are written into a hidden sibling directory, fsynced, and then swapped into place
(``renameat2(RENAME_EXCHANGE)`` where the kernel has it, else two renames). An interrupted build
(Ctrl-C, kill -9) leaves at most a hidden ``.NAME.tmp-*`` / ``.NAME.old-*`` directory, which the
next build removes; OUT itself is either the previous complete output or the new one.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from pathlib import Path

from builder.errors import CCBuildError

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        f = libc.renameat2
    except (OSError, AttributeError):
        return False
    r = f(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if r == 0:
        return True
    if ctypes.get_errno() in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(a))


def clean_stale(out: Path) -> None:
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in out.parent.glob(f".{out.name}.old-*"):
        shutil.rmtree(p, ignore_errors=True)


def is_ccbuild_output(out: Path) -> bool:
    return (out / "manifest.json").is_file() and (out / "SHA256SUMS").is_file()


def write_outdir(out: Path, files: dict[str, bytes], force: bool = False,
                 modes: dict[str, int] | None = None) -> None:
    """Replace ``out`` by a directory holding exactly ``files`` (name -> bytes)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CCBuildError("output path exists and is not a directory", str(out))
    if out.is_dir() and any(out.iterdir()) and not is_ccbuild_output(out) and not force:
        raise CCBuildError("output directory exists and is not a ccbuild output", str(out),
                           "choose another -o or pass -f to replace it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CCBuildError(f"cannot create the output directory ({e.strerror})", str(out)) from None
    clean_stale(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    tmp.mkdir(mode=0o755)
    try:
        for name in sorted(files):
            p = tmp / name
            with open(p, "wb") as f:
                f.write(files[name])
                f.flush()
                os.fsync(f.fileno())
            os.chmod(p, (modes or {}).get(name, 0o644))
        os.chmod(tmp, 0o755)
        dfd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        if out.exists():
            if _exchange(tmp, out):
                shutil.rmtree(tmp)  # tmp now holds the previous output
            else:
                old = out.parent / f".{out.name}.old-{os.getpid()}"
                os.rename(out, old)
                os.rename(tmp, out)
                shutil.rmtree(old)
        else:
            os.rename(tmp, out)
        pfd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(pfd)
        finally:
            os.close(pfd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
