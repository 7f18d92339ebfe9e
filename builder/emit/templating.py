"""jinja2 rendering of the templates beside the emitters (builder/emit/templates/*.j2)."""

from __future__ import annotations

import jinja2

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("builder.emit", "templates"),
                          undefined=jinja2.StrictUndefined, autoescape=False,
                          keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)


def render(template: str, **values) -> str:
    return _ENV.get_template(template).render(**values)
