"""Typed config dataclasses: the field checks every detector config (model or criterion) runs."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as the annotation ``hint`` holds it (a list for a tuple, an int for a float); TypeError
    when it does not fit (a bool is never an int or a float)."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        for arg in typing.get_args(hint):
            try:
                return _coerce(value, arg)
            except TypeError:
                pass
    elif hint is type(None):
        if value is None:
            return value
    elif origin is tuple:
        if isinstance(value, list | tuple):
            args = typing.get_args(hint)
            items = args[:1] * len(value) if args[1:] == (Ellipsis,) else args
            if len(items) == len(value):
                return tuple(_coerce(item, arg) for item, arg in zip(value, items, strict=True))
    elif not isinstance(value, bool) or hint is bool:
        if hint is float and isinstance(value, int | float):
            return float(value)
        if isinstance(value, hint):
            return value
    raise TypeError(hint)


def check_field_types(cfg: Any) -> None:
    """Check every field of the frozen dataclass ``cfg`` against its annotation, in place: lists become
    tuples where a tuple is annotated, ints floats where a float is.

    Raises:
        ValueError: the first field whose value does not fit, e.g. ``"bev_h must be int, got None"``.
    """
    hints = typing.get_type_hints(type(cfg))
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        try:
            object.__setattr__(cfg, field.name, _coerce(value, hints[field.name]))
        except TypeError:
            raise ValueError(f"{field.name} must be {field.type}, got {value!r}") from None


def check_positive(cfg: Any, names: tuple[str, ...]) -> None:
    """ValueError naming the first of the int fields ``names`` of ``cfg`` that is below 1."""
    for name in names:
        value = getattr(cfg, name)
        if value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def make_config(schema: type, what: str, values: dict[str, Any]) -> Any:
    """``schema(**values)``, with a ValueError naming the keys ``schema`` does not have (``what``: the
    config's name in the message, e.g. ``"DETR overrides"``)."""
    fields = {f.name for f in dataclasses.fields(schema)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; valid ones are {sorted(fields)}")
    return schema(**values)
