"""What a build consults outside its store: the files it reads, the paths it looks for and the
tools it looks up on PATH.

While :func:`recording` is open, :func:`builder.inputs.open_regular` notes every file it opens,
:func:`exists` every path probed, and :func:`which` every tool lookup (found or not). The
up-to-date record (:mod:`builder.uptodate`) keeps these so that a later build can tell, without
running a stage, that nothing it depends on has changed. Stdlib only: the record's check imports
this module and not the pipeline.
"""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass, field
from collections.abc import Iterator


@dataclass
class Consulted:
    """Everything one build consulted (the store's own files among them: the record sorts
    those out, :func:`builder.uptodate.save`)."""
    # abspath -> [resolved path when opened, size, SHA-256 of the bytes read]; size and digest
    # stay None for a file opened and streamed by a reader that does not report its bytes
    files: dict[str, list] = field(default_factory=dict)
    conflicts: set[str] = field(default_factory=set)          # read twice, two contents
    probes: dict[str, bool] = field(default_factory=dict)     # abspath -> existed
    # (name, search path or None for PATH) -> identity or None (not found)
    tools: dict[tuple[str, str | None], list | None] = field(default_factory=dict)


_active: list[Consulted] = []


@contextmanager
def recording() -> Iterator[Consulted]:
    """Note what the code inside consults (nested recordings: the innermost one notes)."""
    c = Consulted()
    _active.append(c)
    try:
        yield c
    finally:
        _active.remove(c)


def note_open(path: str | os.PathLike) -> None:
    """A file was opened for reading (called by open_regular)."""
    if _active:
        p = os.path.abspath(os.fspath(path))
        _active[-1].files.setdefault(p, [os.path.realpath(p), None, None])


def recording_now() -> bool:
    return bool(_active)


def note_read(path: str | os.PathLike, size: int, sha256: str) -> None:
    """The bytes a reader took from ``path``: their size and SHA-256 (read_regular, path
    sources). The record holds exactly these, so a file changed after it was read is seen."""
    if not _active:
        return
    c = _active[-1]
    p = os.path.abspath(os.fspath(path))
    entry = c.files.setdefault(p, [os.path.realpath(p), None, None])
    if entry[2] is None:
        entry[1:] = [size, sha256]
    elif entry[2] != sha256:
        c.conflicts.add(p)


def exists(path: str | os.PathLike) -> bool:
    """``os.path.exists``, noted: a path a build looks for and does not find is an input too
    (it would change the build when it appears)."""
    p = os.path.abspath(os.fspath(path))
    there = os.path.exists(p)
    if _active:
        _active[-1].probes.setdefault(p, there)
    return there


def tool_identity(name: str, path: str | None = None) -> list | None:
    """[path found, resolved path, size, mtime, inode, device, ctime] of the executable
    ``name`` resolves to now on PATH (or on ``path``), or None."""
    import shutil
    exe = shutil.which(name, path=path)
    if exe is None:
        return None
    try:
        real = os.path.realpath(exe)
        st = os.stat(real)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return [exe, real, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, st.st_ctime_ns]


def which(name: str, path: str | None = None) -> list | None:
    """:func:`tool_identity`, noted (a tool that is not found is noted as missing)."""
    ident = tool_identity(name, path)
    if _active:
        _active[-1].tools.setdefault((name, path), ident)
    return ident
