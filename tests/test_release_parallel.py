"""`ccbuild release` with recipes built in worker processes (builder/release.py): the release is
byte-identical whatever the parallelism; a stage two recipes share is built once (the second
waits on the store's lock, then takes it from the store); a failing recipe stops the others and
reaches the user as its own one-line error; Ctrl-C leaves no worker, no DIST and no temporary.

Real builds are ``slow``: they need the shared store warm for recipes/snp.yaml, tdx.yaml and
snp-verity.yaml (the first run builds them). Tests that disturb a stage (evict it, hold its
lock) do it in a private store seeded from the shared one (builder.store.seed_store)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from helpers import assert_one_line_error, run_cli, tree_snapshot

REPO = Path(__file__).resolve().parent.parent
RECIPES = ("snp", "tdx", "snp-verity")
MARK = "CCBUILD_TEST_RELEASE_MARK"


def _marked(mark: str) -> list[int]:
    """Processes (not zombies) whose environment carries ``MARK=mark``: a release's workers
    and the tools they run."""
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                env = Path(f"/proc/{d}/environ").read_bytes()
            except OSError:
                continue
            if f"{MARK}={mark}".encode() in env.split(b"\0"):
                found.append(int(d))
    return found


def _files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and not p.is_symlink()}


# --- no build ------------------------------------------------------------------------------------

@pytest.mark.parametrize("jobs,parallel,recipes,want", [
    (4, 0, 3, (3, 1)), (8, 0, 3, (3, 2)), (2, 0, 3, (2, 1)), (1, 0, 3, (1, 1)),
    (4, 1, 3, (1, 4)), (4, 2, 3, (2, 2)), (4, 8, 3, (3, 1)), (3, 0, 1, (1, 3)),
    (2, 5, 3, (3, 1)),
])
def test_plan_shares_the_job_budget(jobs, parallel, recipes, want):
    from builder.release import plan
    assert plan(jobs, parallel, recipes) == want


def test_plan_default_budget_is_the_cores():
    from builder.release import plan
    cores = os.cpu_count() or 1
    assert plan(0, 0, 64) == (cores, 1)
    assert plan(0, 1, 3) == (1, cores)


def test_workers_are_forked_only_from_a_process_without_other_threads():
    from builder.release import can_fork
    alone = can_fork()
    short = threading.Thread(target=threading.Event().wait, args=(0.3,), name="ccbuild-beat")
    short.start()
    assert can_fork() == alone            # ccbuild's own progress thread is waited for
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, name="a-callers-thread")
    other.start()
    try:
        assert not can_fork()
    finally:
        stop.set()
        other.join()


def test_negative_parallel_is_one_line(tmp_path):
    o = run_cli(["release", str(REPO / "recipes" / "snp.yaml"), "-o", str(tmp_path / "d"),
                 "-P", "-1"])
    assert "--parallel" in assert_one_line_error(o, (2,))
    assert not list(tmp_path.iterdir())


def test_a_workers_error_reaches_the_user_as_its_one_line(tmp_path):
    """Recipes that fail inside their worker (a prebuilt firmware refused): the worker's
    CCBuildError is the one line, exit 2; no DIST, no temporary, no worker left."""
    (tmp_path / "fw.bin").write_bytes(bytes(4096))
    recipes = []
    for n in ("a", "b", "c"):
        r = tmp_path / f"{n}.yaml"
        r.write_text("platform: snp\nfirmware: {source: {path: fw.bin}}\n"
                     "kernel: {source: {path: fw.bin}}\nagent: {build: test-agent}\n")
        recipes.append(str(r))
    mark = uuid.uuid4().hex
    o = run_cli(["release", *recipes, "-o", str(tmp_path / "dist"), "-j", "3",
                 "--cache", str(tmp_path / "cache")], env={MARK: mark}, timeout=60)
    line = assert_one_line_error(o, (2,))
    assert "firmware" in line and "worker" not in line, line
    assert not _marked(mark)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.yaml", "b.yaml", "c.yaml", "cache",
                                                          "fw.bin"]


# --- real releases -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recipes(recipe_file, tmp_path_factory):
    """The three recipes, built once into the shared store (minutes when it is cold)."""
    paths = [str(recipe_file(n)) for n in RECIPES]
    work = tmp_path_factory.mktemp("warm")
    o = run_cli(["release", *paths, "-o", str(work / "dist")], cwd=work, timeout=3600)
    assert o.rc == 0, o.stderr
    return paths


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ec
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())
    p = tmp_path_factory.mktemp("key") / "release.pem"
    p.write_bytes(pem)
    return p


@pytest.mark.slow
def test_sequential_and_parallel_releases_are_byte_identical(recipes, key, tmp_path):
    trees = {}
    for label, args in (("sequential", ["-P", "1"]), ("parallel", ["-P", "3", "-j", "3"]),
                        ("default", [])):
        dist = tmp_path / label / "dist"
        o = run_cli(["release", *recipes, "-o", str(dist), "--sign-key", str(key), *args],
                    cwd=tmp_path, env={"CCBUILD_PROGRESS": "lines"}, timeout=1200)
        assert o.rc == 0, o.stderr
        trees[label] = _files(dist)
        steps = [ln for ln in o.stderr.splitlines() if ln.startswith("ccbuild: ")]
        for n in RECIPES:    # every line names its recipe
            assert f"ccbuild: [{n}] step release {n}: end" in o.stderr, o.stderr
        assert steps and all(ln.split()[1][1:-1] in RECIPES for ln in steps), steps
    assert trees["sequential"] == trees["parallel"] == trees["default"]
    assert {k.split("/")[0] for k in trees["parallel"]} >= set(RECIPES)


@pytest.fixture
def seeded(recipes, tmp_path):
    """A private store seeded from the shared one, and the AmdSev firmware stage evicted from
    it and locked by this test (as if another process were building it): (store, release of
    the lock, put the stage back). A store used before may hold the stage under more than one
    key (the toolchain's identity is part of it: another PATH, another key); every one of them
    is evicted and locked, so the key this release computes is among them."""
    from builder.store import default_root, seed_store
    store = seed_store(default_root(), tmp_path / "store")
    refs = store.root / "refs" / "firmware-build"
    amdsev = [p for p in sorted(refs.iterdir())
              if json.loads(p.read_text()).get("name") == "amdsev"]
    assert amdsev, list(refs.iterdir())
    saved = {p: p.read_bytes() for p in amdsev}
    locks = []
    for p in amdsev:
        p.unlink()
        locks.append(store.lock("firmware-build", p.stem))
        assert locks[-1].try_acquire()

    def release():
        for lk in locks:
            lk.release()

    def put_back():
        for p, data in saved.items():
            p.write_bytes(data)
    yield store, release, put_back
    release()


def _start(args: list[str], store, mark: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "CCBUILD_PROGRESS": "lines", "CCBUILD_CACHE": str(store.root),
           MARK: mark, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen([sys.executable, "-m", "builder.cli", "release", *args],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def _lines_until(proc: subprocess.Popen, needles: set[str], limit: float = 300) -> list[str]:
    """stderr lines until every needle was seen (the process is killed after ``limit`` s: a
    guard against a hang, not a measurement)."""
    watchdog = threading.Timer(limit, proc.kill)
    watchdog.start()
    lines, left = [], set(needles)
    try:
        for raw in proc.stderr:
            lines.append(raw.decode(errors="replace").rstrip("\n"))
            left = {n for n in left if n not in lines[-1]}
            if not left:
                return lines
    finally:
        watchdog.cancel()
    raise AssertionError(f"never saw {left}: {lines}")


@pytest.mark.slow
def test_a_shared_stage_is_waited_for_then_taken_from_the_store(seeded, recipes, tmp_path):
    store, unlock, restore = seeded
    mark = uuid.uuid4().hex
    dist = tmp_path / "dist"
    proc = _start([recipes[0], recipes[2], "-o", str(dist), "-P", "2", "--offline"], store,
                  mark, tmp_path)
    try:
        _lines_until(proc, {"[snp] waiting for another build of firmware",
                            "[snp-verity] waiting for another build of firmware"})
        restore()       # "the other build" finishes: its ref is there, its lock released
        unlock()
        _, rest = proc.communicate(timeout=600)
    finally:
        proc.kill()
    err = rest.decode()
    assert proc.returncode == 0, err
    for n in ("snp", "snp-verity"):
        assert f"ccbuild: [{n}] step firmware: end" in err and \
            "(cache hit: built by another process while this one waited)" in err, err
    assert not (store.root / "logs" / "edk2-amdsev.log").exists()     # not built here
    assert run_cli(["verify", str(dist)], timeout=300).rc == 0
    assert not _marked(mark)


@pytest.mark.slow
def test_a_failing_recipe_stops_the_others_and_leaves_the_previous_dist(seeded, recipes,
                                                                        tmp_path):
    store, _, _ = seeded
    tdx = Path(recipes[1])
    broken = tdx.parent / "broken.yaml"        # tdx with a wrong kernel pin
    text = tdx.read_text()
    pin = re.search(r"sha256: ([0-9a-f]{64})", text.split("kernel:", 1)[1]).group(1)
    broken.write_text(text.replace(pin, "0" * 64))
    dist = tmp_path / "out" / "dist"          # a previous release, kept
    dist.mkdir(parents=True)
    (dist / "reference-values.json").write_text("{}")
    (dist / "SHA256SUMS").write_text("")
    before = tree_snapshot(tmp_path / "out")
    mark = uuid.uuid4().hex
    # snp waits on the AmdSev lock this test holds; only stopping it ends the release
    proc = _start([recipes[0], str(broken), "-o", str(dist), "-P", "2", "--offline"], store,
                  mark, tmp_path)
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    lines = [ln for ln in err.decode().splitlines() if ln.strip()]
    assert proc.returncode == 2, lines
    assert "Traceback" not in err.decode()
    assert lines[-1].startswith("ccbuild: error: ") and "sha256" in lines[-1], lines
    assert not [ln for ln in lines if ln.startswith("ccbuild: error:")][:-1]
    assert tree_snapshot(tmp_path / "out") == before
    assert not _marked(mark)


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_and_leaves_nothing(seeded, recipes, tmp_path):
    store, _, _ = seeded
    mark = uuid.uuid4().hex
    dist = tmp_path / "dist"
    proc = _start([*recipes, "-o", str(dist), "-P", "3", "--offline"], store, mark, tmp_path)
    try:
        _lines_until(proc, {"[snp] waiting for another build of firmware",
                            "[snp-verity] waiting for another build of firmware"})
        assert len(_marked(mark)) >= 3        # the release and its waiting workers
        os.killpg(proc.pid, signal.SIGINT)    # the terminal's Ctrl-C: the foreground group
        _, rest = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, rest
    assert rest.decode().splitlines()[-1] == "ccbuild: error: interrupted"
    assert "Traceback" not in rest.decode()
    assert not _marked(mark)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    assert not list((store.root / "tmp").iterdir())
