"""SEV-SNP: the launch digests recomputed from OUT, and OUT against an SNP attestation report.

- :func:`recompute_snp`: each measurements.json SNP entry recomputed from its own parameters.
- :func:`check_snp_report`: the report's chain and signature (:func:`verify_snp_report`), which
  matrix entry MEASUREMENT is, HOST_DATA, ID key digest, the policy decoded.
- :func:`verify_snp_report`: a report against AMD's certificate chain.

The chain (AMD SEV-SNP ABI specification and AMD KDS interface specification, facts only):
    ARK (AMD Root Key, self-signed, RSA-4096)   --RSA-PSS SHA-384, salt 48-->  ASK (or ASVK)
    ASK (AMD SEV Key)                           --RSA-PSS SHA-384, salt 48-->  VCEK (or VLEK)
    VCEK (ECDSA P-384, one per chip and TCB)    --ECDSA P-384 SHA-384------->  report bytes 0..0x29F

The report signature R and S are stored little-endian (72 bytes each). A VCEK certificate names
the chip (extension 1.3.6.1.4.1.3704.1.4, hwID = CHIP_ID) and the TCB it was derived for
(1.3.6.1.4.1.3704.1.3.x: 1 boot loader, 2 TEE, 3 SNP, 8 microcode, 9 FMC on Turin); both must match
the report's CHIP_ID (unless masked) and REPORTED_TCB.

Trust anchor: the ARK must be AMD's published root for the product (shipped under
``builder/data/amd/<product>/``, copied from AMD's KDS). A chain supplied by the caller is used
for the ASK/ARK certificates, but its ARK must still be one of AMD's roots. Certificate validity
periods are not checked: reports are routinely verified long after a VCEK was fetched.

Failures: a mismatch or a broken signature is a :class:`CheckFailed` (exit 1) that names the
link; an unreadable file is a :class:`CCBuildError` (exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.oid import NameOID

from builder import keys
from builder.errors import CCBuildError, CheckFailed
from builder.formats import snp_report
from builder.formats.snp_policy import GuestPolicy
from builder.formats.snp_report import SnpReport, parse_report
from builder.measure.sev_hashes import KernelHashes
from builder.measure.snp import snp_matrix
from builder.verify.out import load_out
from builder.verify.report import FAIL, INFO, OK, SKIP, Check, Verdict

PRODUCTS = ("milan", "genoa", "turin")
PSS_SALT = 48
OID_AMD = "1.3.6.1.4.1.3704.1"
OID_HWID = f"{OID_AMD}.4"
OID_PRODUCT_NAME = f"{OID_AMD}.2"
TCB_OIDS = {"bootloader": f"{OID_AMD}.3.1", "tee": f"{OID_AMD}.3.2", "snp": f"{OID_AMD}.3.3",
            "microcode": f"{OID_AMD}.3.8", "fmc": f"{OID_AMD}.3.9"}


@dataclass(frozen=True)
class VerifiedReport:
    """A report whose signature and chain verified, with the names of what vouched for it."""
    report: SnpReport
    product: str             # milan | genoa | turin
    signer: str              # VCEK | VLEK
    vcek_subject: str
    ask_subject: str
    ark_subject: str
    chain_source: str        # "given" or "built-in AMD KDS keys"

    def to_json(self) -> dict:
        return {"product": self.product, "signer": self.signer, "vcek": self.vcek_subject,
                "ask": self.ask_subject, "ark": self.ark_subject,
                "chain_source": self.chain_source, "report": self.report.to_json()}


# --- loading ----------------------------------------------------------------------------------

def load_certificate(data: bytes, what: str) -> x509.Certificate:
    """One certificate, PEM or DER (:func:`builder.keys.load_certificate`)."""
    return keys.load_certificate(data, what)


def load_chain(data: bytes, what: str = "certificate chain") -> tuple[x509.Certificate, x509.Certificate]:
    """(ASK, ARK) from a PEM bundle holding both (either order; the ARK is the self-issued one)."""
    a, b = keys.load_pem_certificates(data, what, count=2)
    if a.subject == a.issuer and b.subject != b.issuer:
        a, b = b, a
    if b.subject != b.issuer:
        raise CCBuildError(f"{what}: has no self-issued root (ARK) certificate")
    return a, b


def builtin_chain(product: str) -> tuple[x509.Certificate, x509.Certificate]:
    """AMD's published ASK and ARK for a product (public keys shipped with ccbuild)."""
    if product not in PRODUCTS:
        raise CCBuildError(f"unknown SEV-SNP product {product!r}", hint=f"one of {', '.join(PRODUCTS)}")
    base = resources.files("builder") / "data" / "amd" / product
    ask = x509.load_pem_x509_certificate((base / "ask.pem").read_bytes())
    ark = x509.load_pem_x509_certificate((base / "ark.pem").read_bytes())
    return ask, ark


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _issuer_cn(cert: x509.Certificate) -> str:
    names = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def product_of(vcek: x509.Certificate, report: SnpReport) -> str | None:
    """The product from the VCEK issuer name (``SEV-Milan``, ``SEV-VLEK-Genoa``...), else from
    the report's CPUID fields."""
    issuer = _issuer_cn(vcek).lower()
    for p in PRODUCTS:
        if issuer.endswith(p):
            return p
    return report.product


# --- checks -----------------------------------------------------------------------------------

def _tlv(der: bytes, off: int) -> tuple[int, int]:
    """(start of content, end of element) of the DER element at ``off``."""
    if off + 2 > len(der):
        raise ValueError("truncated DER")
    length = der[off + 1]
    start = off + 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or start + n > len(der):
            raise ValueError("bad DER length")
        length = int.from_bytes(der[start:start + n], "big")
        start += n
    if start + length > len(der):
        raise ValueError("DER element runs past the data")
    return start, start + length


def _signature_algorithms(cert: x509.Certificate) -> tuple[bytes, bytes]:
    """The signature AlgorithmIdentifier inside the signed TBS part and the one outside it."""
    der = cert.public_bytes(serialization.Encoding.DER)
    body, _ = _tlv(der, 0)
    tbs_start, tbs_end = _tlv(der, body)
    _, outer_end = _tlv(der, tbs_end)
    pos = tbs_start
    if der[pos] == 0xA0:  # [0] version
        pos = _tlv(der, pos)[1]
    pos = _tlv(der, pos)[1]  # serialNumber
    inner_end = _tlv(der, pos)[1]
    return der[pos:inner_end], der[tbs_end:outer_end]


def _check_rsa_pss(subject: x509.Certificate, issuer: x509.Certificate, link: str) -> None:
    try:
        inner, outer = _signature_algorithms(subject)
    except (ValueError, IndexError):
        raise CheckFailed(f"{link}: {_cn(subject)} has a malformed structure") from None
    if inner != outer:
        raise CheckFailed(f"{link}: the signature algorithm of {_cn(subject)} differs from the one "
                          "its signed part names")
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise CheckFailed(f"{link}: {_cn(issuer)} holds an {keys.key_type_name(key)}, not the "
                          "RSA key AMD's chain uses")
    try:
        key.verify(subject.signature, subject.tbs_certificate_bytes,
                   padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=PSS_SALT),
                   hashes.SHA384())
    except (InvalidSignature, ValueError):
        raise CheckFailed(f"{link}: the signature on {_cn(subject)} does not verify with the key "
                          f"of {_cn(issuer)}") from None


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def _der_integer(value: bytes) -> int | None:
    if len(value) >= 3 and value[0] == 0x02 and value[1] == len(value) - 2:
        return int.from_bytes(value[2:], "big", signed=True)
    return None


def _extensions(cert: x509.Certificate) -> dict[str, bytes]:
    out = {}
    for ext in cert.extensions:
        if isinstance(ext.value, x509.UnrecognizedExtension):
            out[ext.oid.dotted_string] = ext.value.value
    return out


def _check_binding(vcek: x509.Certificate, report: SnpReport, signer: str) -> None:
    """The VCEK must be the one for this chip and this REPORTED_TCB."""
    if signer != "VCEK":
        return
    ext = _extensions(vcek)
    hwid = ext.get(OID_HWID)
    if hwid is not None and not report.mask_chip_key:
        chip = hwid[2:] if len(hwid) == 66 and hwid[:2] == b"\x04\x40" else hwid
        if chip != report.chip_id:
            raise CheckFailed(f"VCEK -> chip: the VCEK was issued for chip {chip.hex()[:16]}..., "
                              f"the report comes from chip {report.chip_id.hex()[:16]}...")
    for name, value in report.reported_tcb.parts.items():
        raw = ext.get(TCB_OIDS[name])
        if raw is None:
            continue
        cert_value = _der_integer(raw)
        if cert_value is not None and cert_value != value:
            raise CheckFailed(f"VCEK -> TCB: the VCEK was derived for {name} SVN {cert_value}, "
                              f"the report's REPORTED_TCB has {value}")


def _check_report_signature(report: SnpReport, vcek: x509.Certificate, signer: str) -> None:
    key = vcek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise CheckFailed(f"{signer} -> report: the {signer} holds an {keys.key_type_name(key)}, "
                          "expected ECDSA P-384 (secp384r1)")
    sig = utils.encode_dss_signature(report.r, report.s)
    try:
        key.verify(sig, report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        raise CheckFailed(f"{signer} -> report: the report signature (bytes 0x0-0x29f) does not "
                          f"verify with the {signer}") from None


def verify_snp_report(report_bytes: bytes, vcek_bytes: bytes, chain_bytes: bytes | None = None,
                      product: str | None = None, vcek_what: str | None = None,
                      chain_what: str = "certificate chain") -> VerifiedReport:
    """Verify an SNP attestation report (binary or hex text) with its VCEK (DER or PEM) and the
    ASK/ARK chain (PEM bundle; AMD's built-in keys for the product when None).

    Checks, in order: the ARK is AMD's root and self-signed, ARK -> ASK, ASK -> VCEK, the VCEK
    matches the report's chip and REPORTED_TCB, VCEK -> report signature.
    Raises CheckFailed naming the first link that fails, CCBuildError for unreadable input."""
    report = snp_report.parse_report(report_bytes)
    if report.signature_algo != snp_report.SIG_ALGO_ECDSA_P384_SHA384:
        raise CheckFailed(f"report: signature algorithm {report.signature_algo} is not ECDSA "
                          "P-384 with SHA-384 (1)")
    reserved = report.raw[snp_report.SIGNATURE_OFFSET + 2 * snp_report.SIG_COMPONENT_SIZE:]
    if any(reserved):
        raise CheckFailed("report: the reserved bytes after R and S in the signature field "
                          "(0x330-0x49f) are not zero")
    signer = report.signing_key_name
    if signer not in ("VCEK", "VLEK"):
        raise CheckFailed(f"report: SIGNING_KEY says the report is signed by {signer}")
    vcek = load_certificate(vcek_bytes, vcek_what or signer)
    prod = product or product_of(vcek, report)
    if chain_bytes is not None:
        ask, ark = load_chain(chain_bytes, chain_what)
        source = "given"
    else:
        if signer == "VLEK":
            raise CCBuildError("a VLEK-signed report needs its ASVK/ARK chain",
                               hint="pass the chain file (AMD KDS vlek cert_chain)")
        if prod is None:
            raise CCBuildError("cannot tell the SEV-SNP product (Milan, Genoa, Turin) from the "
                               "VCEK or the report", hint="pass the product or the ASK/ARK chain")
        ask, ark = builtin_chain(prod)
        source = "built-in AMD KDS keys"
    roots = {p: builtin_chain(p)[1] for p in PRODUCTS}
    ark_product = next((p for p, root in roots.items() if _spki(root) == _spki(ark)), None)
    if ark_product is None:
        raise CheckFailed(f"ARK: {_cn(ark)} is not one of AMD's root keys "
                          f"({', '.join(PRODUCTS)})")
    if prod is not None and ark_product != prod:
        raise CheckFailed(f"ARK: the chain's root is AMD's {ark_product} root, the VCEK is "
                          f"for {prod}")
    _check_rsa_pss(ark, ark, "ARK -> ARK (self-signature)")
    _check_rsa_pss(ask, ark, "ARK -> ASK")
    _check_rsa_pss(vcek, ask, f"ASK -> {signer}")
    _check_binding(vcek, report, signer)
    _check_report_signature(report, vcek, signer)
    return VerifiedReport(report=report, product=ark_product, signer=signer,
                          vcek_subject=_cn(vcek), ask_subject=_cn(ask), ark_subject=_cn(ark),
                          chain_source=source)


# --- OUT: the launch digests recomputed ---------------------------------------------------------

def recompute_snp(fw: bytes, kernel: bytes, initrd: bytes | None, cmdline: str,
                  entries: list[dict]) -> list[Check]:
    """Each recorded SNP entry recomputed from its own parameters (entries sharing VMM, CPU type
    and features in one incremental run)."""
    hashes = KernelHashes.of(kernel, initrd, cmdline)
    groups: dict[tuple, list[dict]] = {}
    for e in entries:
        groups.setdefault((e["vmm"], e["vcpu_type"], e["guest_features"]), []).append(e)
    rows = []
    for (vmm, vtype, gf), group in groups.items():
        try:
            fresh = snp_matrix(fw, hashes, [e["vcpus"] for e in group], [vtype], [vmm],
                               [int(gf, 16)])
        except CCBuildError as err:
            for e in group:
                rows.append(Check(_snp_item(e), FAIL, f"cannot recompute: {err.one_line()}"))
            continue
        by_n = {f["vcpus"]: f for f in fresh}
        for e in group:
            f = by_n[e["vcpus"]]
            item = _snp_item(e)
            if f["vcpu_sig"] != e["vcpu_sig"]:
                rows.append(Check(item, FAIL, "vCPU signature of the CPU type differs",
                                  e["vcpu_sig"], f["vcpu_sig"]))
            elif f["launch_digest"] != e["launch_digest"]:
                rows.append(Check(item, FAIL, "launch digest recomputed from OUT differs",
                                  e["launch_digest"], f["launch_digest"]))
            else:
                rows.append(Check(item, OK, f"launch digest {e['launch_digest'][:24]}… recomputed"))
    return rows


def _snp_item(e: dict) -> str:
    return f"snp {e['vcpus']} vCPU {e['vcpu_type']} {e['vmm']} features {e['guest_features']}"


# --- SNP evidence -----------------------------------------------------------------------------

def match_snp_entries(measurement: bytes, entries: list[dict]) -> list[dict]:
    return [e for e in entries if e["launch_digest"] == measurement.hex()]


def _expected_host_data(m: dict) -> tuple[bytes, str]:
    init = m.get("initdata")
    if isinstance(init, dict):
        for key in ("snp_host_data", "host_data"):
            if init.get(key):
                return bytes.fromhex(init[key]), "initdata HOST_DATA from measurements.json"
        if init.get("digest"):
            return (bytes.fromhex(init["digest"]) + bytes(32))[:32], \
                "initdata digest from measurements.json (first 32 bytes)"
    return bytes(32), "no initdata in the build: HOST_DATA must be zero"


def _expected_id_key_digest(m: dict, entry: dict | None) -> tuple[bytes, str] | None:
    for src, where in ((entry or {}), "the matched entry"), (m.get("snp_id") or {}, "snp_id"):
        for key in ("id_key_digest",):
            if isinstance(src, dict) and src.get(key):
                return bytes.fromhex(src[key]), f"ID key digest from measurements.json ({where})"
    return None


def check_snp_report(out_path: str | Path, report_bytes: bytes, vcek: bytes | None = None,
                     chain: bytes | None = None, vcek_what: str | None = None,
                     chain_what: str = "certificate chain") -> Verdict:
    out = load_out(out_path)
    v = Verdict(f"verify {out.path.name} against an SEV-SNP attestation report")
    report = parse_report(report_bytes)
    if vcek is None:
        v.add(Check("signature", SKIP, "no --vcek given: the report is NOT authenticated; "
                    "only its fields are compared"))
    else:
        try:
            vr = verify_snp_report(report_bytes, vcek, chain, vcek_what=vcek_what,
                                   chain_what=chain_what)
            v.add(Check("signature", OK, f"{vr.signer} signature verifies; chain {vr.ark_subject}"
                        f" -> {vr.ask_subject} -> {vr.vcek_subject} ({vr.chain_source}, "
                        f"{vr.product})"))
        except CheckFailed as e:
            v.add(Check("signature", FAIL, e.one_line()))
        except ValueError as e:        # cryptography parses certificate fields lazily
            v.add(Check("signature", FAIL, "a certificate of the chain is damaged and cannot be "
                        f"read ({str(e).splitlines()[0][:160]})"))
    m = out.measurements or {}
    entries = m.get("snp")
    matched = None
    if not entries:
        v.add(Check("measurement", FAIL, "measurements.json has no SNP entries (not an SNP "
                    "build?)", None, report.measurement.hex()))
    else:
        hits = match_snp_entries(report.measurement, entries)
        if len(hits) == 1:
            matched = hits[0]
            v.add(Check("measurement", OK, f"matches entry {entries.index(matched) + 1} of "
                        f"{len(entries)}: {matched['vcpus']} vCPU, {matched['vcpu_type']} "
                        f"(sig {matched['vcpu_sig']}), VMM {matched['vmm']}, guest features "
                        f"{matched['guest_features']}"))
        elif hits:
            matched = hits[0]
            names = "; ".join(f"entry {entries.index(h) + 1}: {h['vcpus']} vCPU, "
                              f"{h['vcpu_type']}, VMM {h['vmm']}, features {h['guest_features']}"
                              for h in hits)
            v.add(Check("measurement", OK, f"matches {len(hits)} entries of {len(entries)} that "
                        "share this digest (it does not depend on what differs between them): "
                        + names))
        else:
            v.add(Check("measurement", FAIL, f"MEASUREMENT matches none of the {len(entries)} "
                        "entries: other artifacts, or launch parameters outside the recipe's "
                        "matrix (vCPUs, CPU type, VMM, guest features)",
                        f"one of the {len(entries)} launch digests", report.measurement.hex()))
    want, why = _expected_host_data(m)
    v.add(Check("host_data", OK if report.host_data == want else FAIL, why,
                want.hex(), report.host_data.hex()))
    idk = _expected_id_key_digest(m, matched)
    if idk is None:
        zero = not any(report.id_key_digest)
        v.add(Check("id_key_digest", OK if zero else FAIL,
                    "the build has no ID key: the report's ID_KEY_DIGEST must be zero" if zero
                    else "the build has no ID key, but the launch carried an ID block",
                    bytes(48).hex(), report.id_key_digest.hex()))
    else:
        v.add(Check("id_key_digest", OK if report.id_key_digest == idk[0] else FAIL, idk[1],
                    idk[0].hex(), report.id_key_digest.hex()))
    try:
        pol = GuestPolicy.decode(report.policy)
        flags = ", ".join(f"{k}={'yes' if val else 'no'}" for k, val in pol.as_dict().items()
                          if isinstance(val, bool))
        v.add(Check("policy", INFO, f"0x{report.policy:x}: ABI >= {pol.abi_major}.{pol.abi_minor}"
                    f", {flags}"))
        if pol.debug:
            v.add(Check("policy debug", FAIL, "the guest policy allows debugging: the host can "
                        "read guest memory"))
        pol_rec = (m.get("snp_id") or {}).get("policy")
        want_pol = int(pol_rec, 16) if isinstance(pol_rec, str) else None
        if want_pol is not None and want_pol != report.policy:
            v.add(Check("policy", FAIL, "differs from the build's policy", hex(want_pol),
                        hex(report.policy)))
    except CCBuildError as e:
        v.add(Check("policy", FAIL, e.one_line()))
    v.add(Check("report", INFO, f"VMPL {report.vmpl}, guest SVN {report.guest_svn}, reported TCB "
                f"{report.reported_tcb}, report_data {report.report_data.hex()[:32]}…"))
    return v
