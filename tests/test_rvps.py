"""rvps-reference-values.json decodes to the values of measurements.json, under the names the
Trustee attestation-service default policy reads (ear_default_policy.rego: snp_launch_measurement,
mr_td, rtmr_1, rtmr_2)."""

from __future__ import annotations

import base64
import json

from builder.emit.rvps import message


def decode(msg: dict) -> dict:
    assert set(msg) == {"version", "type", "payload"}
    assert msg["version"] == "0.1.0" and msg["type"] == "sample"
    return json.loads(base64.b64decode(msg["payload"], validate=True))


def test_snp_values():
    m = {"snp": [{"vcpus": n, "vcpu_type": "EPYC-v4", "vcpu_sig": "0x800f12", "vmm": "qemu",
                  "guest_features": "0x1", "launch_digest": f"{n:02x}" * 48} for n in (1, 2, 4)]
         + [{"vcpus": 1, "vcpu_type": "EPYC-Milan", "vcpu_sig": "0xa00f11", "vmm": "qemu",
             "guest_features": "0x1", "launch_digest": "01" * 48}]}
    rv = decode(message(m))
    assert rv == {"snp_launch_measurement": ["01" * 48, "02" * 48, "04" * 48]}


def test_tdx_values_skip_unknown_registers():
    m = {"tdx": {"mrtd": "aa" * 48, "rtmr0": None, "rtmr0_reason": "no profile",
                 "rtmr1": "b1" * 48, "rtmr2": "b2" * 48, "rtmr3": "00" * 48}}
    rv = decode(message(m))
    assert rv == {"mr_td": ["aa" * 48], "rtmr_1": ["b1" * 48], "rtmr_2": ["b2" * 48],
                  "rtmr_3": ["00" * 48]}


def test_kata_pods_are_reference_values_too():
    """A Kata recipe: a launch of any measured pod size must be accepted, so every pod's values
    (Kata 3.31.0 gives each its own command line, so its own digests) are reference values."""
    snp = [{"vcpus": 1, "vcpu_type": "EPYC-v4", "vcpu_sig": "0x800f12", "vmm": "qemu",
            "guest_features": "0x1", "launch_digest": "01" * 48}]
    pods = [{"pod_cpus": 0, "vcpus": 1, "launch_digests": {"0x1": "01" * 48}},
            {"pod_cpus": 2, "vcpus": 3, "launch_digests": {"0x1": "03" * 48}}]
    rv = decode(message({"snp": snp, "kata": {"pods": pods}}))
    assert rv == {"snp_launch_measurement": ["01" * 48, "03" * 48]}
    tdx = {"mrtd": "aa" * 48, "rtmr0": None, "rtmr1": "b1" * 48, "rtmr2": "b2" * 48,
           "rtmr3": "00" * 48}
    pods = [{"pod_cpus": 0, "mrtd": "aa" * 48, "rtmr0": None, "rtmr1": "b1" * 48,
             "rtmr2": "b2" * 48, "rtmr3": "00" * 48},
            {"pod_cpus": 4, "mrtd": "aa" * 48, "rtmr0": None, "rtmr1": "b1" * 48,
             "rtmr2": "c2" * 48, "rtmr3": "00" * 48}]
    rv = decode(message({"tdx": tdx, "kata": {"pods": pods}}))
    assert rv == {"mr_td": ["aa" * 48], "rtmr_1": ["b1" * 48], "rtmr_2": ["b2" * 48, "c2" * 48],
                  "rtmr_3": ["00" * 48]}
