"""Every model side by side (``make study``): train and evaluate the 2D detectors on the synthetic COCO
set and the BEV detectors on the synthetic nuScenes set with the same data, seed, image size and schedule
per group, measure parameters, training time, images/s, peak memory and inference latency (eager and fast
path), and write ``OUT/report.md`` with its PNG plots. This file is the study's table (models, profiles,
data); the engine is :mod:`detr2d.runtime.study`, the report :mod:`detr2d.runtime.study_report`.

    python tools/study.py                              # default profile, outputs in work_dirs/study
    python tools/study.py --budget tiny --models deformable_detr_single_scale,bevformer --out /tmp/s
    python tools/study.py --models 2d                  # one group (2d, bev) or model names, comma-separated
    python tools/study.py --budget published --models 2d data.root=/data/coco       # real data, GPUs
    python tools/study.py --budget published --models bev bev:data.root=/data/nuscenes \\
        bev:data.infos_dir=/data/nuscenes/infos

Each model is one run folder ``OUT/<group>/<name>`` trained by a subprocess of its own (its peak RSS is the
model's): a finished run (``result.json`` of the same settings) is reused, an interrupted one continues from
its ``checkpoint.pth``. A model whose config does not exist or does not load is reported as not available,
a run that fails as failed; the others go on. Trailing ``key=value`` overrides apply to every model,
``2d:key=value`` / ``bev:key=value`` to one group.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import ConfigError, load_config  # noqa: E402
from datasets.nuscenes.infos import create_nuscenes_infos  # noqa: E402
from datasets.nuscenes.synthetic import (  # noqa: E402
    NUSCENES_CAMERA_SWEEPS,
    SyntheticSpec,
    generate_synthetic_nuscenes,
)
from datasets.synthetic_coco import SyntheticCocoSpec, generate_synthetic_coco  # noqa: E402
from detr2d.runtime.cli import load_task_config  # noqa: E402
from detr2d.runtime.study import StudyRun, clock, run_study, run_worker  # noqa: E402
from detr2d.runtime.study_report import write_report  # noqa: E402
from ops.benchmark import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GROUPS = ("2d", "bev")
#: The 2D models train the COCO demo's model size, data settings and schedule (these keys of
#: configs/detr2d/demo.py are applied to every 2D config), each with its own head, loss and matching.
DEMO_2D = "configs/detr2d/demo.py"
SHARED_2D_KEYS = (
    *(
        f"model.{key}"
        for key in (
            "backbone",
            "pretrained",
            "backbone_norm",
            "backbone_trainable_layers",
            "num_classes",
            "num_queries",
            "embed_dims",
            "encoder_layers",
            "decoder_layers",
            "ffn_dims",
            "dropout",
        )
    ),
    "data.num_workers",
    "augment.scales",
    "augment.max_size",
    "augment.crop_resize_sizes",
    "augment.eval_size",
    "optim.lr",
    "optim.lr_backbone",
    "schedule.epochs",
    "schedule.lr_drop",
    "train.batch_size",
    "train.eval_batch_size",
)


@dataclass(frozen=True)
class Model:
    """One row of the study: ``config`` (CPU-sized) and ``published`` (the real-data recipe) with
    ``overrides`` on top; ``note``: what is inherent to the model and differs from the others."""

    group: str
    name: str
    config: str
    published: str
    overrides: tuple[str, ...] = ()
    note: str = ""


MODELS: tuple[Model, ...] = (
    Model(
        "2d",
        "detr",
        "configs/detr2d/detr_r50.py",
        "configs/detr2d/detr_r50.py",
        note="global attention over the C5 map only (one level), softmax classes with a no-object "
        "class and its own loss weights.",
    ),
    Model(
        "2d",
        "deformable_detr_single_scale",
        "configs/detr2d/deformable_detr_single_scale.py",
        "configs/detr2d/deformable_detr_single_scale.py",
        note="deformable attention over one level (C5), sigmoid focal classification.",
    ),
    Model(
        "2d",
        "deformable_detr",
        "configs/detr2d/deformable_detr.py",
        "configs/detr2d/deformable_detr.py",
        note="four levels (C3-C5 and a stride-64 level).",
    ),
    Model(
        "2d",
        "deformable_detr_refine",
        "configs/detr2d/deformable_detr_refine.py",
        "configs/detr2d/deformable_detr_refine.py",
        note="four levels; each decoder layer refines the previous layer's boxes.",
    ),
    Model(
        "2d",
        "deformable_detr_two_stage",
        "configs/detr2d/deformable_detr_two_stage.py",
        "configs/detr2d/deformable_detr_two_stage.py",
        note="four levels, box refinement, and the encoder's top proposals as the decoder's queries.",
    ),
    Model(
        "bev",
        "detr3d",
        "configs/bev/detr3d_demo.py",
        "configs/bev/detr3d.py",
        note="no BEV grid and no history; one frame per sample.",
    ),
    Model(
        "bev",
        "petr",
        "configs/bev/petr_demo.py",
        "configs/bev/petr_vov_p4_800x320.py",
        note="3D position embedding of the image features, one frame per sample. Its neck (CPFPN) fuses "
        "ResNet-18's layer3 and layer4 into the stride-16 P4 map, so it runs the whole ResNet-18 (11.5 M "
        "parameters) where DETR3D and BEVFormer read the stride-8 layer2 (about 1 M).",
    ),
    Model(
        "bev",
        "petrv2",
        "configs/bev/petrv2_demo.py",
        "configs/bev/petrv2_vov_p4_800x320.py",
        note="a second (previous) frame per sample is part of its input (12 views); PETR's whole ResNet-18 "
        "and CPFPN.",
    ),
    Model(
        "bev",
        "bevformer",
        "configs/bev/demo.py",
        "configs/bev/base.py",
        note="the previous frame's BEV (history) in training and in the sequential test.",
    ),
)


@dataclass(frozen=True)
class Profile:
    """A budget: the synthetic data (None: the published configs on data.root given by overrides), the
    epochs per group, the latency measurement and the expected seconds of one run per group (the ETA
    before the first run of a group ends)."""

    name: str
    coco: SyntheticCocoSpec | None
    nuscenes: SyntheticSpec | None
    epochs: dict[str, int]
    bev_image_size: tuple[int, int] | None
    latency_samples: int
    latency_runs: int
    expected_s: dict[str, float] = field(default_factory=dict)


def _coco(num_train: int, num_val: int) -> SyntheticCocoSpec:
    """The COCO demo's synthetic shapes (tools/demo.sh), ``num_train`` / ``num_val`` images."""
    return SyntheticCocoSpec(
        num_train=num_train,
        num_val=num_val,
        image_size=96,
        max_objects=3,
        min_scale=0.2,
        max_scale=0.5,
        seed=0,
    )


def _nuscenes(num_scenes: int, samples_per_scene: int, image_size: tuple[int, int]) -> SyntheticSpec:
    """The synthetic nuScenes set of every BEV model, with nuScenes' camera sweeps (12 Hz images between
    the keyframes: PETRv2's earlier frame; the other models read the keyframes only)."""
    return SyntheticSpec(
        num_scenes=num_scenes,
        samples_per_scene=samples_per_scene,
        image_size=image_size,
        seed=0,
        camera_sweeps=NUSCENES_CAMERA_SWEEPS,
    )


PROFILES = {
    "tiny": Profile(
        "tiny",
        _coco(16, 8),
        _nuscenes(num_scenes=2, samples_per_scene=3, image_size=(96, 54)),
        {"2d": 1, "bev": 1},
        (96, 54),
        latency_samples=2,
        latency_runs=1,
        expected_s={"2d": 15, "bev": 20},
    ),
    # 5 x ~3 min (2D: 1000 images x 3 epochs) + 4 x ~5 min (BEV: 12 train scenes x 10 samples x 6 epochs)
    "default": Profile(
        "default",
        _coco(1000, 100),
        _nuscenes(num_scenes=15, samples_per_scene=10, image_size=(192, 108)),
        {"2d": 3, "bev": 6},
        (192, 108),
        latency_samples=8,
        latency_runs=3,
        expected_s={"2d": 200, "bev": 300},
    ),
    "published": Profile("published", None, None, {}, None, latency_samples=8, latency_runs=3),
}


def select(models: str) -> list[Model]:
    """The models named by ``models`` (comma-separated model names or groups; ``all``), in table order."""
    names = {item.strip() for item in models.split(",") if item.strip()}
    known = {m.name for m in MODELS} | set(GROUPS) | {"all"}
    unknown = sorted(names - known)
    if unknown:
        raise SystemExit(f"error: --models: unknown {unknown}; choose from {sorted(known)}")
    return [m for m in MODELS if "all" in names or m.name in names or m.group in names]


def group_overrides(overrides: list[str], group: str) -> list[str]:
    """The trailing overrides of ``group``: plain ``key=value`` items and ``group:key=value`` items."""
    chosen = []
    for item in overrides:
        prefix, sep, rest = item.partition(":")
        if sep and prefix in GROUPS and "=" not in prefix:
            if prefix == group:
                chosen.append(rest)
        else:
            chosen.append(item)
    return chosen


def literal(value: Any) -> str:
    """``value`` as the value of a ``key=value`` override (strings bare, the rest as Python literals)."""
    return value if isinstance(value, str) else repr(value)


def shared_2d_overrides() -> list[str]:
    """``key=value`` items of :data:`SHARED_2D_KEYS` with configs/detr2d/demo.py's values."""
    demo = load_config(REPO / DEMO_2D)
    items = []
    for key in SHARED_2D_KEYS:
        section, leaf = key.split(".")
        items.append(f"{key}={literal(demo[section][leaf])}")
    return items


def prepare_data(profile: Profile, groups: set[str], data_root: Path) -> dict[str, list[str]]:
    """Generate (or reuse) the profile's synthetic data of ``groups`` under ``data_root``; the data
    overrides of each group. SystemExit: a reused nuScenes set lacks the profile's camera sweeps."""
    overrides: dict[str, list[str]] = {group: [] for group in GROUPS}
    if profile.coco is not None and "2d" in groups:
        root = generate_synthetic_coco(data_root / "coco", profile.coco)
        overrides["2d"] = [f"data.root={root}"]
    if profile.nuscenes is not None and "bev" in groups:
        root, infos = data_root / "nuscenes", data_root / "nuscenes" / "infos"
        splits = ["synthetic_train", "synthetic_val"]
        if not (root / "v1.0-mini").is_dir():
            generate_synthetic_nuscenes(root, profile.nuscenes)
        elif profile.nuscenes.camera_sweeps and not (root / "sweeps").is_dir():
            raise SystemExit(
                f"error: {root} was generated without camera sweeps (an older study's data); remove it or "
                "choose another --data"
            )
        if not all((infos / f"nuscenes_infos_{split}.json").is_file() for split in splits):
            create_nuscenes_infos(root, "v1.0-mini", infos, splits)
        overrides["bev"] = [
            f"data.root={root}",
            f"data.infos_dir={infos}",
            f"data.image_size={list(profile.bev_image_size)!r}",
        ]
    return overrides


def model_overrides(model: Model, profile: Profile, data: list[str], user: list[str]) -> list[str]:
    """Everything a model's run sets on top of its config: the shared settings of its group (CPU profiles),
    the data, one seed, the epochs, the evaluation (2D: every epoch; BEV: after the last), then ``user``."""
    shared = shared_2d_overrides() if model.group == "2d" and profile.coco is not None else []
    epochs = profile.epochs.get(model.group)
    schedule = [f"schedule.epochs={epochs}"] if epochs else []
    evaluation = (
        ["train.eval_every=1"] if model.group == "2d" else [f"train.eval_every={epochs}"] * bool(epochs)
    )
    return [
        *shared,
        *data,
        "train.seed=0",
        *schedule,
        *evaluation,
        "train.keep_every=0",
        *model.overrides,
        *user,
    ]


def availability(config: str, overrides: list[str]) -> str | None:
    """None if ``config`` loads with ``overrides``, else why it is not available."""
    if not (REPO / config).is_file():
        return f"{config} does not exist yet"
    try:
        load_task_config(REPO / config, overrides)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        return f"{config} does not load: {error}".splitlines()[0]
    return None


def plan(
    models: list[Model], profile: Profile, data: dict[str, list[str]], user: list[str]
) -> list[StudyRun]:
    """The study's runs: each model's config (the CPU-sized one, or the published one on real data) with
    its overrides, and why it cannot run where it cannot."""
    runs = []
    for model in models:
        overrides = model_overrides(model, profile, data[model.group], group_overrides(user, model.group))
        config = model.published if profile.coco is None else model.config
        latency = {"samples": profile.latency_samples, "runs": profile.latency_runs}
        unavailable = availability(config, overrides)
        runs.append(
            StudyRun(model.group, model.name, config, tuple(overrides), latency, model.note, unavailable)
        )
    return runs


def synthetic_data(spec: SyntheticCocoSpec | SyntheticSpec | None) -> str:
    """How the report names a group's data."""
    if spec is None:
        return "the published configs' data (data.root given on the command line)"
    return "synthetic, " + ", ".join(f"{key} {value}" for key, value in asdict(spec).items())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "overrides", nargs="*", help="key=value for every model, 2d:key=value / bev:key=value"
    )
    parser.add_argument(
        "--models", default="all", help="comma-separated model names or groups (2d, bev, all)"
    )
    parser.add_argument(
        "--budget", choices=sorted(PROFILES), default="default", help="profile (default: %(default)s)"
    )
    parser.add_argument("--out", default="work_dirs/study", help="study folder (default: %(default)s)")
    parser.add_argument("--data", help="synthetic data folder (default: data/study/<budget>)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(Path(args.worker), REPO)
        return
    profile = PROFILES[args.budget]
    models = select(args.models)
    out = Path(args.out)
    start = time.perf_counter()
    data = prepare_data(profile, {m.group for m in models}, Path(args.data or f"data/study/{profile.name}"))
    runs = plan(models, profile, data, args.overrides)
    entries = run_study(
        runs, out, profile.expected_s, [sys.executable, str(Path(__file__).resolve()), "--worker"]
    )
    machine = f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}"
    settings = {
        "profile": profile.name,
        "data": {"2d": synthetic_data(profile.coco), "bev": synthetic_data(profile.nuscenes)},
        "machine": f"{machine}, {torch.get_num_threads()} threads",
        "wall_s": time.perf_counter() - start,
        "latency": f"batch 1, median of {profile.latency_runs} timed run(s) over the first "
        f"{profile.latency_samples} val samples after 1 warm-up",
    }
    report = write_report(out, entries, settings)
    print(f"[study] done in {clock(settings['wall_s'])}: {report}")


if __name__ == "__main__":
    main()
