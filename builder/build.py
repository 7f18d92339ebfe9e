"""`ccbuild build`: the up-to-date record, else the pipeline.

A build first checks the store's record of the last build of the same request
(:mod:`builder.uptodate`): when every input it consulted, ccbuild's code and OUT are as they
were, OUT is left alone and nothing else runs (nor is imported). Otherwise the pipeline runs
(:mod:`builder.pipeline`) while :mod:`builder.deps` notes what it consults, and the record is
written for the next build.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from builder import deps, log, uptodate
from builder.store import Store


@dataclass(frozen=True)
class BuildOptions:
    out: Path | None = None
    overrides: tuple[str, ...] = ()
    offline: bool = False
    locked: bool = False
    force: bool = False           # replace an OUT that is not a ccbuild output
    allow_outside: bool = False   # recipe paths may leave the recipe's directory
    store_root: Path | None = None
    jobs: int = 0                 # 0: all cores
    sign_key: Path | None = None  # ECDSA private key (PEM): write manifest.json.sig
    recheck: bool = False         # run every step even when the up-to-date record holds
    keep_record: bool = True      # write the up-to-date record (not for a temporary OUT)


@dataclass
class BuildResult:
    out: Path
    name: str
    platform: str
    files: dict[str, bytes]
    manifest: dict
    measurements: dict
    up_to_date: bool
    timings: list[tuple[str, float]] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)   # OUT file -> SHA-256

    def summary(self) -> dict:
        return {"out": str(self.out), "name": self.name, "platform": self.platform,
                "up_to_date": self.up_to_date,
                "outputs": self.manifest["outputs"],
                "chain": self.manifest["chain"],
                "timings": {k: round(v, 3) for k, v in self.timings}}


UP_TO_DATE_STEP = "up-to-date"


def build(recipe_path: str | Path, options: BuildOptions = BuildOptions()) -> BuildResult:
    t0 = time.monotonic()
    store = Store.at(options.store_root)   # created by the pipeline, after the recipe's checks
    key = uptodate.request_key(recipe_path, options.out, options.overrides, options.locked,
                               options.allow_outside, options.sign_key)
    timings: list[tuple[str, float]] = []
    if not options.recheck:
        with log.step(UP_TO_DATE_STEP, timings):
            hit, why = uptodate.check(store, key)
            log.note_cache(hit is not None, why or "nothing changed since the last build")
        if hit is not None:
            timings.append(("total", time.monotonic() - t0))
            return _result(hit, timings)
    from builder import pipeline
    with deps.recording() as consulted:
        res = pipeline.run(recipe_path, options, timings, t0)
    if options.keep_record:
        uptodate.save(store, key, consulted, res)
    return res


def _result(hit: uptodate.Hit, timings: list[tuple[str, float]]) -> BuildResult:
    """The result of a build the record showed up to date: OUT's own (checked) files."""
    return BuildResult(hit.out, hit.name, hit.platform, hit.files, hit.manifest,
                       hit.measurements, True, timings, hit.digests)
