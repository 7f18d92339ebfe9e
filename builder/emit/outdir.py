"""Writing an output directory atomically, touching nothing this process does not own.

All files are written into a hidden sibling directory ``.NAME.tmp-<pid>``, fsynced, and then
swapped into place (``renameat2(RENAME_EXCHANGE)`` where the kernel has it, else two renames
through ``.NAME.old-<pid>``). OUT itself is either the previous complete output or the new one.

The rules for OUT (``-o``), all checked before the build starts and again before writing:

- OUT must name a directory entry: not ``.``, ``..``, ``/`` or a name too long to carry the
  temporary's suffix. Its parent is opened once and every later step works by exact name inside
  it (no globbing, nothing built from the user's text but ``.NAME.tmp-<pid>``/``.NAME.old-<pid>``).
- A symlink as OUT is refused (even with ``-f``): ccbuild would otherwise replace either the link
  or a directory somewhere else; give the target itself.
- An existing OUT that is not a directory is refused (even with ``-f``). An existing directory is
  replaced without ``-f`` only when it is empty or *is a ccbuild output*: regular files only,
  ``manifest.json`` (a regular file, valid JSON) lists every one of them as an output besides
  ``manifest.json``, ``SHA256SUMS`` and ``manifest.json.sig``, and nothing else is there. A
  directory that merely holds files with those names is not one.
- Stale temporaries of an interrupted build are removed only when their name is exactly
  ``.NAME.tmp-<pid>`` or ``.NAME.old-<pid>`` for this OUT's NAME, that pid is not a running
  process, the entry is a real directory, and it is empty, holds the marker file this module
  writes (``.ccbuild-tmp``) or is a ccbuild output by the rule above (the previous OUT, moved
  aside).
  Anything else is left alone.
- A failure before the exchange leaves the previous OUT and no temporary; parent directories
  this process created for OUT are removed again if they are still empty.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
from pathlib import Path

from builder.errors import CCBuildError

_RENAME_EXCHANGE = 2
MARKER = ".ccbuild-tmp"
_SUFFIX_ROOM = len(".") + len(".tmp-") + 10     # ".NAME.tmp-<pid>": pid up to 10 digits
_NAME_MAX = 255
_SIDE_FILES = {"manifest.json", "SHA256SUMS", "manifest.json.sig"}
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def _shown(p) -> str:
    """A path for a one-line message: undecodable bytes escaped, bounded length."""
    s = os.fsencode(p).decode("utf-8", "backslashreplace")
    s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
    return s if len(s) <= 200 else s[:197] + "..."


def _err(what: str, out, hint: str | None = None) -> CCBuildError:
    return CCBuildError(what, f"-o {_shown(out)}", hint)


def exchange(dfd: int, a: str, b: str) -> bool:
    import ctypes   # only when OUT is written
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        f = libc.renameat2
    except (OSError, AttributeError):
        return False
    r = f(dfd, os.fsencode(a), dfd, os.fsencode(b), _RENAME_EXCHANGE)
    if r == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), a)


def _split(out: Path) -> tuple[Path, str]:
    """(parent, NAME) of OUT, refusing what cannot be an output directory's own entry."""
    raw = os.fsencode(out)
    if not raw:
        raise _err("OUT is empty", out)
    if b"\0" in raw:
        raise _err("OUT contains a NUL byte", out)
    name = out.name
    if name in ("", ".", ".."):
        raise _err("OUT must name a directory of its own (not ., .. or /)", out,
                   "give a new or existing output directory, e.g. -o out/NAME")
    if len(os.fsencode(name)) + _SUFFIX_ROOM > _NAME_MAX:
        raise _err(f"OUT's name is too long ({len(os.fsencode(name))} bytes, at most "
                   f"{_NAME_MAX - _SUFFIX_ROOM})", out)
    return out.parent, name


def _lstat(dfd: int, name: str) -> os.stat_result | None:
    try:
        return os.lstat(name, dir_fd=dfd)
    except FileNotFoundError:
        return None


def _outputs_listed(dfd: int, name: str) -> bool:
    """``dfd/name`` is a ccbuild output: regular files only, exactly those manifest.json lists
    (plus the side files), every name a plain file name."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
    except OSError:
        return False
    try:
        entries = os.listdir(fd)
        for e in entries:
            st = os.lstat(e, dir_fd=fd)
            if not stat.S_ISREG(st.st_mode):
                return False
        if "manifest.json" not in entries or "SHA256SUMS" not in entries:
            return False
        st = os.lstat("manifest.json", dir_fd=fd)
        if st.st_size > 16 << 20:
            return False
        mfd = os.open("manifest.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        with os.fdopen(mfd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return False
            manifest = json.loads(f.read(16 << 20))
        listed = {o["path"] for o in manifest["outputs"]}
        if not all(isinstance(p, str) and _PLAIN.fullmatch(p) for p in listed):
            return False
        return set(entries) - _SIDE_FILES == listed - _SIDE_FILES and \
            listed.isdisjoint({"manifest.json", "SHA256SUMS"})
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return False
    finally:
        os.close(fd)


def is_ccbuild_output(out: Path) -> bool:
    """OUT holds exactly a ccbuild output (see the module's rules)."""
    out = Path(out)
    try:
        dfd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        return _outputs_listed(dfd, out.name)
    finally:
        os.close(dfd)


def _check_existing(dfd: int, name: str, out: Path, force: bool) -> bool:
    """Whether OUT exists (refusing what may not be replaced)."""
    try:
        st = _lstat(dfd, name)
    except OSError as e:
        raise _err(f"cannot inspect OUT ({e.strerror})", out) from None
    if st is None:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise _err("OUT is a symlink; ccbuild does not replace links or write through them",
                   out, "give the directory it points to")
    if not stat.S_ISDIR(st.st_mode):
        raise _err("OUT exists and is not a directory", out, "choose another -o")
    if force:
        return True
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
        try:
            empty = not os.listdir(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise _err(f"cannot read OUT ({e.strerror})", out) from None
    if not empty and not _outputs_listed(dfd, name):
        raise _err("OUT exists and is not a ccbuild output (its manifest.json must list exactly "
                   "its files)", out, "choose another -o or pass -f to replace it")
    return True


def nearest_ancestor(parent: Path, target: Path, what: str) -> tuple[Path, os.stat_result]:
    """The nearest existing ancestor of ``target`` (starting at its ``parent``) and its stat:
    where the missing parents would be created. Errors name ``what`` (OUT, DIST)."""
    probe = parent
    while True:
        try:
            return probe, os.stat(probe)
        except FileNotFoundError:
            if probe == probe.parent:
                raise _err(f"{what}'s parent does not exist", target) from None
            probe = probe.parent
        except OSError as e:
            raise _err(f"cannot use {what}'s parent ({e.strerror})", target) from None


def check_out(out: Path, force: bool = False) -> None:
    """Refuse, before any work, an OUT that :func:`write_outdir` would refuse or fail on."""
    out = Path(out)
    parent, name = _split(out)
    probe, st = nearest_ancestor(parent, out, "OUT")
    if not stat.S_ISDIR(st.st_mode):
        raise _err("OUT's parent is not a directory", out)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise _err("OUT's parent is not writable" if probe == parent else
                   "cannot create OUT's parent (no write permission)", out)
    try:
        dfd = os.open(probe, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise _err(f"cannot open OUT's parent ({e.strerror})", out) from None
    tmp = f".{name}.tmp-{os.getpid()}"
    try:
        if probe == parent:
            _check_existing(dfd, name, out, force)
        try:   # can an entry be made here at all (read-only or pseudo file systems)?
            os.mkdir(tmp, 0o700, dir_fd=dfd)
        except FileExistsError:
            pass   # a stale temporary with our pid: write_outdir deals with it
        except OSError as e:
            raise _err(f"cannot write next to OUT ({e.strerror})", out) from None
        else:
            os.rmdir(tmp, dir_fd=dfd)
    finally:
        os.close(dfd)


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False   # a leftover of an earlier process that had our pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True    # someone else's process (or not a pid at all): not ours to judge
    return True


def clean_stale(dfd: int, name: str) -> list[str]:
    """Remove stale temporaries of OUT ``name`` inside the directory ``dfd`` (the module's rules);
    returns the names removed."""
    removed = []
    rx = re.compile(r"\.(tmp|old)-([1-9][0-9]{0,9})")
    prefix = f".{name}"
    for entry in os.listdir(dfd):
        if not entry.startswith(prefix):
            continue
        m = rx.fullmatch(entry[len(prefix):])
        if not m or pid_alive(int(m[2])):
            continue
        st = _lstat(dfd, entry)
        if st is None or not stat.S_ISDIR(st.st_mode):
            continue
        mst, empty = None, False
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
            try:
                mst = _lstat(fd, MARKER)
                empty = not os.listdir(fd)
            finally:
                os.close(fd)
        except OSError:
            continue
        if empty:   # killed between mkdir and the marker: nothing to lose
            try:
                os.rmdir(entry, dir_fd=dfd)
                removed.append(entry)
            except OSError:
                pass
        elif (mst is not None and stat.S_ISREG(mst.st_mode)) or _outputs_listed(dfd, entry):
            shutil.rmtree(entry, dir_fd=dfd, ignore_errors=True)
            removed.append(entry)
    return removed


def _make_parents(parent: Path, out: Path) -> list[Path]:
    """mkdir -p the parent; returns the directories created (outermost first)."""
    missing = []
    p = parent
    while not os.path.lexists(p):
        missing.append(p)
        if p == p.parent:
            break
        p = p.parent
    created = []
    try:
        for d in reversed(missing):
            os.mkdir(d, 0o755)
            created.append(d)
    except OSError as e:
        _remove_parents(created)
        raise _err(f"cannot create OUT's parent ({e.strerror})", out) from None
    return created


def _remove_parents(created: list[Path]) -> None:
    for d in reversed(created):
        try:
            os.rmdir(d)
        except OSError:
            break


def _fsync_dir(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError:
        pass


def write_outdir(out: Path, files: dict[str, bytes], force: bool = False,
                 modes: dict[str, int] | None = None) -> None:
    """Replace ``out`` by a directory holding exactly ``files`` (name -> bytes)."""
    out = Path(out)
    parent, name = _split(out)
    for n in files:
        if not _PLAIN.fullmatch(n) or n == MARKER:
            raise AssertionError(f"not a plain output file name: {n!r}")  # a code bug
    created = _make_parents(parent, out)
    try:
        dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        _remove_parents(created)
        raise _err(f"cannot open OUT's parent ({e.strerror})", out) from None
    tmp = f".{name}.tmp-{os.getpid()}"
    made_tmp = False
    try:
        exists = _check_existing(dfd, name, out, force)
        try:
            clean_stale(dfd, name)
            os.mkdir(tmp, 0o700, dir_fd=dfd)
            made_tmp = True
            tfd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
        except OSError as e:
            raise _err(f"cannot write next to OUT ({e.strerror})", out) from None
        try:
            _write_files(tfd, files, modes or {}, out)
        finally:
            os.close(tfd)
        try:
            os.chmod(tmp, 0o755, dir_fd=dfd, follow_symlinks=False)
        except NotImplementedError:
            os.chmod(tmp, 0o755, dir_fd=dfd)
        except OSError as e:
            raise _err(f"cannot write next to OUT ({e.strerror})", out) from None
        try:
            if exists and exchange(dfd, tmp, name):
                made_tmp = False
                shutil.rmtree(tmp, dir_fd=dfd, ignore_errors=True)  # now the previous output
            elif exists:
                old = f".{name}.old-{os.getpid()}"
                os.rename(name, old, src_dir_fd=dfd, dst_dir_fd=dfd)
                try:
                    os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                except OSError:
                    os.rename(old, name, src_dir_fd=dfd, dst_dir_fd=dfd)  # put it back
                    raise
                made_tmp = False
                shutil.rmtree(old, dir_fd=dfd, ignore_errors=True)
            else:
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                made_tmp = False
        except OSError as e:
            raise _err(f"cannot replace OUT ({e.strerror})", out) from None
        _fsync_dir(dfd)
    except BaseException:
        if made_tmp:
            shutil.rmtree(tmp, dir_fd=dfd, ignore_errors=True)
        os.close(dfd)
        _remove_parents(created)   # only the empty ones go
        raise
    os.close(dfd)


def _write_files(tfd: int, files: dict[str, bytes], modes: dict[str, int], out: Path) -> None:
    try:
        fd = os.open(MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                     dir_fd=tfd)
        os.close(fd)
        for n in sorted(files):
            fd = os.open(n, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                         dir_fd=tfd)
            with os.fdopen(fd, "wb") as f:
                f.write(files[n])
                f.flush()
                os.fsync(f.fileno())
                os.fchmod(f.fileno(), modes.get(n, 0o644))
        os.unlink(MARKER, dir_fd=tfd)   # from here on the temporary is a complete output
        os.fsync(tfd)
    except OSError as e:
        raise _err(f"cannot write OUT ({e.strerror})", out) from None
