"""Experiment configs: plain Python files, one per experiment, loaded into nested dicts.

A config file assigns its settings at module level (``model = dict(...)``, ``optim = dict(...)``, ...).
Names starting with ``_`` are private, except ``_base_``: a path (or list of paths), relative to the
file, of configs it inherits. Inheritance merges dicts key by key (recursively) and replaces every
other value, so a child file lists only what differs from its base.

Command-line overrides are ``key=value`` strings with dotted keys (``optim.lr=1e-4``,
``model.backbone=resnet18``, ``augment.scales=[96,128]``); values are Python literals, anything else
is taken as a string. An override must name an existing key, so a typo is an error, not a silent
no-op.
"""

from __future__ import annotations

import ast
import copy
import runpy
from collections.abc import Iterable
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Any

Config = dict[str, Any]


def merge(base: Config, child: Config) -> Config:
    """``child`` over ``base``: nested dicts are merged key by key, other values replaced (new dict)."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_file(path: Path) -> Config:
    """Settings of one config file, with its ``_base_`` chain resolved."""
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        namespace = runpy.run_path(str(path))
    except Exception as error:  # noqa: BLE001 (a config file can raise anything; name the file)
        raise ValueError(
            f"config file {path} failed to run as Python: {type(error).__name__}: {error}"
        ) from error
    settings = {
        key: value
        for key, value in namespace.items()
        if not key.startswith("_") and not isinstance(value, ModuleType | FunctionType | type)
    }
    bases = namespace.get("_base_", [])
    config: Config = {}
    for base in [bases] if isinstance(bases, str) else bases:
        config = merge(config, _read_file((path.parent / base).resolve()))
    return merge(config, settings)


_WORDS = {"true": True, "false": False, "none": None, "null": None}


def _parse_value(text: str) -> Any:
    """A Python literal (``1e-3``, ``[96, 128]``, ``True``), true/false/none in any case, else the string."""
    if text.lower() in _WORDS:
        return _WORDS[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: Config, overrides: Iterable[str]) -> Config:
    """Apply ``key=value`` overrides (dotted keys) to a copy of ``config``.

    Values are Python literals (``true``/``false``/``none`` also in lower case); anything else is a
    string. Each value must fit the type of the key's value in the config (:func:`_typed_like`), so
    ``progress=flase`` or ``train.batch_size=8.5`` is an error rather than a silent wrong setting.

    Raises:
        ValueError: an override is not of the form ``key=value``, or its value has the wrong type.
        KeyError: a key (or one of its parents) does not exist in the config.
    """
    config = copy.deepcopy(config)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"config override must be key=value, got {item!r}")
        node = config
        *parents, leaf = key.strip().split(".")
        for depth, part in enumerate(parents):
            if not isinstance(node.get(part), dict):
                raise KeyError(f"config override {item!r}: no section {'.'.join(parents[: depth + 1])!r}")
            node = node[part]
        if leaf not in node:
            raise KeyError(f"config override {item!r}: unknown key {key!r}; known here: {sorted(node)}")
        node[leaf] = _typed_like(node[leaf], _parse_value(text.strip()), text.strip(), item)
    return config


def _typed_like(default: Any, value: Any, text: str, item: str) -> Any:
    """``value`` checked against the type of the key's current value ``default``.

    bool takes only a bool; int only an int (``8.5`` is refused); float an int or a float (as float);
    str any text (``data.root=123`` is the string "123"); list/tuple a list or tuple; dict a dict. A key
    whose value is None takes anything (its type is not known), and any key takes None.
    """
    if default is None or value is None:
        return value
    expected: tuple[type, ...]
    if isinstance(default, bool):
        expected = (bool,)
    elif isinstance(default, int):
        expected = (int,)
    elif isinstance(default, float):
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        expected = (float,)
    elif isinstance(default, str):
        return text
    elif isinstance(default, list | tuple):
        expected = (list, tuple)
    elif isinstance(default, dict):
        expected = (dict,)
    else:
        return value
    if not isinstance(value, expected) or (expected == (int,) and isinstance(value, bool)):
        kind = " or ".join(t.__name__ for t in expected)
        hint = "; use true or false" if expected == (bool,) else ""
        raise ValueError(f"config override {item!r}: the key holds a {kind}, got {value!r}{hint}")
    return list(value) if isinstance(value, tuple) else value


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Load a config file, resolve its bases and apply command-line overrides.

    Returns:
        The settings as nested dicts (plain Python values: JSON-serializable when the file is).
    """
    return apply_overrides(_read_file(Path(path).resolve()), overrides)
