"""Train a config: ``python tools/train.py CONFIG [--resume CKPT] [--seed N] [--out DIR] [key=value ...]``.

Runs alone or under ``torchrun --nproc_per_node N`` (DistributedDataParallel: NCCL on GPUs, gloo on the
CPU). ``key=value`` overrides any config entry (dotted keys, e.g. ``optim.lr=1e-4``). The training run
is chosen by the config's ``task``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import load_config  # noqa: E402
from detr2d.engine.distributed import shutdown_distributed  # noqa: E402

# task → "module:function(config, out_dir, resume)"
TASKS = {
    "coco_detection": "detr2d.engine.trainer:run_training",
    "nuscenes_detection": "bev.engine.trainer:run_bev_training",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="config file, e.g. configs/detr2d/deformable_detr.py")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    parser.add_argument("--resume", help="training checkpoint to continue exactly")
    parser.add_argument("--seed", type=int, help="shortcut for train.seed=N")
    parser.add_argument(
        "--out", help="output folder (default: the resumed checkpoint's, else work_dirs/<config>)"
    )
    args = parser.parse_intermixed_args()
    overrides = args.overrides + ([f"train.seed={args.seed}"] if args.seed is not None else [])
    config = load_config(args.config, overrides)
    if config["task"] not in TASKS:
        parser.error(f"config task {config['task']!r} has no training; known: {sorted(TASKS)}")
    module, function = TASKS[config["task"]].split(":")
    out = args.out or (
        Path(args.resume).parent if args.resume else Path("work_dirs") / Path(args.config).stem
    )
    try:
        getattr(importlib.import_module(module), function)(config, out, resume=args.resume)
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
