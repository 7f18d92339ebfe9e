"""The auditor's side: check an output directory, rebuild and compare, compare with evidence.

Every check yields :class:`Check` rows (item, status, expected, actual, detail); a
:class:`Verdict` groups them, fails when any row fails and prints as a table. One module per
concern:

- :mod:`.report`: Check, Verdict and the statuses.
- :mod:`.out`: OUT read as an auditor may trust it (:func:`load_out`), its hashes against
  manifest.json and SHA256SUMS (:func:`check_hashes`).
- :mod:`.measurements`: :func:`check_out`, the hashes plus every measurement recomputed from
  the artifacts in OUT.
- :mod:`.rebuild`: :func:`rebuild_and_compare`, build the recipe again and compare byte for byte,
  naming the first difference.
- :mod:`.snp`: SNP entries recomputed, :func:`check_snp_report` and the AMD chain
  (:func:`verify_snp_report`).
- :mod:`.tdx`: TDX registers and event log recomputed, :func:`check_tdx_quote` with a CCEL log.
- :mod:`.signature`: :func:`check_signature`, manifest.json.sig.

Measurement code is the engines'; this package only reads OUT and evidence and compares.
"""

from builder.verify.measurements import check_out, recompute_measurements
from builder.verify.out import (
    MAX_OUT_ENTRIES, META_FILES, SIGNATURE_FILE, Entry, OutDir, check_hashes, load_out)
from builder.verify.rebuild import (
    compare_files, diff_initrd, explain_difference, rebuild_and_compare)
from builder.verify.report import FAIL, INFO, OK, SKIP, Check, Verdict
from builder.verify.signature import check_signature
from builder.verify.snp import (
    VerifiedReport, check_snp_report, match_snp_entries, recompute_snp, verify_snp_report)
from builder.verify.tdx import (
    check_event_data, check_tdx_quote, diff_event_lists, log_events, recompute_tdx,
    recompute_tdx_events, replay_events, tdx_params_from_record)

__all__ = [
    "OK", "FAIL", "SKIP", "INFO", "Check", "Verdict",
    "MAX_OUT_ENTRIES", "META_FILES", "SIGNATURE_FILE", "Entry", "OutDir", "load_out",
    "check_hashes", "check_out", "recompute_measurements",
    "rebuild_and_compare", "compare_files", "explain_difference", "diff_initrd",
    "VerifiedReport", "verify_snp_report", "check_snp_report", "match_snp_entries",
    "recompute_snp",
    "check_tdx_quote", "recompute_tdx", "recompute_tdx_events", "replay_events",
    "diff_event_lists", "log_events", "check_event_data", "tdx_params_from_record",
    "check_signature",
]
