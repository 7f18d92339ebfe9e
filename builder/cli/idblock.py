"""`ccbuild id-block`: sign an SEV-SNP ID block for a launch digest and print the QEMU options."""

from __future__ import annotations

import json

from builder.cli.common import int_arg, read_input
from builder.errors import CCBuildError
from builder.measure.idblock import IdBlockParams, load_private_key, make_id_block
from builder.formats.snp_policy import KATA_DEFAULT_POLICY, GuestPolicy


def register(sub) -> None:
    p = sub.add_parser("id-block", help="sign an SEV-SNP ID block and ID auth",
                       description="Print the QEMU sev-snp-guest options id-block=...,id-auth=... "
                       "and the SHA-384 digests of both keys (as the report shows them).")
    p.add_argument("--measurement", required=True, metavar="HEX", help="launch digest (48 bytes)")
    p.add_argument("--id-key", required=True, metavar="PEM", help="ECDSA P-384 private key")
    p.add_argument("--author-key", required=True, metavar="PEM", help="ECDSA P-384 private key")
    p.add_argument("--policy", default=f"0x{KATA_DEFAULT_POLICY:x}", metavar="0x30000",
                   help="guest policy (must equal the launch policy)")
    p.add_argument("--family-id", metavar="HEX", help="16 bytes (default zero)")
    p.add_argument("--image-id", metavar="HEX", help="16 bytes (default zero)")
    p.add_argument("--guest-svn", default="0", metavar="N")
    p.add_argument("--json", action="store_true", help="print a JSON record instead")
    p.set_defaults(func=run)


def _hex(text: str | None, option: str, size: int) -> bytes:
    if text is None:
        return bytes(size)
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise CCBuildError(f"{option} is not hex") from None
    if len(raw) != size:
        raise CCBuildError(f"{option} has {len(raw)} bytes, expected {size}")
    return raw


def run(args) -> int:
    ld = _hex(args.measurement, "--measurement", 48)
    policy = int_arg(args.policy)
    params = IdBlockParams(family_id=_hex(args.family_id, "--family-id", 16),
                           image_id=_hex(args.image_id, "--image-id", 16),
                           guest_svn=int_arg(args.guest_svn), policy=policy)
    id_key = load_private_key(read_input(args.id_key, "--id-key", "key"),
                              f"ID key {args.id_key}")
    author_key = load_private_key(read_input(args.author_key, "--author-key", "key"),
                                  f"author key {args.author_key}")
    r = make_id_block(ld, id_key, author_key, params)
    if args.json:
        import base64
        print(json.dumps({
            "id_block": base64.b64encode(r.id_block).decode(),
            "id_auth": base64.b64encode(r.id_auth).decode(),
            "id_key_digest": r.id_key_digest.hex(),
            "author_key_digest": r.author_key_digest.hex(),
            "policy": {"value": f"0x{policy:x}", **GuestPolicy.decode(policy).as_dict()},
        }, indent=2))
        return 0
    print(r.qemu_options())
    print(f"id_key_digest: {r.id_key_digest.hex()}")
    print(f"author_key_digest: {r.author_key_digest.hex()}")
    return 0
