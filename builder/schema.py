"""Declarative schemas: frozen dataclasses whose fields carry documentation and constraints.

One table per document kind (recipes, firmware descriptors, TDX profiles, OUT's manifest and
measurements) drives the validation, the canonical JSON and the generated reference in docs/, so
the three never drift. :func:`build` turns parsed YAML/JSON into the dataclass or raises a
:class:`SchemaError` naming the file and the path (``recipes/snp.yaml: kernel.source.sha256:
required``). Values come from others' files, so messages quote at most a short prefix of them.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from builder.errors import CCBuildError

HEX64 = r"[0-9a-f]{64}"
HEX96 = r"[0-9a-f]{96}"


class SchemaError(CCBuildError):
    """A document mistake: ``<file>: <path>: <what>``."""

    def __init__(self, file: str, path: str, what: str):
        self.file, self.path = file, path
        super().__init__(f"{file}: {path}: {what}" if path else f"{file}: {what}")


def doc(text: str, **kw) -> Any:
    """A field with documentation (shown in the generated reference) and optional constraints:
    ``pattern`` (regex, full match), ``minimum``/``maximum`` (integers), ``max_length``."""
    md = {"doc": text}
    for k in ("pattern", "minimum", "maximum", "max_length", "choices_doc"):
        if k in kw:
            md[k] = kw.pop(k)
    return field(metadata=md, **kw)


@dataclass
class Ctx:
    """Where a document came from and how strictly to read it; ``fail`` raises ``error``."""
    file: str
    locked: bool = False
    error: type = SchemaError

    def fail(self, path: str, what: str) -> typing.NoReturn:
        raise self.error(self.file, path, what)


def short(value: Any, limit: int = 60) -> str:
    """repr() of a value from a hostile file, cut to ``limit`` characters."""
    r = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return r if len(r) <= limit else r[:limit] + "..."


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    if origin in (tuple, list):
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    return str(tp)


def convert(ctx: Ctx, tp, value, where: str):
    """``value`` checked against (and converted to) the type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        alts = [a for a in args if a is not type(None)]
        errors = []
        for a in alts:
            try:
                return convert(ctx, a, value, where)
            except SchemaError as e:
                errors.append(e)
        if len(alts) == 1:
            raise errors[0]
        ctx.fail(where, f"must be {' or '.join(_type_name(a) for a in alts)}, "
                        f"not {type(value).__name__}")
    if origin is Literal:
        if value not in args:
            ctx.fail(where, f"must be one of {', '.join(map(str, args))} (got {short(value)})")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list):
            ctx.fail(where, f"must be a list, not {type(value).__name__}")
        return tuple(convert(ctx, args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            ctx.fail(where, f"must be a mapping, not {type(value).__name__}")
        return {convert(ctx, args[0], k, where): convert(ctx, args[1], v, join(where, str(k)[:60]))
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(ctx, tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            ctx.fail(where, f"must be true or false, not {short(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and re.fullmatch(r"0[xX][0-9a-fA-F]{1,32}|0o[0-7]{1,48}|\d{1,40}",
                                                       value):
                return int(value, 0)
            ctx.fail(where, f"must be an integer, not {type(value).__name__} {short(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            ctx.fail(where, f"must be a string, not {type(value).__name__} {short(value)}")
        return value
    if tp is Any:
        return value
    raise TypeError(tp)  # schema bug


def build(ctx: Ctx, cls, raw, where: str = ""):
    """An instance of the dataclass ``cls`` from a parsed mapping, every field checked; unknown
    keys, missing required keys, wrong types and constraint violations name their path."""
    if not isinstance(raw, dict):
        ctx.fail(where, f"must be a mapping, not {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in fields:
            near = [n for n in fields if n.replace("_", "") == str(k).replace("_", "").replace("-", "")]
            hint = f" (did you mean {near[0]}?)" if near else ""
            ctx.fail(join(where, str(k)[:60]), f"unknown key{hint}")
    kwargs = {}
    for name, f in fields.items():
        p = join(where, name)
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                ctx.fail(p, "required")
            continue
        v = convert(ctx, hints[name], raw[name], p)
        md = f.metadata
        if isinstance(v, str) and "max_length" in md and len(v) > md["max_length"]:
            ctx.fail(p, f"longer than {md['max_length']} characters")
        if isinstance(v, str) and "pattern" in md and not re.fullmatch(md["pattern"], v):
            ctx.fail(p, f"{short(v)} is malformed (expected {md['pattern']})")
        if isinstance(v, int) and "minimum" in md and not md["minimum"] <= v <= md["maximum"]:
            ctx.fail(p, f"{short(v)} is out of range {md['minimum']}..{md['maximum']}")
        kwargs[name] = v
    obj = cls(**kwargs)
    obj.validate(ctx, where) if hasattr(obj, "validate") else None
    return obj


def join(a: str, b: str) -> str:
    return f"{a}.{b}" if a else b


def to_jsonable(obj) -> Any:
    """A schema instance as plain JSON values (dataclasses -> dicts, tuples -> lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    return obj


def schema_doc(cls, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(path, type, default, doc) rows for every field: a generated reference."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        path = join(prefix, f.name)
        default = ("required" if f.default is dataclasses.MISSING and
                   f.default_factory is dataclasses.MISSING else
                   "" if dataclasses.is_dataclass(f.default) or f.default is dataclasses.MISSING
                   else repr(f.default))
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)] or (
            [tp] if dataclasses.is_dataclass(tp) else [])
        rows.append((path, pretty_type(tp), default, f.metadata.get("doc", "")))
        for sub in inner:
            suffix = "[]" if typing.get_origin(tp) is tuple else ".*" if typing.get_origin(tp) is dict else ""
            rows.extend(schema_doc(sub, path + suffix))
    return rows


def pretty_type(tp) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return " | ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        alts = " | ".join(pretty_type(a) for a in args if a is not type(None))
        return alts + " (optional)" if type(None) in args else alts
    if origin is tuple:
        return f"list of {pretty_type(args[0])}"
    if origin is dict:
        return f"mapping of {pretty_type(args[1])}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def render_reference(cls, title: str, intro: list[str]) -> str:
    """A markdown reference table of every field of ``cls``."""
    lines = [f"# {title}", "", *intro,
             "", "| field | type | default | meaning |", "|---|---|---|---|"]
    for path, tp, default, text in schema_doc(cls):
        d = default if default else "(mapping)"
        tp = tp.replace(" | ", " or ")
        text = text.replace("|", "\\|")    # a pipe in the prose would end the table cell
        lines.append(f"| `{path}` | {tp} | `{d}` | {text} |".replace("`(mapping)`", ""))
    return "\n".join(lines) + "\n"
