"""Values read from files other processes write (or a person edits): a number is a finite, sane
number or unknown (None), an object is a dict or empty, a string is cut to a bounded length."""
from __future__ import annotations

import math
from typing import Any

TEXT_LIMIT = 400            # characters of any one string shown (a prompt, a reason)
BIG = 1e12                  # a figure past this is not one a run produces: unknown


def num(value: Any) -> float | None:
    """A finite, sane number, else None (unknown): JSON may hold strings, booleans, 1e308."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and abs(value) < BIG else None


def obj(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def seq(value: Any) -> list:
    return value if isinstance(value, list) else []


def text(value: Any, limit: int = TEXT_LIMIT) -> str:
    """A value as bounded, encodable text: JSON can hold a lone surrogate ("\\ud800"), which no
    UTF-8 page or terminal can carry (it raised through the page's encoding): shown as "?"."""
    s = value if isinstance(value, str) else "" if value is None else str(value)
    s = s if len(s) <= limit else s[:limit] + "..."
    return s.encode("utf-8", "replace").decode("utf-8")
