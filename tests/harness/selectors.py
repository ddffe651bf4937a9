"""Label and field selectors as the Kubernetes API server reads them.

kmock 0.8 ignores `labelSelector` and `fieldSelector` on lists and watches;
the emulator filters with these. Written by hand because no library here
parses selector strings (the kubernetes client only sends them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# One requirement: `key in (a,b)` holds a comma inside its parentheses.
_REQUIREMENT = re.compile(r"\s*([^,(]+(?:\([^)]*\))?)\s*(?:,|$)")
_SET_FORM = re.compile(r"^(\S+)\s+(in|notin)\s+\(([^)]*)\)$")


@dataclass(frozen=True)
class Requirement:
    """One clause of a label selector."""

    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether a label set satisfies this clause."""
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator == "exists":
            return present
        if self.operator == "!exists":
            return not present
        if self.operator in ("=", "in"):
            return present and value in self.values
        return not present or value not in self.values  # "!=", "notin"


def parse_label_selector(text: str | None) -> list[Requirement]:
    """Parse `a=b,c!=d,e in (f,g),!h` into requirements; empty or None selects all."""
    requirements = []
    for match in _REQUIREMENT.finditer(text or ""):
        clause = match.group(1).strip()
        if not clause:
            continue
        set_form = _SET_FORM.match(clause)
        if set_form:
            values = tuple(v.strip() for v in set_form.group(3).split(",") if v.strip())
            requirements.append(Requirement(set_form.group(1), set_form.group(2), values))
        elif "!=" in clause:
            key, value = clause.split("!=", 1)
            requirements.append(Requirement(key.strip(), "!=", (value.strip(),)))
        elif "=" in clause:
            key, value = re.split(r"==?", clause, maxsplit=1)
            requirements.append(Requirement(key.strip(), "=", (value.strip(),)))
        elif clause.startswith("!"):
            requirements.append(Requirement(clause[1:].strip(), "!exists"))
        else:
            requirements.append(Requirement(clause, "exists"))
    return requirements


def labels_match(selector: str | None | list[Requirement], obj: dict[str, Any]) -> bool:
    """Whether an object's labels satisfy a label selector (a string, or parsed requirements)."""
    if not selector:
        return True
    requirements = parse_label_selector(selector) if isinstance(selector, str) else selector
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(req.matches(labels) for req in requirements)


def _field_value(obj: dict[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def fields_match(selector: str | None, obj: dict[str, Any]) -> bool:
    """Whether an object satisfies a field selector such as `metadata.name=x,status.phase!=Failed`."""
    for clause in (selector or "").split(","):
        clause = clause.strip()
        if not clause:
            continue
        if "!=" in clause:
            path, value = clause.split("!=", 1)
            if _field_value(obj, path.strip()) == value.strip():
                return False
        else:
            path, value = re.split(r"==?", clause, maxsplit=1)
            if _field_value(obj, path.strip()) != value.strip():
                return False
    return True
