"""Train a config: ``python tools/train.py CONFIG [key=value ...] [--resume CKPT | --init-from CKPT]``.

Runs alone or under ``torchrun --nproc_per_node N`` (DistributedDataParallel: NCCL on GPUs, gloo on the
CPU). ``key=value`` overrides any config entry (dotted keys, e.g. ``optim.lr=1e-4``; the value must fit
the entry's type). The config's ``task`` chooses the detector; the loop is the runtime's ``fit``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detr2d.runtime.cli import load_task, parser_with_config  # noqa: E402
from detr2d.runtime.distributed import shutdown_distributed  # noqa: E402
from detr2d.runtime.fit import fit  # noqa: E402
from detr2d.runtime.run_dir import RunFolderBusy  # noqa: E402


def main() -> None:
    parser = parser_with_config(__doc__)
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", help="training checkpoint to continue exactly")
    start.add_argument(
        "--init-from",
        help="checkpoint whose matching weights start a new run (fine-tuning; config: init_from)",
    )
    parser.add_argument("--seed", type=int, help="shortcut for train.seed=N")
    parser.add_argument(
        "--out", help="output folder (default: the resumed checkpoint's, else work_dirs/<config>)"
    )
    args = parser.parse_intermixed_args()
    overrides = args.overrides + ([f"train.seed={args.seed}"] if args.seed is not None else [])
    task = load_task(args, overrides)
    out = args.out or (
        Path(args.resume).parent if args.resume else Path("work_dirs") / Path(args.config).stem
    )
    init_from = args.init_from or task.config.get("init_from")
    try:
        fit(task, out, resume=args.resume, init_from=None if args.resume else init_from)
    except RunFolderBusy as error:  # another run writes into --out: one line, nothing touched
        sys.exit(f"error: {error}")
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
