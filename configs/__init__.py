"""Experiment configs: plain Python files, one per experiment, loaded into nested dicts.

A config file assigns its settings at module level (``model = dict(...)``, ``optim = dict(...)``, ...).
Names starting with ``_`` are private, except ``_base_``: a path (or list of paths), relative to the
file, of configs it inherits. Inheritance merges dicts key by key (recursively) and replaces every
other value, so a child file lists only what differs from its base. A dict of a child file (a section or
any nested dict) that holds ``_delete_=True`` replaces its base's dict instead of merging into it (as in
mmcv configs; e.g. DETR's ``criterion`` drops Deformable DETR's focal-loss keys); ``_delete_`` must be a
bool, is dropped after merging, and belongs to config files only (an override's dict already replaces).

A child file may only set keys its base has: the root base files (``configs/detr2d/base.py``,
``configs/bev/base.py``) define the keys of every section but ``model``, and a misspelt key or section
in any file is an error naming the key and the file. Inside a section, a dict value (a settings group
such as ``data.img_norm``) is checked key by key where the base holds a dict; a None in the base
accepts anything. A replacing (``_delete_=True``) dict must sit under a key its base has; its own keys
are new, and the files that inherit it are checked against them.

The ``model`` section is a detector's: given ``model_defaults`` (the runtime passes its task classes'
:meth:`model_defaults`), :func:`load_config` expands it to the variant's whole schema (every field of
the model's config dataclass, the files' values on top), names the file of an unknown model key, and
validates the result with the dataclass.

Command-line overrides are ``key=value`` strings with dotted keys (``optim.lr=1e-4``,
``model.backbone=resnet18``, ``augment.scales=[96,128]``); values are Python literals, anything else
is taken as a string. An override must name an existing key and fit its value's type, and the common
settings must hold sensible values (:data:`VALUE_CHECKS`), so a typo or a bad value is a
:class:`ConfigError` naming the key, not a silent no-op or a traceback from deep inside.
"""

from __future__ import annotations

import ast
import copy
import runpy
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Any

Config = dict[str, Any]
#: ``(task, name, **values) -> whole model section``: the variant ``name``'s every field with ``values``
#: on top, validated (ValueError naming the field); None when the task has no schema.
ModelDefaults = Callable[..., Config | None]
MODEL = "model"
#: In a config file's dict: True replaces the base's dict instead of merging into it (then dropped).
DELETE = "_delete_"
#: Model keys renamed since checkpoints were written (old -> new); :func:`upgrade_model_keys` maps them.
RENAMED_MODEL_KEYS = {"op_backend": "backend"}  # old name -> new name, for older checkpoints


class ConfigError(ValueError):
    """A config file or override that is wrong; the message names the key, where it was written and what
    was expected (the tools print it as one line)."""


def _int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number_at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v >= low


POSITIVE = ("a positive int (>= 1)", _int_at_least(1))
COUNT = ("an int >= 0", _int_at_least(0))
NON_NEGATIVE = ("a number >= 0", _number_at_least(0.0))
#: Values of the common non-model settings: dotted key -> (what is expected, test); a key that a config
#: does not have is skipped. Model fields are checked by the detectors' config dataclasses.
VALUE_CHECKS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "train.batch_size": POSITIVE,
    "train.eval_batch_size": POSITIVE,
    "train.eval_every": COUNT,
    "train.keep_every": COUNT,
    "train.log_every": COUNT,
    "train.seed": COUNT,
    "train.amp": ("None, 'bf16' or 'fp16'", lambda v: v in (None, "bf16", "fp16")),
    "schedule.epochs": POSITIVE,
    "schedule.lr_drop": POSITIVE,
    "schedule.warmup_iters": COUNT,
    "optim.lr": ("a number > 0", lambda v: _number_at_least(0.0)(v) and v > 0),
    "optim.lr_backbone": NON_NEGATIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.clip_max_norm": NON_NEGATIVE,
    "data.image_size": (
        "a (W, H) pair of positive ints, e.g. [1600, 900]",
        lambda v: isinstance(v, list | tuple) and len(v) == 2 and all(map(_int_at_least(1), v)),
    ),
    "data.num_workers": COUNT,
    "data.num_history": COUNT,
    "data.on_bad_image": ("'raise' or 'skip'", lambda v: v in ("raise", "skip")),
    "data.cbgs": ("True or False", lambda v: isinstance(v, bool)),
    "augment.max_size": POSITIVE,
    "augment.eval_size": POSITIVE,
    "augment.flip_prob": ("a number in [0, 1]", lambda v: _number_at_least(0.0)(v) and v <= 1),
}


def merge(base: Config, child: Config) -> Config:
    """``child`` over ``base``: nested dicts are merged key by key, other values replaced (new dict). A
    child dict holding ``_delete_=True`` replaces the base's value instead; every ``_delete_`` is dropped."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if key == DELETE:
            continue
        if isinstance(value, dict):
            into = out.get(key) if value.get(DELETE) is not True else None
            out[key] = merge(into if isinstance(into, dict) else {}, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _delete_flags(settings: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every ``_delete_`` in ``settings`` and its nested dicts: (dotted key path, its value)."""
    for key, value in settings.items():
        if key == DELETE:
            yield prefix + key, value
        elif isinstance(value, dict):
            yield from _delete_flags(value, f"{prefix}{key}.")


def _read_file(path: Path, origins: dict[str, Path]) -> Config:
    """Settings of one config file, with its ``_base_`` chain resolved and checked; ``origins`` receives
    the file that last wrote each model key.

    Raises:
        ConfigError: the file fails to run, sets a key (outside ``model``) that its bases do not have, or
            a ``_delete_`` that is not a bool.
    """
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        namespace = runpy.run_path(str(path))
    except Exception as error:  # noqa: BLE001 (a config file can raise anything; name the file)
        raise ConfigError(
            f"config file {path} failed to run as Python: {type(error).__name__}: {error}"
        ) from error
    settings = {
        key: value
        for key, value in namespace.items()
        if not key.startswith("_") and not isinstance(value, ModuleType | FunctionType | type)
    }
    for key, flag in _delete_flags(settings):
        if not isinstance(flag, bool):
            raise ConfigError(f"{path}: {key} must be True or False, got {flag!r}")
    bases = namespace.get("_base_", [])
    config: Config = {}
    for base in [bases] if isinstance(bases, str) else bases:
        config = merge(config, _read_file((path.parent / base).resolve(), origins))
    if bases:
        _check_known(settings, config, path)
    if isinstance(settings.get(MODEL), dict):
        origins.update(dict.fromkeys(settings[MODEL].keys() - {DELETE}, path))
    return merge(config, settings)


def _check_known(child: Config, base: Config, path: Path, prefix: str = "") -> None:
    """ConfigError for the first key of ``child`` (written by ``path``) that ``base`` does not have; dicts
    are checked recursively where ``base`` holds a dict, except a replacing one (``_delete_=True``: its keys
    are new), and the model section is left to its schema."""
    for key, value in child.items():
        dotted = prefix + key
        if dotted == MODEL or key == DELETE:
            continue
        if key not in base:
            where = f"in {prefix[:-1]!r}" if prefix else "at the top level"
            raise ConfigError(f"{path}: unknown key {dotted!r}; known {where}: {sorted(base)}")
        if isinstance(value, dict) and isinstance(base[key], dict) and value.get(DELETE) is not True:
            _check_known(value, base[key], path, dotted + ".")


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists (the config is plain, JSON-like data)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def upgrade_model_keys(model: Mapping[str, Any]) -> Config:
    """A model section written before a key was renamed, with today's names (:data:`RENAMED_MODEL_KEYS`)."""
    return {RENAMED_MODEL_KEYS.get(key, key): value for key, value in model.items()}


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
        ConfigError: an override is not of the form ``key=value``, its key (or one of its parents) does
            not exist in the config, its value has the wrong type, or it holds a ``_delete_`` (a file's).
    """
    config = copy.deepcopy(config)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"config override must be key=value, got {item!r}")
        value = _parse_value(text.strip())
        if DELETE in key.strip().split(".") or (isinstance(value, dict) and any(_delete_flags(value))):
            raise ConfigError(
                f"config override {item!r}: {DELETE} is for config files only (an override's value "
                "replaces the key's whole value)"
            )
        node = config
        *parents, leaf = key.strip().split(".")
        for depth, part in enumerate(parents):
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"config override {item!r}: no section {'.'.join(parents[: depth + 1])!r}")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"config override {item!r}: unknown key {key!r}; known here: {sorted(node)}")
        node[leaf] = _typed_like(node[leaf], value, text.strip(), item)
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
        raise ConfigError(f"config override {item!r}: the key holds a {kind}, got {value!r}{hint}")
    return list(value) if isinstance(value, tuple) else value


def check_values(config: Config) -> None:
    """ConfigError for the first value of :data:`VALUE_CHECKS` in ``config`` that is not what it must be,
    e.g. ``train.batch_size must be a positive int (>= 1), got None``."""
    for key, (expected, ok) in VALUE_CHECKS.items():
        section, _, leaf = key.partition(".")
        node = config.get(section)
        if isinstance(node, dict) and leaf in node and not ok(node[leaf]):
            raise ConfigError(f"{key} must be {expected}, got {node[leaf]!r}")


def _model_section(
    config: Config, model_defaults: ModelDefaults, origins: dict[str, Path], path: Path
) -> Config | None:
    """The whole model section: the variant's schema with ``config``'s model values on top (None: the task
    has no schema). Raises ConfigError naming the file of an unknown key."""
    model = config[MODEL]
    if "name" not in model:
        raise ConfigError(f"{path}: the model section has no 'name' (the variant to build)")
    try:
        defaults = model_defaults(config["task"], model["name"])
    except ValueError as error:
        raise ConfigError(f"{origins.get('name', path)}: model.name / task: {error}") from error
    if defaults is None:
        return None
    for key in model:
        if key not in defaults:
            renamed = f" (renamed {RENAMED_MODEL_KEYS[key]!r})" if key in RENAMED_MODEL_KEYS else ""
            raise ConfigError(
                f"{origins.get(key, path)}: unknown key 'model.{key}'{renamed} for model {model['name']!r}; "
                f"known: {sorted(defaults)}"
            )
    return {**defaults, **model}


def load_config(
    path: str | Path, overrides: Iterable[str] = (), model_defaults: ModelDefaults | None = None
) -> Config:
    """Load a config file, resolve and check its bases, expand its model section and apply overrides.

    With ``model_defaults`` (and a ``task`` and ``model`` in the config), the model section becomes the
    variant's whole schema before the overrides apply (``task`` and ``model.name`` overrides first, so
    that they choose the schema), and the result is validated by it. Without, the model section is left
    as the files wrote it (the task's builder checks it).

    Returns:
        The settings as nested dicts (plain Python values: JSON-serializable when the file is).

    Raises:
        ConfigError: an unknown key in a file (named) or override, or a bad value (names the key).
        FileNotFoundError: a config file does not exist.
    """
    path = Path(path).resolve()
    origins: dict[str, Path] = {}
    config = _read_file(path, origins)
    overrides = list(overrides)
    first = [item for item in overrides if item.partition("=")[0].strip() in ("task", f"{MODEL}.name")]
    config = apply_overrides(config, first)
    schema = False
    if model_defaults is not None and "task" in config and isinstance(config.get(MODEL), dict):
        model = _model_section(config, model_defaults, origins, path)
        if model is not None:
            config[MODEL], schema = _plain(model), True
    config = apply_overrides(config, [item for item in overrides if item not in first])
    check_values(config)
    if schema:
        try:
            config[MODEL] = _plain(model_defaults(config["task"], **config[MODEL]))
        except ValueError as error:
            raise ConfigError(f"{MODEL}.{error}") from error
    return config
