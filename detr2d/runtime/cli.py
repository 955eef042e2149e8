"""What the tools (train, test, predict, export) share: the config argument, one override syntax
(trailing ``key=value`` items with dotted keys), ``--print-config``, the config loading (the model
section expanded to the task's schema, see :func:`load_task_config`) and one-line config errors."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from configs import Config, ConfigError, load_config

from .evaluate import INFERENCE_MODES
from .task import Task
from .tasks import build_task, task_class

OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*=")


def parser_with_config(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the ``config`` argument and ``--print-config``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="config file, e.g. configs/detr2d/deformable_detr.py")
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


def split_checkpoint(
    parser: argparse.ArgumentParser, items: Sequence[str], required: bool
) -> tuple[str | None, list[str]]:
    """``(checkpoint, overrides)`` of positional items: a ``key=value`` item (dotted key) is an override,
    never the checkpoint; the one other item (if any; ``required``: exactly one) is the checkpoint."""
    overrides = [item for item in items if OVERRIDE.match(item)]
    paths = [item for item in items if not OVERRIDE.match(item)]
    if len(paths) > 1 or (required and not paths):
        parser.error(f"expected {'one' if required else 'at most one'} checkpoint, got {paths}")
    return (paths[0] if paths else None), overrides


def model_defaults(task: str, name: str, **values: Any) -> Config | None:
    """The whole model section of variant ``name`` of ``task`` with ``values`` on top, validated by the
    task class's ``model_defaults`` (imported now, not when the runtime is); None if it has none."""
    defaults = getattr(task_class(task), "model_defaults", None)
    return None if defaults is None else defaults(name, **values)


def load_task_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """:func:`configs.load_config` with the model section expanded to the task's whole schema (every model
    field shown and overridable, unknown model keys named with their file, values validated)."""
    return load_config(path, overrides, model_defaults)


def load_task(args: argparse.Namespace, overrides: Sequence[str]) -> Task:
    """The task of ``args.config`` with ``overrides``; with ``--print-config`` print it and exit. A config
    error is printed as one line (``error: ...``, exit status 2)."""
    try:
        config: Config = load_task_config(args.config, overrides)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if args.print_config:
        print(json.dumps(config, indent=2))
        sys.exit(0)
    return build_task(config)
