"""Draw detections: ``python tools/predict.py [CONFIG] CKPT INPUT... [key=value ...] [--out DIR]``.

CKPT is a checkpoint of ours (it carries its config, so CONFIG may be left out; a CONFIG given wins, and
a checkpoint that does not fit its model is refused naming the model it was trained with), or a released
file or bare state_dict after its CONFIG. Detections scoring at least ``--score-threshold`` (default 0.3,
:data:`detr2d.runtime.evaluate.DRAW_SCORE_THRESHOLD`) are drawn and listed.

COCO configs: INPUTs are image files and/or folders of images; writes DIR/<image>.png with boxes, class
names and scores drawn. BEV configs: INPUTs are nuScenes infos files; writes DIR/<token>_bev.png and
DIR/<token>_cameras.jpg per sample. Both write DIR/predictions.json (one record per input, and one
``{"input", "error"}`` entry per input that could not be read: those are skipped, and the exit status
is 1). Trailing ``key=value`` items override the config, as in tools/train.py (an existing path is
always an input).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detr2d.runtime.cli import (  # noqa: E402
    add_inference_mode,
    load_task,
    parser_with_config,
    split_overrides,
    take_checkpoint,
)
from detr2d.runtime.evaluate import (
    DRAW_SCORE_THRESHOLD,  # noqa: E402
    run_predict,  # noqa: E402
)
from detr2d.runtime.logs import (
    plural,  # noqa: E402
    setup_logging,  # noqa: E402
)


def main() -> None:
    parser = parser_with_config(__doc__, checkpoint_first=True)
    parser.add_argument(
        "items",
        nargs="*",
        help="the checkpoint (after a config file), inputs (files, folders; BEV: infos files), key=value",
    )
    parser.add_argument("--out", default="work_dirs/predict", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=DRAW_SCORE_THRESHOLD,
        help="draw detections scoring at least this (default: %(default)s)",
    )
    parser.add_argument("--limit", type=int, help="process only the first N images (BEV: per infos file)")
    add_inference_mode(parser)
    args = parser.parse_intermixed_args()
    paths, overrides = split_overrides(args.items)
    checkpoint, inputs = take_checkpoint(parser, args, paths, required=True)
    task = load_task(args, overrides, checkpoint)
    if not inputs:
        parser.error("no inputs: pass image files / folders (BEV: infos files)")
    setup_logging(None, is_main=True)
    _, errors = run_predict(
        task, checkpoint, inputs, args.out, args.score_threshold, args.limit, args.inference
    )
    if errors:
        sys.exit(
            f"{plural(len(errors), 'input')} could not be read; see {Path(args.out) / 'predictions.json'}"
        )


if __name__ == "__main__":
    main()
