"""Where a value went wrong, as a user writes it: pydantic's error location
`("applications", 0, "args", "item_ids", 2)` becomes
`applications[0].args.item_ids[2]`. The one place that spells locations, for
request bodies (422 `fields`), graph specs and Serve configs alike."""
from __future__ import annotations

from typing import Sequence

from pydantic import ValidationError


def field_path(loc: Sequence[str | int], root: str = "") -> str:
    """("item_ids", 2) -> "item_ids[2]"; under `root` "args": "args.item_ids[2]"."""
    path = root
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def reasons(error: ValidationError, root: str = "") -> list[tuple[str, str]]:
    """(path, reason) of every error; a validator's own message without
    pydantic's "Value error, " prefix. A validator that raised an error with
    `problems` (each with its own `path` and `message`, as a graph's
    whole-graph check does) gives one entry per problem, under its location."""
    found = []
    for e in error.errors():
        where = field_path(e["loc"], root)
        problems = getattr((e.get("ctx") or {}).get("error"), "problems", None)
        if problems is not None:
            found += [(f"{where}.{p.path}" if where else p.path, p.message) for p in problems]
        else:
            found.append((where, e["msg"].removeprefix("Value error, ")))
    return found
