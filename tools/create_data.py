"""Build nuScenes infos, or write a synthetic nuScenes dataset.

python tools/create_data.py nuscenes --root R --version V --out DIR [--splits S ...] [--can-bus-root C]
    [--max-sweeps N]
python tools/create_data.py synthetic-nuscenes --out R [--scenes N --samples N --image-size W H --seed S
    --camera-sweeps N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.nuscenes.infos import MAX_SWEEPS, create_nuscenes_infos  # noqa: E402
from datasets.nuscenes.synthetic import (  # noqa: E402
    NUSCENES_CAMERA_SWEEPS,
    SyntheticSpec,
    generate_synthetic_nuscenes,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    infos = commands.add_parser("nuscenes", help="write nuscenes_infos_<split>.json for a nuScenes root")
    infos.add_argument("--root", required=True, help="nuScenes data root (holds samples/ and <version>/)")
    infos.add_argument("--version", required=True, help="e.g. v1.0-mini, v1.0-trainval, v1.0-test")
    infos.add_argument("--out", required=True, help="output directory of the infos files")
    infos.add_argument("--splits", nargs="+", help="splits to index (default: all that fit the version)")
    infos.add_argument("--can-bus-root", help="directory holding can_bus/ (default: root or its parent)")
    infos.add_argument(
        "--max-sweeps",
        type=int,
        default=MAX_SWEEPS,
        help="earlier camera frames kept per sample for PETRv2 (0: none; the infos stay ~6x smaller)",
    )
    defaults = SyntheticSpec()
    synthetic = commands.add_parser("synthetic-nuscenes", help="write a synthetic dataset in nuScenes format")
    synthetic.add_argument("--out", required=True, help="dataset root to create")
    synthetic.add_argument("--scenes", type=int, default=defaults.num_scenes)
    synthetic.add_argument(
        "--samples", type=int, default=defaults.samples_per_scene, help="samples per scene"
    )
    synthetic.add_argument("--image-size", type=int, nargs=2, metavar=("W", "H"), default=defaults.image_size)
    synthetic.add_argument("--objects-per-class", type=int, default=defaults.objects_per_class)
    synthetic.add_argument("--seed", type=int, default=defaults.seed)
    synthetic.add_argument("--no-can-bus", action="store_true", help="do not write can_bus/")
    synthetic.add_argument(
        "--camera-sweeps",
        type=int,
        default=defaults.camera_sweeps,
        help=f"non-keyframe camera images between two keyframes (real nuScenes: {NUSCENES_CAMERA_SWEEPS})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    if args.command == "nuscenes":
        paths = create_nuscenes_infos(
            args.root, args.version, args.out, args.splits, args.can_bus_root, args.max_sweeps
        )
        for path in paths:
            print(f"wrote {path}")
    else:
        spec = SyntheticSpec(
            num_scenes=args.scenes,
            samples_per_scene=args.samples,
            image_size=tuple(args.image_size),
            objects_per_class=args.objects_per_class,
            seed=args.seed,
            can_bus=not args.no_can_bus,
            camera_sweeps=args.camera_sweeps,
        )
        print(f"wrote {generate_synthetic_nuscenes(args.out, spec)}")
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
