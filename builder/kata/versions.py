"""The Kata Containers releases the model was read from (tags of github.com/kata-containers/
kata-containers and the commits they point to). A version outside this table is refused: the
runtime's command line changes between releases, so a model of one release says nothing exact
about another."""

from __future__ import annotations

import re
from dataclasses import dataclass

from builder.errors import CCBuildError


@dataclass(frozen=True)
class KataRelease:
    tag: str
    commit: str

    @property
    def key(self) -> tuple[int, int, int]:
        major, minor, patch = (int(x) for x in self.tag.split("."))
        return major, minor, patch

    def at_least(self, major: int, minor: int) -> bool:
        return self.key[:2] >= (major, minor)


# Tag -> commit, as `git rev-parse TAG^{commit}` answers in a mirror of kata-containers/kata-containers.
# No 3.31.x/3.32.x patch releases exist in the mirror the model was read from.
KATA_RELEASES: dict[str, KataRelease] = {r.tag: r for r in (
    KataRelease("3.31.0", "cec98e0d976bbf4cae016298ffea269f57294264"),
    KataRelease("3.32.0", "337b6002681479fb6a605ca8a7a1138e81b6098c"),
    KataRelease("4.0.0", "cf82bb35c80320178bf7570252fe75d6fb263209"),
    KataRelease("4.1.0", "ddcb1ad8d23cbb4323f86c209f132b89592902df"),
)}

DEFAULT_VERSION = "4.1.0"

_VERSION = re.compile(r"v?(\d{1,3})\.(\d{1,3})\.(\d{1,3})")


def resolve_release(text: str, where: str = "--kata-version") -> KataRelease:
    """The modelled release for a version string ``X.Y.Z`` (a leading ``v`` is allowed)."""
    supported = ", ".join(KATA_RELEASES)
    m = _VERSION.fullmatch(text.strip()) if isinstance(text, str) else None
    if not m:
        raise CCBuildError(f"Kata version {text!r} is not a version X.Y.Z", where,
                           f"modelled versions: {supported}")
    tag = ".".join(str(int(g)) for g in m.groups())
    rel = KATA_RELEASES.get(tag)
    if rel is None:
        raise CCBuildError(f"Kata version {tag} is not modelled", where,
                           f"modelled versions: {supported}")
    return rel
