"""One way to cache a built stage (firmware, kernel, test agent) in the store.

A build is named by its cache key (the hash of everything that reaches its bytes); the store
keeps a ref ``refs/<namespace>/<key>.json`` whose named fields hold the sha256 of each output
blob, plus whatever the stage records beside them. A hit re-reads the verified blobs; a miss
runs the build in a fresh scratch directory of the store (always removed) and records it.

Processes sharing a store (the recipes of ``ccbuild release``, two CI jobs on one cache) build a
key once: a miss takes the store's lock ``locks/<namespace>/<key>.lock`` (:meth:`Store.lock`),
and a process that finds it held says so (``waiting for another build of firmware
1a2b3c4d5e6f``, then a line every 30 s without a terminal), waits, and checks the ref again,
usually a hit. The wait is bounded (``CCBUILD_LOCK_TIMEOUT``, default 4 h: a lock held by a
hung process ends in a one-line error naming the lock file and the holder's pid). A build
function never takes another stage's lock, so two processes cannot wait for each other.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from builder import log
from builder.store import Store, lock_timeout


@dataclass(frozen=True)
class Cached:
    """The outputs by ref field (``{"sha256": image, ...}``), the ref record, and whether it
    came from the store."""
    outputs: dict[str, bytes]
    record: dict
    hit: bool


def cached_stage(store: Store, namespace: str, key: str, blobs: Mapping[str, str],
                 build: Callable[[Path], tuple[Mapping[str, bytes], Mapping]], *,
                 accept: Callable[[dict], bool] = lambda ref: True,
                 force: bool = False) -> Cached:
    """The outputs of the build named ``key``: from the store when its ref names every blob
    (``blobs`` maps each ref field to how messages name that output) and ``accept(ref)``
    holds, else from ``build(workdir)``, which returns the outputs by ref field and the extra
    fields to record beside them. ``force`` rebuilds even on a hit. A miss builds under the
    store's lock of ``key``: a build another process is running is waited for, not repeated."""
    def lookup() -> Cached | None:
        ref = store.get_ref(namespace, key)
        if (ref and all(isinstance(ref.get(f), str) and store.has(ref[f]) for f in blobs)
                and accept(ref)):
            return Cached({f: store.get_bytes(ref[f], what) for f, what in blobs.items()}, ref,
                          True)
        return None

    found = None if force else lookup()
    if found is not None:
        log.note_cache(True)
        return found
    with store.lock(namespace, key) as lock:
        waited = not lock.try_acquire()
        if waited:
            holder = lock.holder()
            with log.waiting(f"another build of {namespace.removesuffix('-build')} {key[:12]}"
                             + (f" ({holder})" if holder else "")):
                lock.acquire(lock_timeout())
        found = None if force else lookup()   # another process may have built it meanwhile
        if found is not None:
            log.note_cache(True, "built by another process" + (" while this one waited"
                                                                 if waited else ""))
            return found
        ref = store.get_ref(namespace, key)
        log.note_cache(False, "forced" if force else "no build with this key in the store"
                       if not ref else "the stored build is incomplete or not accepted")
        work = store.tmpdir()
        try:
            outputs, extra = build(work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        record = {f: store.put_bytes(outputs[f]) for f in blobs}
        record.update(extra)
        store.set_ref(namespace, key, record)
        return Cached({f: outputs[f] for f in blobs}, dict(record, key=key), False)
