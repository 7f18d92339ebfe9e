"""Rendering the text files the emitters write (qemu-*.sh, kata-configuration-*.toml) from the
jinja2 templates beside them (builder/emit/templates/*.j2), with every value serialized for the
place it lands in.

Values reach these files from recipes, VMM profiles and file names, so they are hostile: a
newline in a comment ends the comment, a quote in a shell word ends the word. A template
therefore never writes a raw value. Each ``{{ ... }}`` must pass its value through one of the
filters below, which return :class:`Encoded` text; the environment's ``finalize`` refuses
anything else (a code bug, raised as :class:`UnencodedValue` at render time), so forgetting a
filter cannot produce a file:

``sh(field)``
    one POSIX shell word (``shlex.quote``); NUL cannot be carried by a shell word.
``sh_dq(field)``
    text inside a shell double-quoted string (``$``, backquote, ``"`` and ``\\`` escaped).
``text(field)``
    text inside a comment or a quoted here-document: the value itself when it is one line of
    printable characters (and does not start with ``"``), otherwise a JSON string literal in
    which every control, format and line-separator character is escaped (:func:`display`).
    Either way the text holds no line break and no control character, which keeps shell
    comments, here-documents (no line can become the delimiter) and TOML comments intact.
``toml(field)``
    a TOML value, written by ``tomli_w`` (strings as basic strings with TOML's escapes).

``field`` names the value in the error raised when it cannot be written at all: a string that
UTF-8 cannot encode (a lone surrogate, e.g. from an undecodable file name) anywhere, or a NUL in
a shell word. That error is a one-line :class:`CCBuildError` naming the field and the file.
"""

from __future__ import annotations

import re
import shlex
import unicodedata

import jinja2
import tomli_w

from builder.errors import CCBuildError


class Encoded(str):
    """Text already serialized for the place it is written to."""


class UnencodedValue(TypeError):
    """A template wrote a value without a quoting filter (a bug in ccbuild, not in the input)."""


def check_unicode(value: str, field: str, where: str | None = None) -> str:
    """``value`` when UTF-8 can encode it; otherwise a one-line error naming ``field``."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise CCBuildError(f"{field} cannot be written: it is not valid Unicode (lone surrogate "
                           f"U+{ord(value[e.start]):04X} at character {e.start})", where,
                           "use UTF-8 text (file names and recipe values)") from None
    return value


def _as_text(value, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise UnencodedValue(f"{field}: cannot write a {type(value).__name__} as text")


# -- shell ------------------------------------------------------------------------------------
def sh_word(value, field: str, where: str | None = None) -> Encoded:
    """One shell word that the shell reads back as exactly ``value``."""
    s = check_unicode(_as_text(value, field), field, where)
    if "\0" in s:
        raise CCBuildError(f"{field} contains a NUL character, which a shell word cannot carry",
                           where, "remove it")
    return Encoded(shlex.quote(s))


_DQ_SPECIAL = re.compile(r'([$`"\\])')


def sh_dq(value, field: str, where: str | None = None) -> Encoded:
    """Text inside ``"..."`` in a shell script: the shell expands nothing in it."""
    s = check_unicode(_as_text(value, field), field, where)
    if "\0" in s:
        raise CCBuildError(f"{field} contains a NUL character, which a shell string cannot "
                           "carry", where, "remove it")
    return Encoded(_DQ_SPECIAL.sub(r"\\\1", s))


# -- comments and listings ----------------------------------------------------------------------
_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                 "\t": "\\t"}


def _printable(c: str) -> bool:
    """Not a control (C0, DEL, C1), format (bidi overrides, zero-width ...), line/paragraph
    separator or surrogate character: what can stand in one line of a comment as itself."""
    return unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Zl", "Zp")


def _u_escape(c: str) -> str:
    o = ord(c)
    if o > 0xFFFF:  # JSON writes astral characters as a surrogate pair
        o -= 0x10000
        return f"\\u{0xD800 + (o >> 10):04x}\\u{0xDC00 + (o & 0x3FF):04x}"
    return f"\\u{o:04x}"


def display(value: str) -> str:
    """One line of printable text standing for ``value``: the value itself when it is one
    line of printable characters not starting with ``"``; otherwise a JSON string literal
    (``json.loads`` gives the value back) with every non-printable character escaped."""
    if not value.startswith('"') and all(map(_printable, value)):
        return value
    return '"' + "".join(_JSON_ESCAPES.get(c) or (c if _printable(c) else _u_escape(c))
                         for c in value) + '"'


def text(value, field: str, where: str | None = None) -> Encoded:
    """Text for a comment line or a quoted here-document (see :func:`display`)."""
    return Encoded(display(check_unicode(_as_text(value, field), field, where)))


# -- TOML ----------------------------------------------------------------------------------------
def toml_value(value, field: str, where: str | None = None) -> Encoded:
    """A TOML value (string, integer or boolean) written by tomli_w."""
    if isinstance(value, str):
        check_unicode(value, field, where)
    elif not isinstance(value, (int, bool)):
        raise UnencodedValue(f"{field}: cannot write a {type(value).__name__} as a TOML value")
    line = tomli_w.dumps({"v": value})
    assert line.startswith("v = ") and line.endswith("\n") and line.count("\n") == 1, line
    return Encoded(line[4:-1])


# -- the environment ------------------------------------------------------------------------
def _finalize(value):
    if isinstance(value, Encoded):
        return value
    raise UnencodedValue(f"template writes {type(value).__name__} {str(value)[:60]!r} without a "
                         "quoting filter (sh, sh_dq, text, toml)")


def _filter(fn):
    @jinja2.pass_context
    def f(ctx, value, field: str):
        return fn(value, field, ctx.get("output_name"))
    return f


# -- templates compiled ahead ---------------------------------------------------------------------
# Compiling a template is jinja2 parsing it and generating Python (tens of milliseconds each, on
# every run: a third of a no-op build's emit step). ``python -m builder.emit.templating`` writes
# that Python once, as the modules builder/emit/tmpl_*.py (tests/test_noop.py keeps them in step).
# A module is used only when its key says it was generated from these exact template bytes, by
# this jinja2 version, with these environment options; otherwise the template is compiled from
# its source as before. The modules are part of the package (no cache directory is trusted).
_OPTIONS = dict(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True,
                trim_blocks=True, lstrip_blocks=True, finalize=_finalize)


def compiled_module(template: str) -> str:
    """The module holding ``template`` compiled (qemu.sh.j2 -> builder.emit.tmpl_qemu_sh)."""
    return "builder.emit.tmpl_" + re.sub(r"[^A-Za-z0-9]", "_", template.removesuffix(".j2"))


def compiled_key(source: str) -> str:
    """What a compiled module must have been generated from: the template's text, the jinja2
    version and the environment's options (by name)."""
    import hashlib
    import json
    opts = {k: getattr(v, "__qualname__", v) for k, v in sorted(_OPTIONS.items())}
    return hashlib.sha256(json.dumps([source, jinja2.__version__, opts]).encode()).hexdigest()


class _Loader(jinja2.PackageLoader):
    """builder/emit/templates, each template from its compiled module when that module's key
    matches the template's source (else compiled from the source, as jinja2 does)."""

    def load(self, environment, name, globals=None):
        source, filename, uptodate = self.get_source(environment, name)
        mod = _compiled(name, source)
        if mod is None:
            code = environment.compile(source, name, filename)
            return environment.template_class.from_code(environment, code, globals or {},
                                                        uptodate)
        return environment.template_class.from_module_dict(environment, mod.__dict__,
                                                           globals or {})


def _compiled(name: str, source: str):
    import importlib
    try:
        mod = importlib.import_module(compiled_module(name))
    except ImportError:
        return None
    return mod if getattr(mod, "KEY", None) == compiled_key(source) else None


def compiled_source(name: str) -> str:
    """The text of ``name``'s compiled module (what ``python -m builder.emit.templating``
    writes)."""
    source, _, _ = _ENV.loader.get_source(_ENV, name)
    code = _ENV.compile(source, name, name, raw=True, defer_init=True)
    return (f"# ruff: noqa\n# Generated by `python -m builder.emit.templating` from "
            f"builder/emit/templates/{name}; do not edit.\n"
            f"KEY = {compiled_key(source)!r}\n{code}\n")


def environment() -> jinja2.Environment:
    """The environment the emitters render in (one per process: :data:`_ENV`)."""
    env = jinja2.Environment(loader=_Loader("builder.emit", "templates"), **_OPTIONS)
    env.filters.update(sh=_filter(sh_word), sh_dq=_filter(sh_dq), text=_filter(text),
                       toml=_filter(toml_value))
    return env


_ENV = environment()


def render(template: str, output_name: str, **values) -> str:
    """Render ``template`` into the text of the file ``output_name`` (named in errors)."""
    out = _ENV.get_template(template).render(output_name=output_name, **values)
    check_unicode(out, output_name)   # every piece was checked; this is the last line of defence
    return out


if __name__ == "__main__":   # a developer's step: regenerate the modules in this checkout
    from importlib.resources import files
    from pathlib import Path
    here = Path(str(files("builder.emit")))
    for t in _ENV.loader.list_templates():
        (here / (compiled_module(t).rpartition(".")[2] + ".py")).write_text(compiled_source(t))
