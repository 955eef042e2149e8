"""Detect objects in images: ``python tools/predict.py CONFIG CKPT IMAGE_OR_FOLDER... [--out DIR]``.

Writes DIR/<image>.png with boxes, class names and scores drawn, and DIR/predictions.json. For a BEV
config the inputs are nuScenes infos files: DIR/<token>_bev.png and DIR/<token>_cameras.jpg per sample.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import load_config  # noqa: E402
from detr2d.engine.logs import setup_logging  # noqa: E402

# task → "module:function(config, checkpoint, inputs, out_dir, score_threshold, limit)"
TASKS = {
    "coco_detection": "detr2d.engine.predict:run_predict",
    "nuscenes_detection": "bev.engine.predict:run_bev_predict",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images (BEV: infos files)")
    parser.add_argument("--out", default="work_dirs/predict", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--score-threshold", type=float, default=0.5, help="draw detections scoring at least this"
    )
    parser.add_argument("--limit", type=int, help="process only the first N images (BEV: per infos file)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="config overrides key=value")
    args = parser.parse_args()
    setup_logging(None, is_main=True)
    config = load_config(args.config, args.overrides)
    if config["task"] not in TASKS:
        parser.error(f"config task {config['task']!r} has no prediction; known: {sorted(TASKS)}")
    module, function = TASKS[config["task"]].split(":")
    run = getattr(importlib.import_module(module), function)
    run(config, args.checkpoint, args.inputs, args.out, args.score_threshold, args.limit)


if __name__ == "__main__":
    main()
