"""provenance.intoto.json against the in-toto Statement v1 and SLSA Provenance v1 shapes.

The schema is written here from the published field lists (in-toto attestation spec v1
Statement and ResourceDescriptor; slsa.dev/spec/v1.0/provenance), independent of the emitter."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema
import pytest

from builder.emit import BuildView
from builder.emit.provenance import statement
from builder.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent

DIGEST_SET = {"type": "object", "minProperties": 1,
              "additionalProperties": {"type": "string", "pattern": "^[0-9a-f]+$"}}
RESOURCE_DESCRIPTOR = {
    "type": "object",
    "properties": {"uri": {"type": "string", "format": "uri"}, "digest": DIGEST_SET,
                   "name": {"type": "string"}, "downloadLocation": {"type": "string"},
                   "mediaType": {"type": "string"}, "content": {"type": "string"},
                   "annotations": {"type": "object"}},
    "additionalProperties": False,
    "anyOf": [{"required": ["uri"]}, {"required": ["digest"]}, {"required": ["content"]}],
}
SCHEMA = {
    "type": "object",
    "required": ["_type", "subject", "predicateType", "predicate"],
    "additionalProperties": False,
    "properties": {
        "_type": {"const": "https://in-toto.io/Statement/v1"},
        "subject": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "digest"],
            "properties": {"name": {"type": "string"},
                           "digest": {**DIGEST_SET, "required": ["sha256"],
                                      "properties": {"sha256": {"pattern": "^[0-9a-f]{64}$"}}}}}},
        "predicateType": {"const": "https://slsa.dev/provenance/v1"},
        "predicate": {
            "type": "object", "required": ["buildDefinition", "runDetails"],
            "additionalProperties": False,
            "properties": {
                "buildDefinition": {
                    "type": "object", "additionalProperties": False,
                    "required": ["buildType", "externalParameters"],
                    "properties": {
                        "buildType": {"type": "string", "pattern": "^[a-z][a-z0-9+.-]*:"},
                        "externalParameters": {"type": "object"},
                        "internalParameters": {"type": "object"},
                        "resolvedDependencies": {"type": "array", "items": RESOURCE_DESCRIPTOR},
                    }},
                "runDetails": {
                    "type": "object", "required": ["builder"], "additionalProperties": False,
                    "properties": {
                        "builder": {"type": "object", "required": ["id"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "id": {"type": "string", "pattern": "^[a-z][a-z0-9+.-]*:"},
                                        "version": {"type": "object",
                                                    "additionalProperties": {"type": "string"}},
                                        "builderDependencies": {"type": "array",
                                                                "items": RESOURCE_DESCRIPTOR}}},
                        "metadata": {"type": "object", "additionalProperties": False,
                                     "properties": {"invocationId": {"type": "string"},
                                                    "startedOn": {"type": "string"},
                                                    "finishedOn": {"type": "string"}}},
                        "byproducts": {"type": "array", "items": RESOURCE_DESCRIPTOR}}},
            }},
    },
}

INPUTS = (
    {"role": "firmware", "kind": "path", "name": "amdsev.fd", "version": "",
     "sha256": "11" * 32},
    {"role": "kernel", "kind": "debian", "name": "linux-image-6.12.117+deb13-cloud-amd64",
     "version": "6.12.117-1", "sha256": "22" * 32, "file_sha256": "33" * 32},
    {"role": "firmware-source", "kind": "debian-source", "name": "edk2_2025.02.orig.tar.xz",
     "version": "2025.02-8", "sha256": "44" * 32},
)


def make(tmp_path: Path, overrides=()):
    lr = load_recipe(REPO / "recipes/snp.yaml", list(overrides))
    files = {"firmware.fd": b"F" * 10, "vmlinuz": b"K", "initrd.img": b"I",
             "cmdline.txt": b"console=ttyS0", "measurements.json": b"{}"}
    view = BuildView(lr, b"F" * 10, b"K", b"I", "console=ttyS0", b"A", {}, INPUTS, None)
    return statement(view, files), files, lr


def test_statement_validates_and_names_every_artifact(tmp_path):
    st, files, lr = make(tmp_path)
    jsonschema.validate(st, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert {s["name"]: s["digest"]["sha256"] for s in st["subject"]} == \
        {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}
    bd = st["predicate"]["buildDefinition"]
    assert bd["externalParameters"]["recipe"]["digest"] == lr.digest
    assert bd["externalParameters"]["recipe"]["file_sha256"] == hashlib.sha256(
        (REPO / "recipes/snp.yaml").read_bytes()).hexdigest()
    assert bd["externalParameters"]["overrides"] == {}
    deps = {d["name"]: d for d in bd["resolvedDependencies"]}
    k = deps["kernel:linux-image-6.12.117+deb13-cloud-amd64"]
    # as the purl spec's own Debian example writes it ('+' kept)
    assert k["uri"] == "pkg:deb/debian/linux-image-6.12.117+deb13-cloud-amd64@6.12.117-1"
    assert k["digest"] == {"sha256": "22" * 32}
    assert deps["firmware-source:edk2_2025.02.orig.tar.xz"]["uri"] == \
        "pkg:deb/debian/edk2@2025.02-8?arch=source"
    assert len(deps) == len(INPUTS)
    assert st["predicate"]["runDetails"]["builder"]["version"]["ccbuild"]
    assert set(st["predicate"]["runDetails"]["metadata"]) == {"invocationId"}


def test_overrides_recorded_without_machine_paths(tmp_path):
    fw = tmp_path / "some" / "dir" / "amdsev.fd"
    st, _, _ = make(tmp_path, [f'firmware={{"source": {{"path": "{fw}"}}}}', "launch.vcpus=[2]"])
    jsonschema.validate(st, SCHEMA)
    ov = st["predicate"]["buildDefinition"]["externalParameters"]["overrides"]
    assert ov["launch.vcpus"] == [2]
    assert ov["firmware.source.path"] == "…/amdsev.fd"
    assert str(tmp_path) not in json.dumps(st)


def test_statement_is_deterministic(tmp_path):
    a, _, _ = make(tmp_path)
    b, _, _ = make(tmp_path)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.mark.parametrize("broken", ["_type", "predicateType", "subject"])
def test_schema_rejects_a_broken_statement(tmp_path, broken):
    """The schema can fail: the same statement with one required field damaged is rejected."""
    st, _, _ = make(tmp_path)
    st[broken] = [] if broken == "subject" else "https://example.invalid/other"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(st, SCHEMA)
