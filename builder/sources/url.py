"""A file downloaded over http(s), pinned by sha256 (for users with internet access).

The download is capped like a local ``path:`` source (``LIMITS["file"]``): a server announcing
or sending more is refused before memory is an issue.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request

from builder import log
from builder.errors import CCBuildError
from builder.inputs import LIMITS
from builder.store import Store


def fetch_url(store: Store, url: str, sha256: str, offline: bool, where: str) -> bytes:
    if store.has(sha256):
        return store.get_bytes(sha256, where)
    if offline:
        raise CCBuildError("not in the store and --offline is set", where,
                           "run once without --offline to fetch it")
    log.info(f"download: {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            cap = LIMITS["file"]
            try:
                total = int(r.headers.get("Content-Length") or 0) or None
            except ValueError:
                total = None
            if total and total > cap:
                raise CCBuildError(f"download too large ({total} bytes, limit {cap})", where)
            chunks, got = [], 0
            with log.bar(total, url.rsplit("/", 1)[-1]) as b:
                while chunk := r.read(1 << 20):
                    got += len(chunk)
                    if got > cap:
                        raise CCBuildError(f"download too large (more than {cap} bytes)", where)
                    chunks.append(chunk)
                    b.update(len(chunk))
            data = b"".join(chunks)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise CCBuildError(f"download failed ({getattr(e, 'reason', e)})", where,
                           "check the URL, or supply the file by 'path'") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise CCBuildError(f"sha256 mismatch: downloaded {digest}, pinned {sha256}", where)
    store.put_bytes(data)
    return data
