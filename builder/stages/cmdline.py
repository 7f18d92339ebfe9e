"""Kernel command line stage: render the recipe's jinja2 template into the exact string that is
measured (SEV hashes table: UTF-8 + NUL; TDX RTMR2: UTF-16LE LoadOptions). Runs of whitespace are
collapsed and the ends stripped, so what the template's layout adds never changes a measurement.
``cmdline.txt`` holds that string with no trailing newline."""

from __future__ import annotations

import jinja2

from builder.errors import CCBuildError
from builder.recipe import Cmdline


def render_cmdline(c: Cmdline, variables: dict[str, str], where: str = "cmdline.template") -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False,
                             keep_trailing_newline=False)
    try:
        tmpl = env.from_string(c.template)
        text = tmpl.render(kernel_params=c.kernel_params, runtime_params=c.runtime_params,
                           **variables)
    except jinja2.UndefinedError as e:
        raise CCBuildError(f"undefined template variable ({e.message})", where,
                           f"known: kernel_params, runtime_params, {', '.join(sorted(variables))}"
                           ) from None
    except jinja2.TemplateError as e:
        raise CCBuildError(f"bad template ({e})", where) from None
    out = " ".join(text.split())
    if any(ord(ch) < 0x20 for ch in out):
        raise CCBuildError("control characters in the command line", where)
    if len(out.encode()) > 4095:
        raise CCBuildError(f"command line too long ({len(out.encode())} bytes, limit 4095)", where)
    return out
