"""Generated references stay in step with the schemas they are generated from."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("doc,module,render", [
    ("out-schema.md", "builder.outschema", "reference"),
])
def test_generated_reference_is_in_step(doc, module, render):
    import importlib
    text = getattr(importlib.import_module(module), render)()
    assert (REPO / "docs" / doc).read_text() == text, f"run: python -m {module} > docs/{doc}"
