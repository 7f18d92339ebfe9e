"""Kata / Trustee initdata: the digest the runtime binds into the TEE evidence.

The initdata document is TOML (``version = "0.1.0"``, ``algorithm = "sha256" | "sha384" |
"sha512"``, a ``[data]`` table of strings). The Kata runtime (Go: src/runtime/pkg/oci/utils.go
``addHypervisorInitdataOverrides``; Rust: kata-types ``initdata.rs``) hashes the EXACT bytes of
the document with ``algorithm`` -- not a re-serialization -- and then fits the digest to the
field of the platform (govmm ``adjustProperLength``: copy into a zeroed buffer of the field's
size, i.e. truncate a longer digest and zero-pad a shorter one):

* SEV-SNP ``HOST_DATA`` (``sev-snp-guest,host-data=``): 32 bytes. sha256 fits exactly; sha384 and
  sha512 are truncated to their first 32 bytes.
* TDX ``MRCONFIGID`` (``tdx-guest,mrconfigid=``): 48 bytes. sha256 is zero-padded (32 + 16 zero
  bytes); sha384 fits exactly; sha512 is truncated to its first 48 bytes.

Pure functions over bytes (the caller reads the file).
"""

from __future__ import annotations

import base64
import hashlib
import tomllib
from dataclasses import dataclass

from builder.errors import CCBuildError

INITDATA_VERSION = "0.1.0"
ALGORITHMS = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
SNP_HOST_DATA_SIZE = 32
TDX_MRCONFIGID_SIZE = 48


def fit(digest: bytes, size: int) -> bytes:
    """The digest fitted to a ``size``-byte field: truncated, or zero-padded (as Kata does)."""
    return digest[:size] + bytes(max(0, size - len(digest)))


@dataclass(frozen=True)
class Initdata:
    raw: bytes                # the exact file bytes (what is hashed)
    version: str
    algorithm: str
    keys: tuple[str, ...]     # names in [data], sorted

    @property
    def digest(self) -> bytes:
        return ALGORITHMS[self.algorithm](self.raw).digest()

    @property
    def snp_host_data(self) -> bytes:
        return fit(self.digest, SNP_HOST_DATA_SIZE)

    @property
    def tdx_mrconfigid(self) -> bytes:
        return fit(self.digest, TDX_MRCONFIGID_SIZE)

    def record(self, platform: str) -> dict:
        """The ``"initdata"`` object of measurements.json (hex lowercase, plus the base64 the
        QEMU option takes)."""
        out = {"algorithm": self.algorithm, "version": self.version,
               "file_sha256": hashlib.sha256(self.raw).hexdigest(),
               "digest": self.digest.hex(), "data_keys": list(self.keys)}
        if platform == "snp":
            out["snp_host_data"] = self.snp_host_data.hex()
            out["snp_host_data_base64"] = base64.b64encode(self.snp_host_data).decode()
        else:
            out["tdx_mrconfigid"] = self.tdx_mrconfigid.hex()
            out["tdx_mrconfigid_base64"] = base64.b64encode(self.tdx_mrconfigid).decode()
        return out


def parse_initdata(raw: bytes, where: str = "initdata") -> Initdata:
    """Parse and validate an initdata document (refusing what the Kata runtime refuses)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CCBuildError(f"initdata is not UTF-8 (byte {e.start})", where) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise CCBuildError(f"initdata is not valid TOML ({e})", where) from None
    version, algorithm, data = doc.get("version"), doc.get("algorithm"), doc.get("data", {})
    if version != INITDATA_VERSION:
        raise CCBuildError(f"initdata version {version!r} is not supported", where,
                           f'use version = "{INITDATA_VERSION}"')
    if algorithm not in ALGORITHMS:
        raise CCBuildError(f"initdata algorithm {algorithm!r} is not supported", where,
                           "use one of " + ", ".join(ALGORITHMS))
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise CCBuildError("initdata [data] must be a table of strings", where,
                           "the Kata runtime decodes it as map[string]string")
    extra = sorted(set(doc) - {"version", "algorithm", "data"})
    if extra:
        raise CCBuildError(f"initdata has unknown top-level keys {extra}", where)
    return Initdata(raw, version, algorithm, tuple(sorted(data)))


def kata_annotation(raw: bytes) -> str:
    """The ``io.katacontainers.config.hypervisor.cc_init_data`` annotation value: base64 of the
    gzip-compressed document (gzip header mtime 0, so the value is reproducible). The runtime
    hashes the decompressed bytes, so any gzip of the same file yields the same digest."""
    import gzip
    return base64.b64encode(gzip.compress(raw, compresslevel=9, mtime=0)).decode()
