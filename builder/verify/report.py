"""The verdict every check of ``ccbuild verify`` reports in: :class:`Check` rows (item, status,
expected, actual, detail) grouped into a :class:`Verdict` that fails when any row fails and prints
as a table (or JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field


OK, FAIL, SKIP, INFO = "ok", "FAIL", "skip", "info"


@dataclass
class Check:
    item: str
    status: str                  # ok | FAIL | skip | info
    detail: str = ""
    expected: str | None = None
    actual: str | None = None

    def to_json(self) -> dict:
        d = {"item": self.item, "status": self.status, "detail": self.detail}
        if self.expected is not None or self.actual is not None:
            d.update(expected=self.expected, actual=self.actual)
        return d


@dataclass
class Verdict:
    title: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.status == FAIL for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    def add(self, *checks: Check) -> None:
        self.checks.extend(checks)

    def to_json(self) -> dict:
        return {"title": self.title, "ok": self.ok,
                "counts": {s: sum(c.status == s for c in self.checks)
                           for s in (OK, FAIL, SKIP, INFO)},
                "checks": [c.to_json() for c in self.checks]}

    def text(self, all_rows: bool = True) -> str:
        rows = self.checks if all_rows else [c for c in self.checks if c.status != OK]
        w = max((len(c.item) for c in rows), default=4)
        lines = [self.title]
        for c in rows:
            lines.append(f"  {c.status:<4}  {c.item:<{w}}  {c.detail}".rstrip())
            if c.status == FAIL and (c.expected is not None or c.actual is not None):
                lines.append(f"  {'':<4}  {'':<{w}}    expected {c.expected}")
                lines.append(f"  {'':<4}  {'':<{w}}    actual   {c.actual}")
        n = {s: sum(c.status == s for c in self.checks) for s in (OK, FAIL, SKIP)}
        verdict = "PASS" if self.ok else "FAIL"
        lines.append(f"{verdict}: {n[OK]} agree, {n[FAIL]} differ, {n[SKIP]} not checked")
        return "\n".join(lines)
