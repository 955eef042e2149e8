"""Evaluate a checkpoint: ``python tools/test.py CONFIG CKPT [--out DIR] [key=value ...]``.

CKPT is a training checkpoint of ours, an official release file (``{'model': state_dict}``) or a bare
state_dict. Prints the standard COCO AP/AR table; ``--out DIR`` writes ``DIR/metrics.json`` and the
detections as a COCO results JSON. BEV configs print the official nuScenes summary (mAP, TP errors,
NDS; sequential test with the previous BEV carried within each scene) and write ``metrics.json`` and
the devkit's files. Works under ``torchrun`` (detections gathered from every process).
The evaluation is chosen by the config's ``task``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import load_config  # noqa: E402
from detr2d.engine.distributed import init_distributed, shutdown_distributed  # noqa: E402
from detr2d.engine.logs import setup_logging  # noqa: E402

# task → "module:function(config, checkpoint, out_dir)" returning an object with a printable ``table``
TASKS = {
    "coco_detection": "detr2d.engine.tester:run_coco_test",
    "nuscenes_detection": "bev.engine.tester:run_nuscenes_test",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    parser.add_argument("--out", help="folder for metrics.json and the detections JSON")
    args = parser.parse_intermixed_args()
    config = load_config(args.config, args.overrides)
    if config["task"] not in TASKS:
        parser.error(f"config task {config['task']!r} has no evaluation; known: {sorted(TASKS)}")
    module, function = TASKS[config["task"]].split(":")
    info = init_distributed()
    setup_logging(None, info.is_main)
    try:
        result = getattr(importlib.import_module(module), function)(config, args.checkpoint, args.out)
        if info.is_main:
            print(result.table)
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
