"""Kernel command line stage: render the recipe's jinja2 template into the exact string that is
measured (SEV hashes table: UTF-8 + NUL; TDX RTMR2: UTF-16LE LoadOptions). Runs of whitespace are
collapsed and the ends stripped, so what the template's layout adds never changes a measurement.
``cmdline.txt`` holds that string with no trailing newline.

A template comes from a recipe or ``--set``, so it is hostile: it renders in jinja2's immutable
sandbox (no mutation; attribute access only to a list of string methods that cannot grow a
string, and to ``loop``'s counters; no ``str.format`` or ``%``), with only filters that cannot
grow their input without bound (``join`` and ``replace`` checked before they run), undefined
variables as errors, ``range`` capped, ``*``, ``**``, ``+`` and ``~`` capped in the size of what
they make, the output capped while it is produced, and the whole render bounded in time. Anything else is a one-line error naming ``cmdline.template``.
"""

from __future__ import annotations

import math
import signal
import threading
from contextlib import contextmanager

import jinja2
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from builder.errors import CCBuildError
from builder.recipe import Cmdline

MAX_CMDLINE = 4095            # bytes: COMMAND_LINE_SIZE of x86 Linux (minus the NUL)
MAX_TEMPLATE_OUTPUT = 64 * 1024   # characters the template may produce before whitespace folding
MAX_VALUE = 64 * 1024         # largest string/list/number (in characters or digits) an operation may make
MAX_RANGE = 4096              # items a range() may have
RENDER_SECONDS = 2            # wall-clock bound on one render

# Filters that only select, reorder or transform without growing their input without bound.
SAFE_FILTERS = ("default", "d", "join", "lower", "upper", "trim", "replace", "first", "last",
                "length", "count", "list", "sort", "unique", "reverse", "select", "reject", "string",
                "int", "abs", "min", "max", "capitalize", "title", "truncate", "wordcount")


class TemplateLimit(Exception):
    """A template exceeded a resource bound."""


def _size(v) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return len(str(abs(v))) if abs(v) < 10 ** 4000 else MAX_VALUE + 1
    try:
        return len(v)
    except TypeError:
        return 0


# String methods a template may call: none of them can make a string longer than its input.
SAFE_STR_METHODS = frozenset({"lower", "upper", "strip", "lstrip", "rstrip", "split", "rsplit",
                              "startswith", "endswith", "title", "capitalize", "casefold",
                              "count", "find", "rfind", "isdigit", "isalpha", "isalnum",
                              "removeprefix", "removesuffix"})
SAFE_LOOP_ATTRIBUTES = frozenset({"index", "index0", "revindex", "revindex0", "first", "last",
                                  "length", "depth", "depth0", "previtem", "nextitem"})


class _CappedCodeGenerator(CodeGenerator):
    """``a ~ b`` (string concatenation) goes through :meth:`_CmdlineEnvironment.capped_concat`, so a
    template cannot double a string until memory runs out."""

    def visit_Concat(self, node, frame):
        self.write("environment.capped_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _CmdlineEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%", "//", "/"})
    code_generator_class = _CappedCodeGenerator

    def capped_concat(self, parts) -> str:
        strings = [str(p) for p in parts]
        if sum(map(len, strings)) > MAX_VALUE:
            raise TemplateLimit("concatenation too long")
        return "".join(strings)

    def wrap_str_format(self, value):
        if super().wrap_str_format(value) is None:
            return None

        def refuse(*args, **kwargs):
            raise SecurityError("str.format is not available in command-line templates")
        return refuse

    def is_safe_attribute(self, obj, attr, value) -> bool:
        if isinstance(obj, str):
            return attr in SAFE_STR_METHODS
        if isinstance(obj, LoopContext):
            return attr in SAFE_LOOP_ATTRIBUTES
        return False

    def call_binop(self, context, operator_name, left, right):
        if operator_name == "**":
            if isinstance(left, (int, float)) and isinstance(right, (int, float)):
                if right > 0 and abs(left) > 1 and right * math.log10(abs(left)) > MAX_VALUE:
                    raise TemplateLimit(f"number too large ({left} ** {right})")
        if operator_name == "*":
            sizes = (_size(left), _size(right))
            if isinstance(left, int) and isinstance(right, (str, list, tuple)) or \
                    isinstance(right, int) and isinstance(left, (str, list, tuple)):
                n, seq = (left, right) if isinstance(left, int) else (right, left)
                if n > 0 and n * max(len(seq), 1) > MAX_VALUE:
                    raise TemplateLimit(f"repetition too large ({len(seq)} x {n})")
            elif sum(sizes) > MAX_VALUE:
                raise TemplateLimit("number too large")
        if operator_name == "%" and isinstance(left, str):
            raise SecurityError("%-formatting is not available in command-line templates")
        result = super().call_binop(context, operator_name, left, right)
        if _size(result) > MAX_VALUE:
            raise TemplateLimit("value too large")
        return result


def _capped_range(*args):
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise TemplateLimit(f"range of {len(r)} items (at most {MAX_RANGE})")
    return r


def _capped_join(value, d: str = "", attribute=None):
    items = [str(x) for x in value]
    if sum(map(len, items)) + len(str(d)) * max(len(items) - 1, 0) > MAX_VALUE:
        raise TemplateLimit("join result too long")
    return str(d).join(items)


def _capped_replace(s, old, new, count=None):
    s, old, new = str(s), str(old), str(new)
    n = (s.count(old) if old else len(s) + 1) if count is None else min(count, len(s) + 1)
    if len(s) + n * max(len(new) - len(old), 0) > MAX_VALUE:
        raise TemplateLimit("replace result too long")
    return s.replace(old, new) if count is None else s.replace(old, new, count)


def _environment() -> jinja2.Environment:
    env = _CmdlineEnvironment(undefined=jinja2.StrictUndefined, autoescape=False,
                              keep_trailing_newline=False)
    env.filters = {name: env.filters[name] for name in SAFE_FILTERS}
    env.filters.update(join=_capped_join, replace=_capped_replace)
    env.tests = {name: env.tests[name] for name in ("defined", "undefined", "none", "string",
                                                    "number", "eq", "ne", "in", "true", "false")}
    env.globals = {"range": _capped_range}
    return env


@contextmanager
def _deadline(seconds: int):
    """Interrupt a render that runs longer than ``seconds`` (main thread only: SIGALRM)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TemplateLimit(f"rendering took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _render(env: jinja2.Environment, source: str, variables: dict) -> str:
    tmpl = env.from_string(source)
    parts, total = [], 0
    for chunk in tmpl.generate(**variables):
        total += len(chunk)
        if total > MAX_TEMPLATE_OUTPUT:
            raise TemplateLimit(f"output longer than {MAX_TEMPLATE_OUTPUT} characters")
        parts.append(chunk)
    return "".join(parts)


# Variables a rootfs build adds; before the rootfs exists they are checked with stand-ins.
ROOTFS_VARIABLES = ("verity_params", "kata_verity_params", "root_hash", "verity_salt")
# Variables a recipe with launch.kata adds: the command line the Kata runtime model composes
# (builder.kata.recipe); with the default template it is the measured command line itself.
KATA_VARIABLES = ("kata_cmdline",)


def check_template(c: Cmdline, variables: dict[str, str], rootfs: bool,
                   where: str = "cmdline.template") -> None:
    """Render the template once with stand-ins for the values only a build knows, so a bad
    template fails before the long stages run (the real render repeats every check)."""
    stand_ins = {k: "0" * 64 for k in ROOTFS_VARIABLES} if rootfs else {}
    render_cmdline(c, {**variables, **stand_ins}, where)


def render_cmdline(c: Cmdline, variables: dict[str, str], where: str = "cmdline.template") -> str:
    known = {"kernel_params": c.kernel_params, "runtime_params": c.runtime_params, **variables}
    env = _environment()
    try:
        with _deadline(RENDER_SECONDS):
            text = _render(env, c.template, known)
    except jinja2.UndefinedError as e:
        raise CCBuildError(f"undefined template variable ({e.message})", where,
                           f"known: {', '.join(sorted(known))}") from None
    except SecurityError as e:
        raise CCBuildError(f"template not allowed ({e})", where) from None
    except jinja2.TemplateSyntaxError as e:
        raise CCBuildError(f"template syntax error at line {e.lineno} ({e.message})", where) from None
    except jinja2.TemplateError as e:
        raise CCBuildError(f"bad template ({e})", where) from None
    except TemplateLimit as e:
        raise CCBuildError(f"template exceeds a limit ({e})", where) from None
    except (ArithmeticError, TypeError, ValueError, LookupError, MemoryError, RecursionError) as e:
        raise CCBuildError(f"template failed ({type(e).__name__.lower()}: {e})", where) from None
    out = " ".join(text.split())
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in out):
        raise CCBuildError("control characters in the command line", where)
    try:
        size = len(out.encode())
    except UnicodeEncodeError:
        raise CCBuildError("the command line is not valid Unicode (lone surrogate)", where) from None
    if size > MAX_CMDLINE:
        raise CCBuildError(f"command line too long ({size} bytes, limit {MAX_CMDLINE})", where)
    return out


