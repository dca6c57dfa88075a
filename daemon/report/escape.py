"""Values from files as HTML text: escaped (html.escape, quotes too) and cut to a bounded
length, so a hostile prompt or reason shows as text, never as markup; numbers as "unknown"
when they are not finite, sane numbers."""
from __future__ import annotations

import html
from typing import Any

from .values import num, text


def e(value: Any, limit: int = 400) -> str:
    """A value from a file as HTML text: escaped, and cut to `limit` characters."""
    return html.escape(text(value, limit), quote=True)


def fmt(value: Any, spec: str = ".3g", unit: str = "") -> str:
    v = num(value)
    return "unknown" if v is None else f"{v:{spec}}{unit}"
