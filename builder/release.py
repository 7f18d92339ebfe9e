"""``ccbuild release RECIPE... -o DIST``: several recipes, one release directory, one bundle of
reference values a verifier loads.

DIST holds one OUT per recipe (``DIST/<name>/``, exactly what ``ccbuild build`` writes) and beside
them:

- ``reference-values.json``: every recipe's values (SNP matrix, ID-block key digests, TDX
  registers and expected events, initdata digests, the Kata pod table, the RVPS names and values)
  keyed by recipe name, with the platform of each and an index by platform; its schema is
  :class:`Release` (docs/release-schema.md is generated from it: ``python -m builder.release``);
- ``rvps-reference-values.json``: one Trustee RVPS message (the format of
  :mod:`builder.emit.rvps`) holding every recipe's values;
- ``provenance.intoto.json``: one SLSA v1 provenance whose subjects are every file of every OUT,
  the bundle and the RVPS message; its dependencies are every recipe's resolved inputs;
- ``reference-values.json.sig`` (with ``--sign-key``): a deterministic ECDSA signature of the
  bundle (:mod:`builder.emit.signature`);
- ``SHA256SUMS``: every file of DIST (``sha256sum -c`` from DIST).

Every recipe is built through :func:`builder.build.build`, several at once in worker processes
(:func:`plan`): ``jobs`` (``-j``, default the number of cores) is the whole release's budget of
parallel jobs; ``parallel`` (``-P``, default ``min(jobs, recipes)``) recipes build at once, each
build running ``jobs // parallel`` jobs (EDK2's and the kernel's make). ``-P 1`` builds one recipe
after the other in this process, each with every job (so does a caller running threads of its
own: workers are forked, :func:`can_fork`). Stages are shared through the store: a
stage two recipes have in common is built once, the second build waiting on the store's lock of
that stage (:mod:`builder.stages.cached`) and then taking it from the store.

A worker writes its OUT into the release's temporary directory and returns only the names and
SHA-256 of its files; the parent reads them back (regular files, capped) and computes the bundle,
so DIST is byte-identical whatever the parallelism. Each worker runs in a process group of its
own (the tools it runs with it); the first failure stops every other worker (SIGTERM to its
group, SIGKILL after a grace period) before the temporary directory is removed, and reaches the
caller as the worker's own :class:`CCBuildError` (an interrupt does the same). Every line a
worker logs names its recipe (``ccbuild: [snp] step firmware: ...``).

Everything is written into a hidden sibling ``.DIST.tmp-<pid>`` and swapped into place, so DIST is
either the previous complete release or the new one. No clock, path or host name enters DIST: two
releases of the same recipes are byte-identical.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from builder import __version__, log
from builder.emit.manifest import dumps, sha256sums
from builder.emit.outdir import exchange, nearest_ancestor, pid_alive
from builder.errors import CCBuildError
from builder.outschema import (
    FILE_NAME,
    InitdataRecord,
    KataRecord,
    SnpEntry,
    SnpId,
    TdxRecord,
    Tool,
)
from builder.schema import HEX64, Ctx, doc, render_reference

SCHEMA = "ccbuild-release/1"
BUNDLE = "reference-values.json"
RVPS = "rvps-reference-values.json"            # builder.emit.rvps.NAME
PROVENANCE = "provenance.intoto.json"          # builder.emit.provenance.NAME
SUMS = "SHA256SUMS"
SIGNATURE = "reference-values.json.sig"
ROOT_FILES = (BUNDLE, RVPS, PROVENANCE, SUMS, SIGNATURE)
BUILD_TYPE = "urn:ccbuild:build-type:release:v1"
MEASUREMENT_SECTIONS = ("snp", "snp_id", "tdx", "initdata", "kata")
MAX_RECIPES = 256
_NAME = re.compile(FILE_NAME)


# --- the bundle's schema ------------------------------------------------------------------------

@dataclass(frozen=True)
class ReleaseRecipe:
    platform: Literal["snp", "tdx"] = doc("the TEE the recipe's guest is built for")
    recipe_sha256: str = doc("SHA-256 of the recipe file's bytes", pattern=HEX64)
    recipe_digest: str = doc("digest of the recipe's canonical form", pattern=HEX64)
    manifest_sha256: str = doc("SHA-256 of `<name>/manifest.json`, which lists every artifact's "
                               "SHA-256", pattern=HEX64)
    reference_values: dict[str, tuple[str, ...]] = doc(
        "this recipe's Trustee RVPS reference values (name -> values, as "
        "`<name>/rvps-reference-values.json` carries them)")
    snp: tuple[SnpEntry, ...] | None = doc("SNP launch digests, one per launch configuration "
                                           "(as in `<name>/measurements.json`)", default=None)
    snp_id: SnpId | None = doc("the ID block's key digests and policy", default=None)
    tdx: TdxRecord | None = doc("TDX registers and the expected event log", default=None)
    initdata: InitdataRecord | None = doc("the initdata digest and its TEE value", default=None)
    kata: KataRecord | None = doc("launch.kata: values per pod CPU limit", default=None)

    def validate(self, ctx: Ctx, where: str) -> None:
        if (self.snp is not None) != (self.platform == "snp") or \
                (self.tdx is not None) != (self.platform == "tdx"):
            ctx.fail(where, f"a {self.platform} recipe has exactly the {self.platform} section")


@dataclass(frozen=True)
class Release:
    schema: Literal["ccbuild-release/1"] = doc("document version")
    tool: Tool = doc("the writer")
    recipes: dict[str, ReleaseRecipe] = doc("recipe name (its directory in DIST) -> its values")
    platforms: dict[Literal["snp", "tdx"], tuple[str, ...]] = doc(
        "platform -> the recipes built for it")
    reference_values: dict[str, tuple[str, ...]] = doc(
        "every recipe's RVPS values together (what `rvps-reference-values.json` carries)")

    def validate(self, ctx: Ctx, where: str) -> None:
        if not self.recipes or len(self.recipes) > MAX_RECIPES:
            ctx.fail("recipes", f"must hold 1..{MAX_RECIPES} recipes")
        for n in self.recipes:
            if not _NAME.fullmatch(n) or n in ROOT_FILES:
                ctx.fail("recipes", f"{n[:60]!r} is not a release directory name")
        index: dict[str, list[str]] = {}
        for n, r in sorted(self.recipes.items()):
            index.setdefault(r.platform, []).append(n)
        if {k: list(v) for k, v in self.platforms.items()} != index:
            ctx.fail("platforms", "does not index the recipes by their platform")


def reference() -> str:
    """docs/release-schema.md (``python -m builder.release > docs/release-schema.md``)."""
    intro = [f"Generated from `builder/release.py`. `ccbuild release` writes `DIST/{BUNDLE}`; "
             "`ccbuild verify DIST` refuses a bundle that does not follow this schema (strict "
             "JSON as for OUT's documents, docs/out-schema.md) or that differs from any "
             "recipe's `measurements.json`. The types of `snp`, `snp_id`, `tdx`, `initdata` and "
             "`kata` are those of OUT's measurements.json."]
    return render_reference(Release, f"DIST/{BUNDLE}", intro)


# --- building a release -------------------------------------------------------------------------

@dataclass(frozen=True)
class ReleaseOptions:
    dist: Path
    sign_key: Path | None = None
    jobs: int = 0              # the release's job budget; 0: the number of cores
    parallel: int = 0          # recipes built at once; 0: min(jobs, recipes)
    offline: bool = False
    locked: bool = False
    force: bool = False
    allow_outside: bool = False
    store_root: Path | None = None


@dataclass
class ReleaseResult:
    dist: Path
    results: list            # builder.build.BuildResult, in recipe order
    files: dict[str, bytes]  # DIST's root files

    def summary(self) -> dict:
        return {"dist": str(self.dist),
                "recipes": {r.name: {"platform": r.platform, "up_to_date": r.up_to_date,
                                     "timings": {k: round(v, 3) for k, v in r.timings}}
                            for r in self.results},
                "files": {n: hashlib.sha256(b).hexdigest() for n, b in sorted(self.files.items())}}


def _err(what: str, dist: Path, hint: str | None = None) -> CCBuildError:
    return CCBuildError(what, f"-o {_shown(dist)}", hint)


def _shown(p) -> str:
    s = os.fsencode(p).decode("utf-8", "backslashreplace")
    s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
    return s if len(s) <= 200 else s[:197] + "..."


def is_release_dir(p: Path) -> bool:
    """``p`` is a real directory holding a release (a bundle, SHA256SUMS, recipe directories and
    root files only)."""
    try:
        st = os.lstat(p)
        if not stat.S_ISDIR(st.st_mode):
            return False
        entries = {e.name: e for e in os.scandir(p)}
    except OSError:
        return False
    if BUNDLE not in entries or SUMS not in entries:
        return False
    for n, e in entries.items():
        if n in ROOT_FILES:
            if not e.is_file(follow_symlinks=False):
                return False
        elif not (_NAME.fullmatch(n) and e.is_dir(follow_symlinks=False)):
            return False
    return True


def check_dist(dist: Path, force: bool = False) -> None:
    """Refuse, before any build, a DIST that cannot be (re)placed: not a name of its own, a
    symlink, a file, or an existing directory that is neither empty nor a release (without
    ``-f``)."""
    dist = Path(dist)
    name = dist.name
    if not os.fsencode(dist) or b"\0" in os.fsencode(dist) or name in ("", ".", ".."):
        raise _err("DIST must name a directory of its own (not ., .. or /)", dist,
                   "e.g. -o dist/RELEASE")
    if len(os.fsencode(name)) > 239:
        raise _err(f"DIST's name is too long ({len(os.fsencode(name))} bytes, at most 239)", dist)
    try:
        st = os.lstat(dist)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise _err(f"cannot inspect DIST ({e.strerror})", dist) from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise _err("DIST is a symlink; ccbuild does not replace links or write through them",
                       dist, "give the directory it points to")
        if not stat.S_ISDIR(st.st_mode):
            raise _err("DIST exists and is not a directory", dist, "choose another -o")
        if not force:
            try:
                empty = not os.listdir(dist)
            except OSError as e:
                raise _err(f"cannot read DIST ({e.strerror})", dist) from None
            if not empty and not is_release_dir(dist):
                raise _err("DIST exists and is not a ccbuild release", dist,
                           "choose another -o or pass -f to replace it")
    # the nearest existing ancestor must be a writable directory
    probe, pst = nearest_ancestor(dist.parent, dist, "DIST")
    if not stat.S_ISDIR(pst.st_mode) or not os.access(probe, os.W_OK | os.X_OK):
        raise _err("DIST's parent is not a writable directory", dist)


def release(recipes: list[str | Path], options: ReleaseOptions) -> ReleaseResult:
    if not recipes:
        raise CCBuildError("no recipe given", "ccbuild release")
    if len(recipes) > MAX_RECIPES:
        raise CCBuildError(f"{len(recipes)} recipes (at most {MAX_RECIPES})", "ccbuild release")
    dist = Path(options.dist)
    check_dist(dist, options.force)
    created = [p for p in reversed(dist.parents) if not p.exists()]
    try:
        dist.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _err(f"cannot create DIST's parent ({e.strerror})", dist) from None
    try:
        return _release(recipes, options, dist)
    except BaseException:
        for p in reversed(created):    # parents this call made, when still empty
            try:
                p.rmdir()
            except OSError:
                break
        raise


def plan(jobs: int, parallel: int, recipes: int) -> tuple[int, int]:
    """(recipes built at once, jobs of each build) for a budget of ``jobs`` (0: the number of
    cores) and ``parallel`` recipes at once (0: as many as the budget and the recipes allow)."""
    budget = jobs or os.cpu_count() or 1
    at_once = max(1, min(parallel or budget, recipes))
    return at_once, max(1, budget // at_once)


def _release(recipes: list[str | Path], options: ReleaseOptions, dist: Path) -> ReleaseResult:
    names: dict[str, str] = {}
    named = [(_recipe_name(r, options, names), r) for r in recipes]   # refused before any build
    clean_stale(dist)
    tmp = dist.parent / f".{dist.name}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        raise _err(f"a temporary of this process is in the way: {_shown(tmp)}", dist,
                   "remove it")
    os.mkdir(tmp, 0o700)
    try:
        at_once, jobs = plan(options.jobs, options.parallel, len(named))
        if at_once > 1 and not can_fork():
            at_once, jobs = 1, plan(options.jobs, 1, len(named))[1]
        if at_once == 1:
            results = []
            for name, r in named:
                results.append(_build_one(name, r, options, tmp / name, jobs))
        else:
            results = _build_parallel(named, options, tmp, at_once, jobs)
        files = bundle_files(results, options.sign_key)
        for n, b in sorted(files.items()):
            fd = os.open(tmp / n, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(b)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        _swap(tmp, dist)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for res in results:
        res.out = dist / res.name
    return ReleaseResult(dist, results, files)


def _build_one(name: str, recipe, options: ReleaseOptions, out: Path, jobs: int):
    """One recipe's build into ``out``, its lines tagged with its name."""
    from builder.build import BuildOptions, build
    log.set_tag(name)
    try:
        with log.step(f"release {name}"):
            return build(recipe, BuildOptions(out=out, offline=options.offline,
                                              locked=options.locked,
                                              allow_outside=options.allow_outside,
                                              store_root=options.store_root, jobs=jobs,
                                              sign_key=options.sign_key,
                                              recheck=True, keep_record=False))   # a new OUT
    finally:
        log.set_tag(None)


# --- recipes in worker processes ----------------------------------------------------------------

STOP_GRACE = 5.0     # seconds a stopped worker has to clean up before SIGKILL


class _Stopped(BaseException):
    """Raised in a worker by SIGTERM (the parent stops it): its cleanups run, it reports
    nothing."""


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)    # once: the cleanups are not interrupted
    raise _Stopped()


def _detach(parent: int) -> None:
    """A worker's setup: a process group of its own (the parent stops it and every tool it
    runs at once; the terminal's Ctrl-C goes to the parent, which stops the workers), SIGTERM
    to stop, SIGTERM when the parent dies, no terminal input, and output to the terminal
    allowed from the background group."""
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})   # blocked by the fork's caller
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:    # the parent died before that
        raise _Stopped()
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)


def _worker(conn, parent: int, name: str, recipe: str, options: ReleaseOptions, out: Path,
            jobs: int, logconf: dict) -> None:
    """A worker process: build one recipe into ``out`` and send ("ok", summary), ("error",
    exit code, what, where, hint) for a CCBuildError, or ("crash", text, traceback). Nothing
    escapes it: a stop (SIGTERM) while it reports, or a parent that is gone, ends it quietly
    (else multiprocessing would print a traceback beside the parent's one-line error)."""
    try:
        msg = _outcome(parent, name, recipe, options, out, jobs, logconf)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)    # a small message; the stop waits
        if msg is not None:
            conn.send(msg)
    except (_Stopped, OSError):
        pass
    finally:
        conn.close()


def _outcome(parent: int, name: str, recipe: str, options: ReleaseOptions, out: Path,
             jobs: int, logconf: dict) -> tuple | None:
    """The worker's build and the message that reports it (None when it was stopped)."""
    try:
        _detach(parent)
        log.init_worker(logconf, name)
        res = _build_one(name, recipe, options, out, jobs)
        return ("ok", {"platform": res.platform, "up_to_date": res.up_to_date,
                       "timings": [(str(k), float(v)) for k, v in res.timings],
                       "sums": dict(res.digests)})   # the build's own digests
    except _Stopped:
        return None
    except CCBuildError as e:
        return ("error", e.exit_code, str(e.what), None if e.where is None else str(e.where),
                None if e.hint is None else str(e.hint))
    except BaseException as e:   # a bug: its traceback as text, never a pickled object
        import traceback
        return ("crash", f"{type(e).__name__}: {e}", traceback.format_exc())


def can_fork() -> bool:
    """Workers are forked (cheap: the modules are loaded, nothing re-imports the caller's main
    module), which is safe only from a process running no other thread (a fork copies locks
    other threads hold). ccbuild's own progress threads end when their step does; they are
    given a moment. A caller running threads of its own gets its recipes built one after the
    other."""
    import threading
    for t in threading.enumerate():
        if t is not threading.current_thread() and t.name.startswith("ccbuild-"):
            t.join(2.0)
    return threading.current_thread() is threading.main_thread() and \
        threading.active_count() == 1


def _signal_group(pid: int, sig: int) -> None:
    """``sig`` to the worker's process group (the worker and its tools), or to the worker
    alone while it has no group yet. Only called before the worker is reaped, so its pid and
    group id cannot have been reused."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    except PermissionError:
        pass


def _exited(p) -> bool:
    """The worker has exited (without reaping it)."""
    try:
        return os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:     # reaped already
        return True


def _stop(procs: list) -> None:
    """Stop every worker and the tools it runs: SIGTERM to each group, SIGKILL to what is left
    after :data:`STOP_GRACE` (or at a second interrupt), then reap them."""
    for p in procs:
        _signal_group(p.pid, signal.SIGTERM)
    try:
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline and not all(_exited(p) for p in procs):
            time.sleep(0.05)
    finally:
        for p in procs:
            _signal_group(p.pid, signal.SIGKILL)
            p.join()


def _build_parallel(named: list[tuple[str, object]], options: ReleaseOptions, tmp: Path,
                    at_once: int, jobs: int) -> list:
    """Every recipe built by a worker process, ``at_once`` at a time; the results in recipe
    order, read back from ``tmp/<name>``."""
    import multiprocessing
    from multiprocessing.connection import wait
    ctx = multiprocessing.get_context("fork")
    parent = os.getpid()
    conf = log.settings()
    pending = list(enumerate(named))
    running: dict = {}          # connection -> (index, name, process)
    results: list = [None] * len(named)
    try:
        while pending or running:
            while pending and len(running) < at_once:
                i, (name, recipe) = pending.pop(0)
                r, w = ctx.Pipe(duplex=False)
                p = ctx.Process(target=_worker, name=f"ccbuild-release-{name}",
                                args=(w, parent, name, str(recipe), options, tmp / name,
                                      jobs, conf))
                _flush()        # a fork copies unwritten output, which the worker would repeat
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
                try:            # no Ctrl-C between the start and the bookkeeping
                    p.start()
                    running[r] = (i, name, p)
                finally:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
                w.close()
                try:
                    os.setpgid(p.pid, p.pid)    # the worker does it too; whoever is first
                except OSError:
                    pass
            for r in wait(list(running)):
                i, name, p = running[r]
                try:
                    msg = r.recv()
                except (EOFError, OSError):
                    msg = None
                if msg is None or msg[0] != "ok":
                    raise _failure(msg, name, p)
                del running[r]
                r.close()
                p.join()
                results[i] = _read_back(tmp / name, name, msg[1])
    except BaseException:
        _stop([p for _, _, p in running.values()])
        for r in running:
            r.close()
        raise
    return results


def _flush() -> None:
    import sys
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (AttributeError, ValueError, OSError):
            pass


def _failure(msg, name: str, p) -> BaseException:
    if msg is not None and msg[0] == "error":
        _, code, what, where, hint = msg
        from builder.errors import CheckFailed
        return (CheckFailed if code == CheckFailed.exit_code else CCBuildError)(what, where, hint)
    if msg is not None and msg[0] == "crash":
        return RuntimeError(f"the build of {name} failed: {msg[1]}\n{msg[2]}")
    p.join(STOP_GRACE)
    return CCBuildError(f"the build of {name} ended without a result (exit code {p.exitcode})",
                        "ccbuild release", "see the lines above; a killed worker (out of "
                        "memory?) says nothing")


def _read_back(out: Path, name: str, summary: dict):
    """The BuildResult of a worker's OUT: its files read back (regular files, capped), each
    checked against the SHA-256 the worker sent."""
    from builder.build import BuildResult
    from builder.inputs import read_regular
    files = {}
    for n, digest in sorted(summary["sums"].items()):
        if not _NAME.fullmatch(n):
            raise CCBuildError(f"a worker named the file {n[:60]!r}", f"release {name}")
        data = read_regular(out / n, "artifact", f"{name}/{n}")
        if hashlib.sha256(data).hexdigest() != digest:
            raise CCBuildError("changed after its build", f"{name}/{n} in the release's "
                               "temporary directory")
        files[n] = data
    manifest = json.loads(files["manifest.json"])
    measurements = json.loads(files["measurements.json"])
    return BuildResult(out, name, summary["platform"], files, manifest, measurements,
                       summary["up_to_date"], [tuple(t) for t in summary["timings"]],
                       dict(summary["sums"]))


def clean_stale(dist: Path) -> list[str]:
    """Remove the temporaries of releases into ``dist`` that were killed: exactly
    ``.NAME.tmp-<pid>`` for this DIST's NAME, that pid not running, a real directory holding
    only what a release writes there (recipe directories, their temporaries, root files)."""
    removed = []
    prefix = f".{dist.name}.tmp-"
    try:
        names = os.listdir(dist.parent)
    except OSError:
        return removed
    for n in names:
        if not n.startswith(prefix) or not n[len(prefix):].isdigit():
            continue
        pid = int(n[len(prefix):])
        p = dist.parent / n
        if pid == os.getpid() or pid_alive(pid):
            continue
        try:
            if not stat.S_ISDIR(os.lstat(p).st_mode):
                continue
            ok = all((e.is_file(follow_symlinks=False) and e.name in ROOT_FILES) or
                     e.is_dir(follow_symlinks=False) for e in os.scandir(p))
        except OSError:
            continue
        if ok:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(n)
    return removed


def _recipe_name(recipe, options: ReleaseOptions, names: dict[str, str]) -> str:
    """The recipe's name (its directory in DIST), refused when it cannot be one or is taken."""
    from builder.recipe import load_recipe
    name = load_recipe(recipe).name
    if not _NAME.fullmatch(name) or name in ROOT_FILES or len(name) > 200:
        raise CCBuildError(f"recipe name {name[:60]!r} cannot be a release directory", str(recipe),
                           "set `name:` to letters, digits, '.', '_', '-'")
    if name in names:
        raise CCBuildError(f"recipe name {name!r} is also {names[name]}'s", str(recipe),
                           "give each recipe of a release its own `name:`")
    names[name] = str(recipe)
    return name


def _swap(tmp: Path, dist: Path) -> None:
    parent = dist.parent
    dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if os.path.lexists(dist):
            if not exchange(dfd, tmp.name, dist.name):
                old = f".{dist.name}.old-{os.getpid()}"
                os.rename(dist.name, old, src_dir_fd=dfd, dst_dir_fd=dfd)
                try:
                    os.rename(tmp.name, dist.name, src_dir_fd=dfd, dst_dir_fd=dfd)
                except OSError:
                    os.rename(old, dist.name, src_dir_fd=dfd, dst_dir_fd=dfd)
                    raise
                shutil.rmtree(old, dir_fd=dfd, ignore_errors=True)
            else:
                shutil.rmtree(tmp.name, dir_fd=dfd, ignore_errors=True)   # the previous DIST
        else:
            os.rename(tmp.name, dist.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        os.fsync(dfd)
    except OSError as e:
        raise _err(f"cannot replace DIST ({e.strerror})", dist) from None
    finally:
        os.close(dfd)


# --- the bundle ---------------------------------------------------------------------------------

def recipe_values(name: str, platform: str, manifest_raw: bytes, manifest: dict,
                  measurements: dict) -> dict:
    from builder.emit.rvps import reference_values
    entry = {"platform": platform, "recipe_sha256": manifest["recipe"]["sha256"],
             "recipe_digest": manifest["recipe"]["digest"],
             "manifest_sha256": hashlib.sha256(manifest_raw).hexdigest(),
             "reference_values": reference_values(measurements)}
    for k in MEASUREMENT_SECTIONS:
        if measurements.get(k) is not None:
            entry[k] = measurements[k]
    return entry


def merge_reference_values(per_recipe: list[dict[str, list[str]]]) -> dict[str, list[str]]:
    out: dict[str, set[str]] = {}
    for rv in per_recipe:
        for k, vals in rv.items():
            out.setdefault(k, set()).update(vals)
    return {k: sorted(v) for k, v in sorted(out.items())}


def rvps_message(rv: dict[str, list[str]]) -> dict:
    """The Trustee RVPS "sample" message of :mod:`builder.emit.rvps` for the values ``rv``."""
    from builder.emit.rvps import MESSAGE_VERSION
    payload = json.dumps(rv, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    return {"version": MESSAGE_VERSION, "type": "sample",
            "payload": base64.standard_b64encode(payload).decode()}


def bundle_document(results) -> dict:
    recipes = {r.name: recipe_values(r.name, r.platform, r.files["manifest.json"], r.manifest,
                                     r.measurements) for r in results}
    platforms: dict[str, list[str]] = {}
    for n, v in sorted(recipes.items()):
        platforms.setdefault(v["platform"], []).append(n)
    return {"schema": SCHEMA, "tool": {"name": "ccbuild", "version": __version__},
            "recipes": recipes, "platforms": platforms,
            "reference_values": merge_reference_values(
                [v["reference_values"] for _, v in sorted(recipes.items())])}


def provenance_statement(results, subjects: dict[str, bytes]) -> dict:
    from builder.emit.provenance import BUILDER_ID, PREDICATE_TYPE, STATEMENT_TYPE, dependency
    deps, seen = [], set()
    for r in sorted(results, key=lambda r: r.name):
        for rec in r.manifest["inputs"]:
            d = dependency({**rec, "role": f"{r.name}:{rec['role']}"})
            key = json.dumps(d, sort_keys=True)
            if key not in seen:
                seen.add(key)
                deps.append(d)
    recipes = [{"name": r.name, "platform": r.platform,
                "file_sha256": r.manifest["recipe"]["sha256"],
                "digest": r.manifest["recipe"]["digest"],
                "source_date_epoch": r.manifest["source_date_epoch"]}
               for r in sorted(results, key=lambda r: r.name)]
    invocation = hashlib.sha256(dumps([recipes, deps, __version__], PROVENANCE)).hexdigest()
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": n, "digest": {"sha256": hashlib.sha256(subjects[n]).hexdigest()}}
                    for n in sorted(subjects)],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"recipes": recipes},
                "internalParameters": {},
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"ccbuild": __version__}},
                "metadata": {"invocationId": f"urn:ccbuild:release:{invocation}"},
            },
        },
    }


def bundle_files(results, sign_key: Path | None = None,
                 signature: bytes | None = None) -> dict[str, bytes]:
    """DIST's root files for these builds (every OUT's files are ``results[i].files``): the
    bundle signed with ``sign_key``, or carrying an existing ``signature`` of it (``verify DIST
    --rebuild`` lists the release's own signatures, which it cannot recreate)."""
    tree = {f"{r.name}/{n}": b for r in results for n, b in r.files.items()}
    root: dict[str, bytes] = {BUNDLE: dumps(bundle_document(results), BUNDLE)}
    root[RVPS] = dumps(rvps_message(json.loads(root[BUNDLE])["reference_values"]), RVPS)
    root[PROVENANCE] = dumps(provenance_statement(results, {**tree, BUNDLE: root[BUNDLE],
                                                            RVPS: root[RVPS]}), PROVENANCE)
    if sign_key is not None:
        from builder.emit.signature import sign_manifest
        from builder.inputs import read_regular
        where = f"--sign-key {sign_key}"
        root[SIGNATURE] = sign_manifest(root[BUNDLE], read_regular(sign_key, "key", where), where)
    elif signature is not None:
        root[SIGNATURE] = signature
    root[SUMS] = sha256sums({**tree, **root})
    return root


if __name__ == "__main__":
    import sys
    sys.stdout.write(reference())
