"""The store's per-key lock (builder/store.py Store.lock) and its use by every cached stage
(builder/stages/cached.py): two processes that miss the same key build it once, the second
waiting and saying so; a lock held forever ends in a one-line error; a hostile lock file (a
symlink, a FIFO, a symlinked directory) is refused without being followed or hanging."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from builder.errors import CCBuildError

REPO = Path(__file__).resolve().parent.parent
KEY = "ab" * 32

# One process running a synthetic cached stage: its build appends this pid to COUNT, says it
# started, and finishes only when GATE exists; prints "<hit> <output>".
RACER = """
import os, sys, time
from pathlib import Path
from builder import log
from builder.stages.cached import cached_stage
from builder.store import Store
root, count, gate, started = map(Path, sys.argv[1:5])
store = Store.open(root)

def build(work):
    assert work.is_dir() and not any(work.iterdir())
    with open(count, "a") as f:
        f.write(f"{os.getpid()}\\n")
    started.write_text("x")
    while not gate.exists():
        time.sleep(0.02)
    return {"sha256": b"the stage's output"}, {"by": os.getpid()}

with log.step("test stage"):
    c = cached_stage(store, "test-build", sys.argv[5], {"sha256": "test output"}, build)
print(c.hit, c.outputs["sha256"].decode(), flush=True)
"""


def _racer(tmp_path: Path, name: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RACER, str(tmp_path / "store"), str(tmp_path / "count"),
         str(tmp_path / "gate"), str(tmp_path / f"started-{name}"), KEY],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "CCBUILD_PROGRESS": "lines", **(env or {})})


def _read_until(stream, needle: str, proc: subprocess.Popen, limit: float = 60) -> list[str]:
    """Lines of ``stream`` up to the first holding ``needle`` (the process is killed if that
    takes longer than ``limit`` seconds: a guard, not a measurement)."""
    watchdog = threading.Timer(limit, proc.kill)
    watchdog.start()
    lines = []
    try:
        for raw in stream:
            lines.append(raw.decode(errors="replace").rstrip("\n"))
            if needle in lines[-1]:
                return lines
    finally:
        watchdog.cancel()
    raise AssertionError(f"{needle!r} never came: {lines}")


def test_two_processes_missing_one_key_build_it_once(tmp_path):
    a = _racer(tmp_path, "a")
    try:
        watchdog = threading.Timer(60, a.kill)
        watchdog.start()
        while not (tmp_path / "started-a").exists() and a.poll() is None:
            threading.Event().wait(0.02)
        watchdog.cancel()
        assert a.poll() is None, a.communicate()
        b = _racer(tmp_path, "b")          # misses the ref: a is still building
        try:
            waited = _read_until(b.stderr, "waiting for another build of test", b)
            (tmp_path / "gate").write_text("go")
            out_b, err_b = b.communicate(timeout=60)
        finally:
            b.kill()
        out_a, _ = a.communicate(timeout=60)
    finally:
        a.kill()
    assert a.returncode == 0 and b.returncode == 0, err_b
    assert (tmp_path / "count").read_text().split() == [str(a.pid)]     # built once, by a
    assert out_a.decode() == "False the stage's output\n"
    assert out_b.decode() == "True the stage's output\n"
    assert not (tmp_path / "started-b").exists()
    line = waited[-1]
    assert line == f"ccbuild: waiting for another build of test {KEY[:12]} (pid {a.pid})", waited
    err = err_b.decode()
    assert "waited " in err and "(cache hit: built by another process while this one waited)" \
        in err, err
    assert not list((tmp_path / "store" / "tmp").iterdir())     # no scratch directory left


def test_without_the_lock_both_would_build(tmp_path, monkeypatch):
    """The race above is real: the same two processes with the lock made a no-op build twice
    (the test can fail)."""
    patch = ("from builder import store as _s\n"
             "_s.StoreLock.try_acquire = lambda self: True\n")
    script = RACER.replace("store = Store.open(root)", patch + "store = Store.open(root)")
    procs = []
    for name in ("a", "b"):
        procs.append(subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / "store"), str(tmp_path / "count"),
             str(tmp_path / "gate"), str(tmp_path / f"started-{name}"), KEY], cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        watchdog = threading.Timer(60, lambda: [p.kill() for p in procs])
        watchdog.start()
        while not all((tmp_path / f"started-{n}").exists() for n in "ab") and \
                all(p.poll() is None for p in procs):
            threading.Event().wait(0.02)
        watchdog.cancel()
        (tmp_path / "gate").write_text("go")
        for p in procs:
            p.communicate(timeout=60)
    finally:
        for p in procs:
            p.kill()
    assert len((tmp_path / "count").read_text().split()) == 2


def _hold(path: Path, pid_text: str = "") -> int:
    """Hold an flock on ``path`` through a file description of its own (as another process
    would); returns the fd."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, pid_text.encode())
    return fd


@pytest.fixture
def beats(monkeypatch):
    from builder import log
    monkeypatch.setattr(log, "HEARTBEAT", 0.3)
    monkeypatch.delenv("CCBUILD_PROGRESS", raising=False)
    log.configure()
    log.set_progress("heartbeat")
    yield log
    log.set_progress(None)
    log.configure()


def test_a_lock_held_forever_ends_in_one_error_naming_it_with_life_meanwhile(tmp_path, beats,
                                                                             capsys,
                                                                             monkeypatch):
    from builder.stages.cached import cached_stage
    from builder.store import Store
    store = Store.open(tmp_path / "store")
    fd = _hold(tmp_path / "store" / "locks" / "firmware-build" / f"{KEY}.lock", "4242\n")
    monkeypatch.setenv("CCBUILD_LOCK_TIMEOUT", "1.5")
    ran = []
    try:
        with pytest.raises(CCBuildError) as e:
            cached_stage(store, "firmware-build", KEY, {"sha256": "firmware"},
                         lambda work: ran.append(1) or ({"sha256": b"x"}, {}))
    finally:
        os.close(fd)
    assert not ran
    msg = e.value.one_line()
    assert "pid 4242" in msg and f"locks/firmware-build/{KEY}.lock" in msg, msg
    assert "CCBUILD_LOCK_TIMEOUT" in msg and "\n" not in msg
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"ccbuild: waiting for another build of firmware {KEY[:12]} (pid 4242)"
    assert any(ln.startswith(f"ccbuild: still waiting for another build of firmware "
                             f"{KEY[:12]}") for ln in err[1:]), err
    assert not [ln for ln in err if ln.startswith("ccbuild: waited ")], err   # it gave up


@pytest.mark.parametrize("value", ["soon", "-1", "0", "inf", "nan"])
def test_a_bad_lock_timeout_is_one_error_naming_the_variable(tmp_path, monkeypatch, value):
    from builder.stages.cached import cached_stage
    from builder.store import Store
    from builder import log
    log.configure(quiet=True)
    store = Store.open(tmp_path / "store")
    fd = _hold(tmp_path / "store" / "locks" / "agent-build" / f"{KEY}.lock")
    monkeypatch.setenv("CCBUILD_LOCK_TIMEOUT", value)
    try:
        with pytest.raises(CCBuildError, match="CCBUILD_LOCK_TIMEOUT"):
            cached_stage(store, "agent-build", KEY, {"sha256": "agent"},
                         lambda work: ({"sha256": b"x"}, {}))
    finally:
        os.close(fd)
        log.configure()


def test_a_lock_freed_while_waiting_is_taken_and_the_stage_built_once(tmp_path, capsys):
    from builder.stages.cached import cached_stage
    from builder.store import Store
    store = Store.open(tmp_path / "store")
    fd = _hold(tmp_path / "store" / "locks" / "kernel-build" / f"{KEY}.lock")
    threading.Timer(0.5, os.close, (fd,)).start()
    c = cached_stage(store, "kernel-build", KEY, {"sha256": "kernel"},
                     lambda work: ({"sha256": b"kernel bytes"}, {}))
    assert not c.hit and c.outputs["sha256"] == b"kernel bytes"
    assert "waiting for another build of kernel" in capsys.readouterr().err
    again = cached_stage(store, "kernel-build", KEY, {"sha256": "kernel"},
                         lambda work: pytest.fail("built twice"))
    assert again.hit


@pytest.mark.parametrize("shape", ["symlink", "fifo", "dir", "locks-symlink", "ns-symlink"])
def test_a_hostile_lock_file_is_refused_not_followed(tmp_path, shape):
    from builder.stages.cached import cached_stage
    from builder.store import Store
    store = Store.open(tmp_path / "store")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "victim"
    target.write_text("keep")
    locks = tmp_path / "store" / "locks"
    lock = locks / "agent-build" / f"{KEY}.lock"
    if shape == "locks-symlink":
        locks.symlink_to(elsewhere)
    elif shape == "ns-symlink":
        locks.mkdir()
        (locks / "agent-build").symlink_to(elsewhere)
    else:
        lock.parent.mkdir(parents=True)
        if shape == "symlink":
            lock.symlink_to(target)
        elif shape == "fifo":
            os.mkfifo(lock)
        else:
            lock.mkdir()
    with pytest.raises(CCBuildError) as e:
        cached_stage(store, "agent-build", KEY, {"sha256": "agent"},
                     lambda work: pytest.fail("built"))
    msg = e.value.one_line()
    assert "lock" in msg and "\n" not in msg
    assert target.read_text() == "keep" and sorted(p.name for p in elsewhere.iterdir()) == \
        ["victim"]


def test_a_hit_takes_no_lock(tmp_path):
    """A warm store is only read: no lock file is created for a stage found in it."""
    from builder.stages.cached import cached_stage
    from builder.store import Store
    store = Store.open(tmp_path / "store")
    cached_stage(store, "agent-build", KEY, {"sha256": "agent"},
                 lambda work: ({"sha256": b"agent"}, {}))
    (tmp_path / "store" / "locks" / "agent-build" / f"{KEY}.lock").unlink()
    assert cached_stage(store, "agent-build", KEY, {"sha256": "agent"},
                        lambda work: pytest.fail("built")).hit
    assert not (tmp_path / "store" / "locks" / "agent-build" / f"{KEY}.lock").exists()


def test_the_lock_is_not_reentrant_within_a_process(tmp_path):
    from builder.store import Store
    store = Store.open(tmp_path / "store")
    with store.lock("agent-build", KEY) as one:
        assert one.try_acquire()
        with store.lock("agent-build", KEY) as two:
            with pytest.raises(RuntimeError):
                two.try_acquire()
    with store.lock("agent-build", KEY) as three:     # released with the first
        assert three.try_acquire()


@pytest.mark.slow
def test_two_processes_building_the_test_agent_build_it_once(tmp_path):
    """The real stage: two processes start the test agent's cached build in an empty store at
    once; its log shows one compile."""
    code = ("import sys\nfrom builder import log\nfrom builder.stages.agent import build_cached\n"
            "from builder.store import Store\nlog.configure(quiet=True)\n"
            "data, _ = build_cached(Store.open(sys.argv[1]))\n"
            "import hashlib\nprint(hashlib.sha256(data).hexdigest())\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "store")], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0]
    import re
    log = (tmp_path / "store" / "logs" / "test-agent.log").read_text()
    assert len(set(re.findall(r"work-[A-Za-z0-9_]+", log))) == 1, log    # one scratch dir
    assert len(list((tmp_path / "store" / "refs" / "agent-build").iterdir())) == 1


def test_json_mode_reports_the_wait_as_events_of_the_step(tmp_path, beats, capsys):
    import json
    from builder.stages.cached import cached_stage
    from builder.store import Store
    beats.set_progress("json")
    beats.set_tag("snp")
    try:
        store = Store.open(tmp_path / "store")
        fd = _hold(tmp_path / "store" / "locks" / "firmware-build" / f"{KEY}.lock")
        threading.Timer(0.8, os.close, (fd,)).start()
        with beats.step("firmware"):
            cached_stage(store, "firmware-build", KEY, {"sha256": "firmware"},
                         lambda work: ({"sha256": b"fw"}, {}))
    finally:
        beats.set_tag(None)
    events = [json.loads(ln) for ln in capsys.readouterr().err.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[1] == "wait" and kinds[-2] == "waited" and \
        kinds[-1] == "end", kinds
    what = f"another build of firmware {KEY[:12]}"
    assert events[1] == {"event": "wait", "what": what, "step": "firmware", "recipe": "snp"}
    assert all(e["recipe"] == "snp" for e in events)
    assert events[-1]["cache"] == "miss"
