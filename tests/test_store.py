"""Content-addressed store and pinned sources: verified on every read, tampering refused."""

from __future__ import annotations

import hashlib
import os

import pytest

from builder.errors import CCBuildError
from builder.recipe import Source
from builder.sources.debian import _host_source_entries, host_mirrors
from builder.sources.resolve import ResolveOptions, resolve
from builder.store import Store


def test_put_get_roundtrip_and_tamper_refused(tmp_path):
    s = Store.open(tmp_path / "c")
    digest = s.put_bytes(b"hello")
    assert digest == hashlib.sha256(b"hello").hexdigest()
    assert s.get_bytes(digest, "greeting") == b"hello"
    p = s.blob_path(digest)
    os.chmod(p, 0o644)
    p.write_bytes(b"hellO")
    with pytest.raises(CCBuildError, match="store entry is corrupt"):
        s.get_bytes(digest, "greeting")


def test_path_source_pin_checked(tmp_path):
    f = tmp_path / "fw.fd"
    f.write_bytes(b"\0" * 4096)
    good = hashlib.sha256(f.read_bytes()).hexdigest()
    opts = ResolveOptions(Store.open(tmp_path / "c"), tmp_path)
    assert resolve(Source(path="fw.fd", sha256=good), opts, "firmware.source").sha256 == good
    with pytest.raises(CCBuildError, match="sha256 mismatch for fw.fd.*firmware.source"):
        resolve(Source(path="fw.fd", sha256="0" * 64), opts, "firmware.source")
    with pytest.raises(CCBuildError, match="file not found: nope.fd"):
        resolve(Source(path="nope.fd"), opts, "firmware.source")
    with pytest.raises(CCBuildError, match="no sha256 pin"):
        resolve(Source(path="fw.fd"), ResolveOptions(opts.store, tmp_path, locked=True), "x")


def test_url_offline_without_store_entry_is_refused(tmp_path):
    opts = ResolveOptions(Store.open(tmp_path / "c"), tmp_path, offline=True)
    with pytest.raises(CCBuildError, match="--offline"):
        resolve(Source(url="https://example.invalid/agent", sha256="1" * 64), opts, "agent.source")


def test_host_mirror_parsing_both_formats(tmp_path):
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list").write_text(
        "# comment\ndeb [arch=amd64] http://m.example/debian bookworm main\n"
        "deb-src http://m.example/debian bookworm main\n")
    (etc / "sources.list.d" / "x.sources").write_text(
        "Types: deb\nURIs: http://s.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\nTypes: deb\nEnabled: no\nURIs: http://off.example/\nSuites: sid\n")
    assert _host_source_entries(etc) == [("http://m.example/debian", "bookworm"),
                                         ("http://s.example/debian-security", "bookworm-security")]


def test_this_host_has_a_mirror():
    m = host_mirrors()
    assert m.main.startswith(("http://", "https://", "file:", "mirror+"))


@pytest.mark.slow
def test_debian_source_offline_and_tampered_deb(tmp_path, store):
    """A real .deb through apt; then --offline from the store; a changed pin is refused."""
    from builder.sources.debian import fetch_deb
    src = Source(debian="ovmf", version="2025.02-8+deb13u1", suite="trixie",
                 member="usr/share/ovmf/OVMF.fd")
    r = resolve(src, ResolveOptions(store, tmp_path), "firmware.source")
    assert len(r.data) == 4 * 1024 * 1024 and r.data[-32 - 16:-32] != b""
    r2 = resolve(src, ResolveOptions(store, tmp_path, offline=True), "firmware.source")
    assert r2.data == r.data and r2.sha256 == r.sha256
    with pytest.raises(CCBuildError, match="sha256 mismatch"):
        fetch_deb(store, "ovmf", "2025.02-8+deb13u1", "trixie", sha256="0" * 64)
    with pytest.raises(CCBuildError, match="no member 'usr/share/ovmf/NOPE.fd'"):
        resolve(Source(debian="ovmf", version="2025.02-8+deb13u1", suite="trixie",
                       member="usr/share/ovmf/NOPE.fd"), ResolveOptions(store, tmp_path), "x")


@pytest.mark.slow
def test_vanished_pin_says_how_to_repin(tmp_path, store):
    from builder.sources.debian import fetch_deb
    with pytest.raises(CCBuildError, match="not served by the mirror.*ccbuild lock"):
        fetch_deb(store, "ovmf", "0.0-does-not-exist", "trixie")
