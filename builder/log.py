"""Console logging: step timings, optional command echo, and progress that works with or without a
terminal.

Progress modes (:func:`progress_mode`; ``CCBUILD_PROGRESS=auto|bars|lines|json|off`` or
:func:`set_progress`, ``auto`` by default):

- ``bars`` (``auto`` on an interactive terminal outside CI): tqdm bars, as always;
- ``heartbeat`` (``auto`` elsewhere: a CI log, a pipe): no bars; a long external build (EDK2, a
  kernel; :func:`bar` objects fed by :func:`builder.run.run_streamed`) prints one progress line
  at most every :data:`HEARTBEAT` seconds (``edk2 amdsev: 312/1043 modules, 2m30s``), and any
  step open that long without one says it is still running (``step edk2 amdsev: BaseTools:
  running, 1m00s``), so a log never sits silent for longer; nothing else is added, so a short
  failing command still prints exactly one error line;
- ``lines``: heartbeat, plus one line when a step starts and one when it ends
  (``ccbuild: step firmware: start`` / ``... end 0.12s (cache hit: ...)``);
- ``json``: one JSON object per line for each step start, end (with ``duration`` and, when the
  step knows, ``cache``: ``hit``/``miss`` and ``why``) and heartbeat.

A process waiting for another's build of a stage says so in every mode (:func:`waiting`). In a
worker of ``ccbuild release`` every line starts with its recipe (``ccbuild: [snp] ...``) and
every JSON event carries ``"recipe"`` (:func:`set_tag`); each line is one write, so the lines of
processes sharing stderr do not mix.

Everything goes to stderr: stdout stays what each verb documents (``--json`` summaries).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator

_state = {"verbose": False, "debug": False, "quiet": False, "progress": None, "tag": None}
MODES = ("bars", "heartbeat", "lines", "json", "off")
HEARTBEAT = 30.0          # seconds between progress lines of a long step without a terminal
_steps: list[dict] = []   # the open steps, innermost last


def configure(verbose: bool = False, debug: bool = False, quiet: bool = False) -> None:
    _state.update(verbose=verbose or debug, debug=debug, quiet=quiet)


def set_progress(mode: str | None) -> None:
    """Force a progress mode (one of :data:`MODES`, ``auto`` or None for the default)."""
    _state["progress"] = None if mode in (None, "auto") else mode


def verbose() -> bool:
    return _state["verbose"]


def set_tag(tag: str | None) -> None:
    """Name the recipe this process builds (``ccbuild release``): every line then starts with
    ``[tag]`` and every JSON event carries ``"recipe": tag``."""
    _state["tag"] = tag


def settings() -> dict:
    """This process's logging settings, the progress mode resolved (for a worker process)."""
    return {"verbose": _state["verbose"], "debug": _state["debug"], "quiet": _state["quiet"],
            "progress": progress_mode()}


def init_worker(conf: dict, tag: str | None) -> None:
    """In a worker process (``ccbuild release``): the parent's :func:`settings`, this worker's
    tag, and no step or heartbeat thread inherited from the parent (a fork copies the
    bookkeeping, not the threads). Bars become heartbeat lines: several processes cannot share
    a terminal's bars."""
    configure(conf["verbose"], conf["debug"], conf["quiet"])
    set_progress("heartbeat" if conf["progress"] == "bars" else conf["progress"])
    set_tag(tag)
    _steps.clear()
    _ticker.clear()
    _last_line[0] = time.monotonic()


def _tagged(msg: str) -> str:
    return f"[{_state['tag']}] {msg}" if _state["tag"] else msg


def _line(text: str) -> None:
    """One line on stderr in one write: lines of worker processes sharing stderr do not mix."""
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (AttributeError, ValueError):
        pass   # no stderr (a closed one)


def info(msg: str) -> None:
    if not _state["quiet"]:
        _line(_tagged(msg))


def echo_command(argv: list[str]) -> None:
    """Echo an external command (``--verbose``) before it runs."""
    if _state["verbose"]:
        import shlex
        info("+ " + shlex.join(str(a) for a in argv))


def progress_mode() -> str:
    """bars | heartbeat | lines | json | off (see the module's text)."""
    if _state["quiet"]:
        return "off"
    mode = _state["progress"] or os.environ.get("CCBUILD_PROGRESS", "auto")
    if mode in MODES:
        return mode
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "bars" if tty and not os.environ.get("CI") else "heartbeat"


def progress_enabled() -> bool:
    """Bars only on an interactive terminal, never in CI."""
    return progress_mode() == "bars"


_last_line = [0.0]         # monotonic time of the last progress line printed
_ticker: list = []        # the step heartbeat thread, while one runs


def _emit(event: dict, text: str) -> None:
    _last_line[0] = time.monotonic()
    if progress_mode() == "json":
        if _state["tag"]:
            event = {**event, "recipe": _state["tag"]}
        _line(json.dumps(event, sort_keys=True, ensure_ascii=True))
    else:   # one line whatever a name in it holds (a path with a newline, a control character)
        from builder.errors import printable
        _line(f"ccbuild: {printable(_tagged(text))}")


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Heartbeat:
    """A progress counter that prints a line at most every ``interval`` seconds (the first after
    ``interval``), in the heartbeat, lines and json modes; tqdm's ``update``/context protocol."""

    def __init__(self, total: int | None, desc: str, unit: str, interval: float | None = None,
                 clock=time.monotonic):
        import threading
        self.total, self.desc, self.unit = total, desc, unit
        self.interval = HEARTBEAT if interval is None else interval
        self._lock = threading.Lock()
        self.n = 0
        self.clock = clock
        self.t0 = self.last = clock()
        if clock is time.monotonic and _steps:   # the first line comes at most ``interval``
            self.last = min(self.last, _last_line[0])   # after the last one of the run
        self.lines = 0            # progress lines printed
        self.log_lines = 0        # output lines of the tool seen (run_streamed)
        self._stop = None
        self._step: dict | None = None

    def update(self, n: int = 1) -> None:
        self.n += n
        self.tick()

    def line(self) -> None:
        """One output line of the tool (that is not a counted unit)."""
        self.log_lines += 1
        self.tick()

    def tick(self) -> None:
        """Print a progress line when ``interval`` has passed since the last one."""
        with self._lock:
            now = self.clock()
            if now - self.last < self.interval or progress_mode() not in ("heartbeat", "lines",
                                                                          "json"):
                return
            self.last = now
        self.lines += 1
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        logs = f", {self.log_lines} log lines" if self.log_lines else ""
        _emit({"event": "progress", "step": self.desc, "done": self.n, "total": self.total,
               "unit": self.unit, "log_lines": self.log_lines,
               "elapsed": round(now - self.t0, 1)},
              f"{self.desc}: {done} {self.unit}s{logs}, {_duration(now - self.t0)}")

    def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        if self._step is not None:
            self._step["bars"] = self._step.get("bars", 1) - 1
            self._step = None

    def __enter__(self):
        """Also tick from a timer thread, so a tool silent for minutes still shows life."""
        import threading
        if _steps and self._step is None:   # the step's own heartbeat defers to this bar
            self._step = _steps[-1]
            self._step["bars"] = self._step.get("bars", 0) + 1
        if progress_mode() in ("heartbeat", "lines", "json") and self._stop is None:
            stop = self._stop = threading.Event()

            def beat():
                while not stop.wait(min(1.0, self.interval / 5)):
                    self.tick()
            threading.Thread(target=beat, name="ccbuild-heartbeat", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(total: int | None, desc: str, unit: str = "B"):
    """A tqdm bar on a terminal; elsewhere a :class:`Heartbeat` (a line at most every 30 s)."""
    if progress_mode() == "bars":
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", leave=False,
                    file=sys.stderr)
    return Heartbeat(total, desc, unit)


def note_cache(hit: bool, why: str = "") -> None:
    """Record on the innermost open step whether it came from the cache (and why not): the
    ``end`` event carries it."""
    if _steps:
        _steps[-1]["cache"] = "hit" if hit else "miss"
        if why:
            _steps[-1]["why"] = why


@contextlib.contextmanager
def waiting(what: str) -> Iterator[None]:
    """This process waits for ``what`` (another process's build of a stage): one line now
    (``waiting for another build of firmware 1a2b3c4d5e6f``) in every mode but quiet; without
    a terminal a line every :data:`HEARTBEAT` seconds of silence while it still waits (``still
    waiting for ..., 1m30s``; the step's own heartbeat defers to it); one line when the wait is
    over (not when it is given up)."""
    import threading
    t0 = time.monotonic()
    rec = _steps[-1] if _steps else None
    where = {"step": rec["step"]} if rec is not None else {}
    if not _state["quiet"]:
        _emit({"event": "wait", "what": what, **where}, f"waiting for {what}")
    if rec is not None:
        rec["bars"] = rec.get("bars", 0) + 1
    stop = threading.Event()

    def beat():
        while not stop.wait(min(1.0, HEARTBEAT / 5)):
            now = time.monotonic()
            if now - _last_line[0] >= HEARTBEAT:
                _emit({"event": "progress", "waiting": what, "elapsed": round(now - t0, 1),
                       **where},
                      f"still waiting for {what}, {_duration(now - t0)}")
    if progress_mode() in ("heartbeat", "lines", "json"):
        threading.Thread(target=beat, name="ccbuild-wait-heartbeat", daemon=True).start()
    try:
        yield
    finally:
        stop.set()
        if rec is not None:
            rec["bars"] = rec.get("bars", 1) - 1
    dt = time.monotonic() - t0
    if not _state["quiet"]:
        _emit({"event": "waited", "what": what, "duration": round(dt, 3), **where},
              f"waited {_duration(dt)} for {what}")


def _step_heartbeat() -> None:
    """While a step is open: when no progress line was printed for :data:`HEARTBEAT` seconds,
    say which step is still running (so a long step without a counting bar shows life too)."""
    try:
        while _steps:
            time.sleep(min(1.0, HEARTBEAT / 5))
            now = time.monotonic()
            open_steps = list(_steps)
            if not open_steps or now - _last_line[0] < HEARTBEAT:
                continue
            rec = open_steps[-1]
            if rec.get("bars") or progress_mode() not in ("heartbeat", "lines", "json"):
                continue   # a counting bar speaks for the step
            # silent for HEARTBEAT since the run's last line (or its first step's start)
            _emit({"event": "progress", "step": rec["step"],
                   "elapsed": round(now - rec["t0"], 1)},
                  f"step {rec['step']}: running, {_duration(now - rec['t0'])}")
    finally:
        _ticker.clear()


def _start_step_heartbeat() -> None:
    if _ticker or progress_mode() not in ("heartbeat", "lines", "json"):
        return
    import threading
    t = threading.Thread(target=_step_heartbeat, name="ccbuild-step-heartbeat", daemon=True)
    _ticker.append(t)
    t.start()


@contextlib.contextmanager
def step(name: str, timings: list | None = None) -> Iterator[None]:
    """Log a pipeline step with its duration; append (name, seconds) to ``timings``. In the lines
    and json modes a step prints its start and its end."""
    t0 = time.monotonic()
    rec: dict = {"step": name, "t0": t0}
    if not _steps:
        _last_line[0] = t0
    _steps.append(rec)
    _start_step_heartbeat()
    mode = progress_mode()
    if mode in ("lines", "json"):
        _emit({"event": "start", "step": name}, f"step {name}: start")
    ok = False
    try:
        yield
        ok = True
    finally:
        _steps.remove(rec)
        dt = time.monotonic() - t0
        if timings is not None:
            timings.append((name, dt))
        if mode in ("lines", "json"):
            cache = rec.get("cache")
            _emit({"event": "end", "step": name, "duration": round(dt, 3), "ok": ok,
                   **({"cache": cache} if cache else {}),
                   **({"why": rec["why"]} if "why" in rec else {})},
                  f"step {name}: {'end' if ok else 'failed'} {dt:.2f}s"
                  + (f" (cache {cache}{': ' + rec['why'] if rec.get('why') else ''})"
                     if cache else ""))
        elif _state["verbose"]:
            info(f"  {name}: {dt:.2f}s")
