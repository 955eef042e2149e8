"""What ``tools/train.py``, ``tools/test.py`` and ``tools/predict.py`` share: the config argument, one
override syntax (trailing ``key=value`` items with dotted keys), ``--print-config`` and the task."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from configs import Config, load_config

from .evaluate import INFERENCE_MODES
from .task import Task
from .tasks import build_task

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


def load_task(args: argparse.Namespace, overrides: Sequence[str]) -> Task:
    """The task of ``args.config`` with ``overrides``; with ``--print-config`` print it and exit."""
    config: Config = load_config(args.config, overrides)
    if args.print_config:
        print(json.dumps(config, indent=2))
        sys.exit(0)
    return build_task(config)
