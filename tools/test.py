"""Evaluate a checkpoint: ``python tools/test.py [CONFIG] CKPT [key=value ...] [--out DIR]``.

CKPT is a training checkpoint of ours, an official release file (``{'model': state_dict}``) or a bare
state_dict. Ours carry their config, so CONFIG may be left out (a CONFIG given wins; a checkpoint that
does not fit its model is refused naming the model it was trained with); the others need it.

COCO configs print the standard AP/AR table; ``--out DIR`` writes ``DIR/metrics.json`` and the
detections as a COCO results JSON. BEV configs print the official nuScenes summary (mAP, TP errors, NDS;
sequential test with the previous BEV carried within each scene) and write ``metrics.json`` and
the devkit's files. ``--format-only`` writes the submission file(s) without scoring: COCO test-dev
(``data.val_split=test2017 data.val_ann_file=annotations/image_info_test-dev2017.json``) or the
nuScenes test split. Works under ``torchrun`` (detections gathered from every process).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detr2d.runtime.cli import (  # noqa: E402
    add_inference_mode,
    load_task,
    parser_with_config,
    split_checkpoint,
)
from detr2d.runtime.distributed import init_distributed, shutdown_distributed  # noqa: E402
from detr2d.runtime.evaluate import run_test  # noqa: E402
from detr2d.runtime.logs import setup_logging  # noqa: E402


def main() -> None:
    parser = parser_with_config(__doc__, checkpoint_first=True)
    parser.add_argument(
        "items", nargs="*", help="the checkpoint (after a config file), config overrides key=value"
    )
    parser.add_argument("--out", help="folder for metrics.json and the evaluator's files")
    parser.add_argument(
        "--format-only",
        action="store_true",
        help="write the submission file(s) into --out without scoring (e.g. COCO test-dev, nuScenes test)",
    )
    add_inference_mode(parser)
    args = parser.parse_intermixed_args()
    checkpoint, overrides = split_checkpoint(parser, args, args.items, required=True)
    task = load_task(args, overrides, checkpoint)
    info = init_distributed()
    setup_logging(None, info.is_main)
    try:
        result = run_test(task, checkpoint, args.out, args.format_only, args.inference)
        if info.is_main:
            print(result.table)
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
