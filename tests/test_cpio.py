"""newc writer and reader, checked against GNU cpio (an independent implementation)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from builder.errors import CCBuildError, FormatError
from builder.formats import cpio
from builder.formats.cpio import Entry

EPOCH = 1700000000          # 2023-11-14 22:13:20 UTC

pytestmark = pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio is not installed")

# Name lengths 1..9 and data sizes 0..9 cover every header/name and data padding case.
TREE = [
    Entry.dir("a", 0o755),
    Entry.dir("a/bb", 0o700),
    Entry.dir("a/bb/ccc", 0o755),
    Entry.file("a/bb/ccc/dddd", b"", 0o644),
    Entry.file("a/bb/e", b"1", 0o600),
    Entry.file("a/ff", b"22", 0o640),
    Entry.file("a/ggggg", b"333", 0o755),
    Entry.file("hhhhhh", b"4444", 0o644),
    Entry.file("iiiiiii", b"55555", 0o4755),
    Entry.file("jjjjjjjj", b"666666", 0o444),
    Entry.file("kkkkkkkkk", b"7777777", 0o644),
    Entry.file("l", b"88888888", 0o644),
    Entry.file("m-dash", bytes(range(256)) * 9, 0o644),
    Entry.dir("m", 0o1777),
    Entry.symlink("m/rel", "../a/ff"),
    Entry.symlink("m/abs", "/a/bb/e"),
    Entry.symlink("m/dangling", "nowhere/at/all"),
]


def make_tree(root: Path, entries) -> None:
    """Create ``entries`` on disk with the same modes and mtimes, as GNU cpio's input."""
    for e in sorted(entries, key=lambda e: e.path):
        p = root / e.path
        if e.kind == "dir":
            p.mkdir()
        elif e.kind == "file":
            p.write_bytes(e.data)
        elif e.kind == "symlink":
            p.symlink_to(e.data.decode())
    for e in sorted(entries, key=lambda e: e.path, reverse=True):
        p = root / e.path
        if e.kind != "symlink":
            os.chmod(p, e.mode)
        subprocess.run(["touch", "-h", "-d", f"@{EPOCH}", str(p)], check=True)


def gnu_cpio_create(root: Path) -> bytes:
    names = subprocess.run(["find", ".", "-mindepth", "1", "-printf", "%P\\n"], cwd=root,
                           check=True, capture_output=True).stdout
    names = b"".join(sorted(n + b"\n" for n in names.splitlines()))     # LC_ALL=C sort
    return subprocess.run(["cpio", "-o", "-H", "newc", "--reproducible", "--owner=0:0", "--quiet"],
                          cwd=root, input=names, check=True, capture_output=True).stdout


def _fs_dir_nlink_is_conventional(root: Path) -> bool:
    for d in [root, *[p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()]]:
        subdirs = sum(1 for c in d.iterdir() if c.is_dir() and not c.is_symlink())
        if os.stat(d).st_nlink != 2 + subdirs:
            return False
    return True


def test_byte_identical_to_gnu_cpio(tmp_path):
    make_tree(tmp_path, TREE)
    if not _fs_dir_nlink_is_conventional(tmp_path):
        pytest.skip("this file system does not report directory nlink as 2 + subdirectories")
    theirs = gnu_cpio_create(tmp_path)
    # GNU cpio --reproducible numbers inodes from 0; ours default to 1..N.
    ours = cpio.write_archive(TREE, EPOCH, first_ino=0)
    assert cpio.diff_archives(ours, theirs) is None
    assert ours == theirs


def test_default_numbering_differs_from_gnu_only_in_ino(tmp_path):
    make_tree(tmp_path, TREE)
    theirs = cpio.read_archive(gnu_cpio_create(tmp_path))
    ours = cpio.read_archive(cpio.write_archive(TREE, EPOCH))
    assert [m.ino for m in ours] == list(range(1, len(TREE) + 1))
    assert [m.ino for m in theirs] == list(range(0, len(TREE)))
    for a, b in zip(ours, theirs):
        assert (a.name, a.mode, a.uid, a.gid, a.mtime, a.data, a.rdevmajor, a.rdevminor,
                a.devmajor, a.devminor) == \
               (b.name, b.mode, b.uid, b.gid, b.mtime, b.data, b.rdevmajor, b.rdevminor,
                b.devmajor, b.devminor)
        if a.kind != "dir" or _fs_dir_nlink_is_conventional(tmp_path):
            assert a.nlink == b.nlink, a.name


WITH_DEVICES = TREE + [Entry.dir("dev"), Entry.chardev("dev/console", 5, 1, 0o600),
                       Entry.chardev("dev/null", 1, 3, 0o666), Entry.blockdev("dev/vda", 254, 0, 0o660)]


def test_gnu_cpio_lists_it(tmp_path):
    data = cpio.write_archive(WITH_DEVICES, EPOCH)
    out = subprocess.run(["cpio", "-itv", "--quiet"], input=data, capture_output=True, check=True,
                         env={**os.environ, "TZ": "UTC", "LC_ALL": "C"}).stdout.decode()
    rows = {}
    for line in out.splitlines():
        m = re.match(r"(\S{10})\s+(\d+)\s+(\S+)\s+(\S+)\s+(\d+,\s+\d+|\d+)\s+(\w{3}\s+\d+\s+\d{4})\s+(.*)$",
                     line)
        assert m, line
        perms, nlink, user, group, size, date, name = m.groups()
        target = None
        if " -> " in name:
            name, target = name.split(" -> ", 1)
        rows[name] = (perms, int(nlink), user, group, re.sub(r"\s+", " ", size), date.split(), target)
    assert sorted(rows) == sorted(e.path for e in WITH_DEVICES)
    for e in WITH_DEVICES:
        perms, nlink, user, group, size, date, target = rows[e.path]
        assert perms == stat.filemode(cpio.KINDS[e.kind] | e.mode), e.path
        assert (user, group) == ("root", "root")
        assert date == ["Nov", "14", "2023"]
        if e.kind in ("chardev", "blockdev"):
            assert size == f"{e.rdev[0]}, {e.rdev[1]}"
        else:
            assert int(size) == len(e.data)
        assert target == (e.data.decode() if e.kind == "symlink" else None)
    assert rows["dev/console"][0] == "crw-------" and rows["dev/null"][0] == "crw-rw-rw-"
    assert rows["a"][1] == 3 and rows["a/bb"][1] == 3 and rows["a/bb/ccc"][1] == 2


def test_gnu_cpio_extracts_it(tmp_path):
    data = cpio.write_archive(WITH_DEVICES, EPOCH)
    dest = tmp_path / "x"
    dest.mkdir()
    # Device nodes need CAP_MKNOD; their header fields are checked by the listing test.
    subprocess.run(["cpio", "-idm", "--no-absolute-filenames", "--quiet", "--nonmatching", "dev/*"],
                   cwd=dest, input=data, check=True, capture_output=True)
    for e in TREE:
        p = dest / e.path
        st_ = os.lstat(p)
        if e.kind == "file":    # GNU cpio 2.13 -m sets no symlink times and leaves a directory's
            assert st_.st_mtime == EPOCH, e.path   # mtime at its last change (listing checks them)
        if e.kind == "symlink":
            assert os.readlink(p) == e.data.decode()
            continue
        assert stat.S_IMODE(st_.st_mode) == e.mode, e.path
        if e.kind == "file":
            assert p.read_bytes() == e.data
        else:
            assert p.is_dir()
    assert not (dest / "dev" / "console").exists()


def test_padding_and_layout_by_hand():
    data = cpio.write_archive([Entry.file("ab", b"xyz", 0o644)], 5, block=4)
    hdr = data[:110].decode()
    fields = [int(hdr[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
    assert hdr[:6] == "070701"
    assert fields == [1, 0o100644, 0, 0, 1, 5, 3, 0, 0, 0, 0, 3, 0]
    assert data[110:116] == b"ab\0\0\0\0"         # 110 + 3 -> padded to 116
    assert data[116:120] == b"xyz\0"              # 3 -> padded to 4
    assert data[120:126] == b"070701"
    assert data[120 + 110:120 + 121] == b"TRAILER!!!\0"
    assert len(data) % 4 == 0 and len(data) == 120 + 124
    assert len(cpio.write_archive([Entry.file("ab", b"xyz")], 5)) == 512


def test_sorted_and_independent_of_input_order():
    shuffled = list(reversed(WITH_DEVICES))
    a = cpio.write_archive(WITH_DEVICES, EPOCH)
    assert a == cpio.write_archive(shuffled, EPOCH)
    names = [m.name for m in cpio.read_archive(a)]
    assert names == sorted(names, key=lambda n: n.encode())


def test_round_trip():
    data = cpio.write_archive(WITH_DEVICES, EPOCH)
    members = cpio.read_archive(data)
    by = {m.name: m for m in members}
    for e in WITH_DEVICES:
        m = by[e.path]
        assert m.kind == e.kind and stat.S_IMODE(m.mode) == e.mode and m.data == e.data
        assert (m.rdevmajor, m.rdevminor) == e.rdev and m.mtime == EPOCH and (m.uid, m.gid) == (0, 0)


@pytest.mark.parametrize("bad", ["", "/abs", "./x", "a/../b", "a//b", "..", "TRAILER!!!", "a\0b"])
def test_writer_refuses_bad_names(bad):
    with pytest.raises(CCBuildError):
        cpio.write_archive([Entry.file(bad, b"")], EPOCH)


def test_writer_refuses_duplicates_and_bad_fields():
    with pytest.raises(CCBuildError, match="duplicate archive path 'x'"):
        cpio.write_archive([Entry.file("x", b""), Entry.dir("x")], EPOCH)
    with pytest.raises(CCBuildError, match="mode"):
        cpio.write_archive([Entry.file("x", b"", 0o10000)], EPOCH)
    with pytest.raises(CCBuildError, match="carries no data"):
        cpio.write_archive([Entry("d", "dir", 0o755, b"x")], EPOCH)
    with pytest.raises(CCBuildError):
        cpio.write_archive([Entry.file("x", b"")], -1)


# ---- reader: malformed input is a FormatError with an offset, never anything else ----

def test_reader_errors_name_offsets():
    good = cpio.write_archive([Entry.file("name", b"data")], EPOCH, block=4)
    with pytest.raises(FormatError, match="magic") as e:
        cpio.read_archive(b"070707" + good[6:])
    assert e.value.offset == 0
    with pytest.raises(FormatError, match="ino") as e:
        cpio.read_archive(good[:6] + b"0000000g" + good[14:])
    assert e.value.offset == 6
    with pytest.raises(FormatError, match="mode"):
        cpio.read_archive(good[:14] + b"0x000001" + good[22:])
    with pytest.raises(FormatError, match="no TRAILER") as e:
        cpio.read_archive(good[:120])
    assert e.value.offset == 120
    with pytest.raises(FormatError, match="runs past the end"):
        cpio.read_archive(good[:117])
    bad_namesize = good[:94] + b"%08X" % 4000 + good[102:]
    with pytest.raises(FormatError, match="name size"):
        cpio.read_archive(bad_namesize)
    not_nul = good[:110] + b"nameX" + good[115:]
    with pytest.raises(FormatError, match="NUL"):
        cpio.read_archive(not_nul)


def test_reader_every_truncation():
    good = cpio.write_archive(WITH_DEVICES, EPOCH, block=4)
    for cut in range(len(good)):
        with pytest.raises(FormatError):
            cpio.read_archive(good[:cut])


def test_reader_accepts_concatenated_archives():
    a = cpio.write_archive([Entry.file("one", b"1")], EPOCH)
    b = cpio.write_archive([Entry.file("two", b"2")], EPOCH)
    assert [m.name for m in cpio.read_archive(a + b"\0" * 16 + b)] == ["one", "two"]
    with pytest.raises(FormatError, match="magic") as e:
        cpio.read_archive(a + b"junk" * 40)
    assert e.value.offset == len(a)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_reader_fuzz_only_format_errors(data):
    good = bytearray(cpio.write_archive(WITH_DEVICES[:6], EPOCH, block=4))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(good) - 1))
        good[i] = data.draw(st.integers(0, 255))
    try:
        cpio.read_archive(bytes(good))
    except FormatError:
        pass


# ---- diff_archives ----

def _patch(data: bytes, name: str, field: str, value: int) -> bytes:
    """Rewrite one header field of member ``name``."""
    m = next(m for m in cpio.read_archive(data) if m.name == name)
    off = m.offset + 6 + 8 * cpio._FIELDS.index(field)
    return data[:off] + b"%08X" % value + data[off + 8:]


BASE = [Entry.dir("etc"), Entry.file("etc/a", b"alpha"), Entry.file("etc/b", b"beta"),
        Entry.symlink("etc/c", "a"), Entry.file("init", b"\x7fELF....", 0o755)]


def test_diff_equal_is_none():
    a = cpio.write_archive(BASE, EPOCH)
    assert cpio.diff_archives(a, cpio.write_archive(list(reversed(BASE)), EPOCH)) is None


@pytest.mark.parametrize("field,value,expected", [
    ("mtime", EPOCH + 1, "member 'etc/b': mtime 1700000000 != 1700000001"),
    ("uid", 1000, "member 'etc/b': owner uid 0 != 1000"),
    ("gid", 5, "member 'etc/b': owner gid 0 != 5"),
    ("mode", 0o100600, "member 'etc/b': mode 0o0644 != 0o0600"),
    ("mode", 0o040644, "member 'etc/b': type file != dir"),
    ("nlink", 2, "member 'etc/b': nlink 1 != 2"),
    ("rdevmajor", 7, "member 'etc/b': rdev 0,0 != 7,0"),
])
def test_diff_names_member_and_field(field, value, expected):
    a = cpio.write_archive(BASE, EPOCH)
    assert cpio.diff_archives(a, _patch(a, "etc/b", field, value)) == expected


def test_diff_content_presence_order_and_trailing_bytes():
    a = cpio.write_archive(BASE, EPOCH)
    changed = [Entry.file("etc/b", b"bet4") if e.path == "etc/b" else e for e in BASE]
    d = cpio.diff_archives(a, cpio.write_archive(changed, EPOCH))
    assert d.startswith("member 'etc/b': content differs (size 4 vs 4, first difference at byte 3")
    relinked = [Entry.symlink("etc/c", "b") if e.path == "etc/c" else e for e in BASE]
    assert cpio.diff_archives(a, cpio.write_archive(relinked, EPOCH)) == \
        "member 'etc/c': symlink target differs ('a' != 'b')"
    fewer = cpio.write_archive([e for e in BASE if e.path != "etc/b"], EPOCH)
    assert cpio.diff_archives(a, fewer) == "member 'etc/b': present only in the first archive"
    assert cpio.diff_archives(fewer, a) == "member 'etc/b': present only in the second archive"
    extra = cpio.write_archive(BASE + [Entry.file("zzz", b"")], EPOCH)
    assert cpio.diff_archives(a, extra) == "member 'zzz': present only in the second archive"
    # same members, different order (a writer that does not sort)
    one = cpio.write_archive([BASE[1]], EPOCH, block=4)[:-124]   # strip the trailer
    two = cpio.write_archive([BASE[2]], EPOCH, block=4)
    one_b = cpio.write_archive([BASE[2]], EPOCH, block=4)[:-124]
    two_b = cpio.write_archive([BASE[1]], EPOCH, block=4)
    assert cpio.diff_archives(one + two, one_b + two_b) == \
        "member order differs at position 0: 'etc/a' vs 'etc/b'"
    # identical members, different block padding
    d = cpio.diff_archives(cpio.write_archive(BASE, EPOCH, block=4), a)
    assert d.startswith("members agree, archive bytes differ at offset")


def test_diff_malformed_is_format_error():
    a = cpio.write_archive(BASE, EPOCH)
    with pytest.raises(FormatError):
        cpio.diff_archives(a, a[:200])
