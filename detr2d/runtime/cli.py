"""What the tools (train, test, predict, export) share: the config argument (a config file, or for test,
predict and export a checkpoint that carries its config), one override syntax (trailing ``key=value``
items with dotted keys), ``--print-config``, the config loading (the model section expanded to the
task's schema, see :func:`load_task_config`) and one-line config errors."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from configs import Config, ConfigError, apply_overrides, check_values, load_config, upgrade_model_keys

from .checkpoint import load_torch_file
from .evaluate import INFERENCE_MODES
from .task import Task
from .tasks import build_task, task_class

OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*=")
#: Suffixes of checkpoint files: such a first positional is a checkpoint, anything else a config file.
CHECKPOINT_SUFFIXES = (".pth", ".pt")


def parser_with_config(doc: str | None, checkpoint_first: bool = False) -> argparse.ArgumentParser:
    """An argument parser with the ``config`` argument and ``--print-config``. With ``checkpoint_first``
    the ``config`` argument may instead be a checkpoint (``.pth`` / ``.pt``) carrying its config (see
    :func:`take_checkpoint`)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = "config file (.py), e.g. configs/detr2d/deformable_detr.py"
    if checkpoint_first:
        what += ", or a checkpoint of ours (.pth/.pt) alone: it carries its config"
    parser.add_argument("config", help=what)
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config (overrides applied) and exit"
    )
    return parser


def add_inference_mode(parser: argparse.ArgumentParser) -> None:
    """``--inference eager|fast|compile`` (see :data:`detr2d.runtime.evaluate.INFERENCE_MODES`)."""
    parser.add_argument(
        "--inference",
        choices=INFERENCE_MODES,
        default="eager",
        help="eager: the model as trained; fast: batch norm folded, channels-last, native ops, "
        "prepacked linear layers, large CPU buffers from an arena; compile: fast under torch.compile "
        "(default: %(default)s)",
    )


def split_overrides(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(paths, overrides)`` of positional items: an item that names an existing file or folder is a path,
    else a ``key=value`` item (dotted key) is an override, else it is a path (reported as missing later)."""
    paths, overrides = [], []
    for item in items:
        if not Path(item).exists() and OVERRIDE.match(item):
            overrides.append(item)
        else:
            paths.append(item)
    return paths, overrides


def is_checkpoint(path: str) -> bool:
    """Whether a first positional names a checkpoint (by its suffix) rather than a config file."""
    return Path(path).suffix in CHECKPOINT_SUFFIXES


def take_checkpoint(
    parser: argparse.ArgumentParser, args: argparse.Namespace, paths: Sequence[str], required: bool
) -> tuple[str | None, list[str]]:
    """``(checkpoint, the other paths)``: a checkpoint given first (``args.config``, then set to None: the
    config comes from the checkpoint), else the first of ``paths`` (``required``: there must be one)."""
    if is_checkpoint(args.config):
        checkpoint, args.config = args.config, None
        return checkpoint, list(paths)
    if not paths:
        if required:
            parser.error(f"expected a checkpoint after the config file {args.config}")
        return None, []
    return paths[0], list(paths[1:])


def split_checkpoint(
    parser: argparse.ArgumentParser, args: argparse.Namespace, items: Sequence[str], required: bool
) -> tuple[str | None, list[str]]:
    """``(checkpoint, overrides)`` of ``CONFIG [CKPT] [key=value ...]`` or ``CKPT [key=value ...]``: a
    ``key=value`` item (dotted key) is an override, never the checkpoint; the one other item (if any;
    ``required``: exactly one) is the checkpoint (see :func:`take_checkpoint`)."""
    overrides = [item for item in items if OVERRIDE.match(item)]
    paths = [item for item in items if not OVERRIDE.match(item)]
    checkpoint, extra = take_checkpoint(parser, args, paths, required)
    if extra:
        got = [checkpoint, *extra]
        parser.error(f"expected at most one checkpoint, got {got} (a config file goes first)")
    return checkpoint, overrides


def model_defaults(task: str, name: str, **values: Any) -> Config | None:
    """The whole model section of variant ``name`` of ``task`` with ``values`` on top, validated by the
    task class's ``model_defaults`` (imported now, not when the runtime is); None if it has none."""
    defaults = getattr(task_class(task), "model_defaults", None)
    return None if defaults is None else defaults(name, **values)


def load_task_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """:func:`configs.load_config` with the model section expanded to the task's whole schema (every model
    field shown and overridable, unknown model keys named with their file, values validated)."""
    return load_config(path, overrides, model_defaults)


def _with_model_schema(config: Config, source: str | Path) -> Config:
    """``config`` with its model section as the task's whole schema (fields added since the config was
    written take their defaults), validated; a bad model section is a ConfigError naming ``source``."""
    try:
        model = model_defaults(config["task"], **config["model"])
    except ValueError as error:
        raise ConfigError(f"{source}: model.{error}") from error
    return config if model is None else {**config, "model": json.loads(json.dumps(model))}


def _carried_config(path: str | Path) -> Config | None:
    """The config a checkpoint of ours carries (model keys renamed since upgraded, the model section
    expanded to today's schema); None for a file without one (a released file, a bare state_dict)."""
    checkpoint = load_torch_file(path)
    config = checkpoint.get("config") if isinstance(checkpoint, Mapping) else None
    if not (isinstance(config, Mapping) and "task" in config and "name" in config.get("model", {})):
        return None
    config = json.loads(json.dumps(config))  # a plain copy (tuples as lists)
    config["model"] = upgrade_model_keys(config["model"])
    return _with_model_schema(config, path)


def checkpoint_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """The config a checkpoint of ours carries, with ``overrides`` applied and checked as for a file.

    Raises:
        ConfigError: the checkpoint carries no config (a released file or a bare state_dict: those need
            their config file), or an override is wrong.
        FileNotFoundError, ValueError: the checkpoint is missing or unreadable (named).
    """
    config = _carried_config(path)
    if config is None:
        raise ConfigError(
            f"checkpoint {path} carries no config (a released file or a bare state_dict): pass its config "
            f"file before it (CONFIG {path})"
        )
    config = apply_overrides(config, overrides)
    check_values(config)
    return _with_model_schema(config, path)


def trained_with(config: Config, checkpoint: str | Path) -> str:
    """The model a checkpoint of ours was trained with, as it differs from ``config``'s model: its name
    and each differing field, ``key=checkpoint's value (config: value)``; ``""`` when the checkpoint
    carries no config or the models' configs are equal."""
    carried = _carried_config(checkpoint)
    if carried is None:
        return ""
    mine, theirs = config["model"], carried["model"]
    differing = [
        f"{key}={theirs.get(key)!r} (config: {mine.get(key)!r})"
        for key in sorted({*mine, *theirs} - {"name"})
        if mine.get(key) != theirs.get(key)
    ]
    if theirs.get("name") == mine.get("name") and not differing:
        return ""
    return f"model {theirs.get('name')!r}" + (f" with {', '.join(differing)}" if differing else "")


def check_checkpoint_fits(task: Task, config_path: str | Path, checkpoint: str | Path) -> None:
    """Raise ``ValueError`` when a checkpoint of ours does not fit the model of the config file given with
    it, naming the model the checkpoint was trained with (:func:`trained_with`) before the loader's key
    counts. The weights are loaded into a model of ``task`` only when the models' configs differ; released
    files carry no config and are left to the loader (which names the keys)."""
    model = trained_with(task.config, checkpoint)
    if not model:
        return
    try:
        task.load_weights(task.build_model(), checkpoint)
    except ValueError as error:
        raise ValueError(
            f"checkpoint {checkpoint} does not fit the model of {config_path} "
            f"({task.config['model'].get('name')!r}): it was trained with {model}; pass the checkpoint "
            f"without the config file to use the config it carries. The loader says: {error}"
        ) from error


def load_task(args: argparse.Namespace, overrides: Sequence[str], checkpoint: str | None = None) -> Task:
    """The task of ``args.config`` (or, when it is None, of the config ``checkpoint`` carries) with
    ``overrides``; with ``--print-config`` print it and exit. With both a config and a checkpoint of ours,
    a checkpoint that does not fit the config's model is refused naming the model it was trained with.
    A config error or such a mismatch is printed as one line (``error: ...``, exit status 2)."""
    try:
        if args.config is None:
            config = checkpoint_config(checkpoint, overrides)
        else:
            config = load_task_config(args.config, overrides)
        if args.print_config:
            print(json.dumps(config, indent=2))
            sys.exit(0)
        task = build_task(config)
        if args.config is not None and checkpoint is not None:
            check_checkpoint_fits(task, args.config, checkpoint)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    return task
