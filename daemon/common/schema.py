"""The typed-TOML machinery under config.toml: durations, value checks, and the conversion of a
TOML table into a frozen dataclass with one-line errors. Stdlib only."""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal


class ConfigError(Exception):
    """One line a person can act on: `FILE: [section] key must be ... (got ...)`."""


class Duration(float):
    """Seconds, written in config as a string with a unit: "500ms", "90s", "15m", "2h", "35d"."""

    UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    _PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d|w)")  # ASCII digits: "１０s" is not ten seconds
    _WHOLE = re.compile(r"\s*(?:[0-9]+(?:\.[0-9]+)?\s*(?:ms|s|m|h|d|w)\s*)+")
    MAX_S = 3650 * 86400.0   # ten years: past that a number is a typo, and datetime arithmetic overflows
    MIN_PERIOD_S = 0.1       # a job period below this would busy-loop the daemon

    @classmethod
    def parse(cls, text: str) -> "Duration":
        parts = cls._PART.findall(text)
        if not cls._WHOLE.fullmatch(text):  # "1 5m" once read as 15m
            raise ValueError(f"must be a duration like \"90s\", \"15m\", \"2h\" or \"35d\" (got {text!r})")
        seconds = sum(float(n) * cls.UNITS[u] for n, u in parts)
        if not math.isfinite(seconds) or seconds > cls.MAX_S:
            raise ValueError(f"must be at most 3650d (got {text!r})")
        return cls(seconds)


PERIOD = re.compile(r"(interval|every|poll|refresh)$")


def _check(predicate, message: str) -> dict:
    return {"check": (predicate, message)}


POSITIVE = _check(lambda v: v > 0, "must be > 0")
NON_NEGATIVE = _check(lambda v: v >= 0, "must be >= 0")
FRACTION = _check(lambda v: 0 <= v <= 1, "must be between 0 and 1")
PERCENT = _check(lambda v: 0 <= v <= 100, "must be between 0 and 100")


def between(low: float, high: float) -> dict:
    """A bound past which a number is a typo that would cost hours or memory, not a choice."""
    return _check(lambda v: low <= v <= high, f"must be between {low:g} and {high:g}")


def _describe(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def _type_name(tp: Any) -> str:
    if tp is Duration:
        return "a duration string like \"90s\" or \"2h\""
    if tp is Path:
        return "a path string"
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(c) for c in typing.get_args(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, base_dir: Path) -> Any:
    """TOML value -> typed value, or ValueError with the reason."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # `int | Literal["auto"]`: the first that takes it
        for option in typing.get_args(tp):
            with contextlib.suppress(ValueError):
                return _convert(option, value, base_dir)
        raise ValueError("must be " + " or ".join(_type_name(o) for o in typing.get_args(tp)))
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ValueError("must be one of " + ", ".join(repr(c) for c in choices))
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"must be {_type_name(tp)}")
        return [_convert(typing.get_args(tp)[0], v, base_dir) for v in value]
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and abs(value) >= 2 ** 31:
            raise ValueError("is out of range")
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise ValueError("must be a finite number")
        value = float(value) if ok else value
    elif tp in (str, Path, Duration):
        ok = isinstance(value, str)
    else:  # pragma: no cover - schema bug
        raise TypeError(tp)
    if not ok:
        raise ValueError(f"must be {_type_name(tp)}")
    if tp is Duration:
        return Duration.parse(value)
    if tp is Path:
        if not value:
            raise ValueError("must not be empty")
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base_dir / path).resolve()
    return value


def _build(cls: type, table: dict, where: str, file: str, base_dir: Path) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in table:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{file}: {where}unknown key '{key}'{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name not in table:
            continue
        value, tp = table[name], hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{file}: [{name}] must be a table")
            sub = f"[{where.strip('[] ')}.{name}] " if where else f"[{name}] "
            kwargs[name] = _build(tp, value, sub, file, base_dir)
            continue
        try:
            converted = _convert(tp, value, base_dir)
        except ValueError as e:
            got = "" if "(got " in str(e) else f" (got {_describe(value)})"
            raise ConfigError(f"{file}: {where}{name} {e}{got}") from None
        if tp is Duration and PERIOD.search(name) and 0 < converted < Duration.MIN_PERIOD_S:
            raise ConfigError(f"{file}: {where}{name} must be at least 100ms: a shorter period would busy-loop "
                              f"the daemon (got {_describe(value)})")
        check = f.metadata.get("check")
        if check and not check[0](converted):
            raise ConfigError(f"{file}: {where}{name} {check[1]} (got {_describe(value)})")
        kwargs[name] = converted
    return cls(**kwargs)
