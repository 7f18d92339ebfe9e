"""One YAML loader for every YAML ccbuild reads (recipes, ``--set`` values, TDX profiles,
firmware descriptors, lock updates).

YAML from others is hostile, so the loader is stricter than ``yaml.safe_load``:
- aliases (``*name``) are refused: an alias bomb ("billion laughs") expands exponentially, and no
  ccbuild file needs them (merge keys ``<<: *x`` included);
- nesting is capped at :data:`MAX_DEPTH` levels (deeper documents would exhaust the recursion);
- integers are capped at :data:`MAX_INT_DIGITS` digits (no value ccbuild reads is longer than a
  64-bit address; Python refuses to parse more than 4300 digits anyway);
- strings must be valid Unicode (a ``"\\ud800"`` escape gives a lone surrogate that no file or
  command line can hold);
- a key given twice in one mapping is an error (a reviewer would read the first, YAML keeps the last);
- a stream with more than one document is an error.
Errors are one line: ``<source>: not valid YAML at line L column C: <problem>``.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from builder.schema import SchemaError

MAX_DEPTH = 64
MAX_INT_DIGITS = 64


class YamlError(SchemaError):
    """A YAML syntax or safety error: ``<source>: not valid YAML at line L column C: <problem>``."""


def _at(mark) -> str:
    return (f"not valid YAML at line {mark.line + 1} column {mark.column + 1}: " if mark is not None
            else "not valid YAML: ")


class _Loader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            ev = self.peek_event()
            raise ComposerError(None, None, f"YAML aliases (*{ev.anchor}) are not allowed",
                                ev.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node):
        digits = sum(ch.isalnum() for ch in node.value)
        if digits > MAX_INT_DIGITS:
            raise ConstructorError(None, None, f"integer with {digits} digits (at most "
                                   f"{MAX_INT_DIGITS})", node.start_mark)
        return super().construct_yaml_int(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None and key in seen:
                    raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_scalar(self, node):
        value = super().construct_scalar(node)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ConstructorError(None, None, "string is not valid Unicode (lone surrogate "
                                       f"U+{ord(value[e.start]):04X})", node.start_mark) from None
        return value


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def load_yaml(text: str | bytes, source: str, error: type[SchemaError] = YamlError) -> Any:
    """Parse one YAML document from hostile text; errors are ``error`` (a :class:`SchemaError`
    subclass, :class:`YamlError` by default) naming ``source`` and the line and column."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(source, "", f"not UTF-8 (invalid byte 0x{text[e.start]:02x} at offset "
                            f"{e.start})") from None
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as e:
        raise error(source, "", f"unacceptable character U+{e.character:04X} at character "
                        f"{e.position}") from None
    try:
        doc = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "invalid YAML"
        if e.context and e.problem and "expected a single document" in e.context:
            problem = "more than one YAML document"
        raise error(source, "", _at(mark) + problem) from None
    except yaml.reader.ReaderError as e:
        raise error(source, "", f"unacceptable character U+{e.character:04X} at character "
                        f"{e.position}") from None
    except RecursionError:
        raise error(source, "", f"nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()
    return doc
