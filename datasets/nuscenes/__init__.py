"""nuScenes data layer: synthetic generator, infos, multi-camera dataset, official evaluation, pictures."""

from datasets.nuscenes.constants import CAMERA_NAMES, CLASS_NAMES, PC_RANGE
from datasets.nuscenes.dataset import NuScenesMultiViewDataset, collate_nuscenes
from datasets.nuscenes.evaluation import detections_to_results, evaluate_nuscenes
from datasets.nuscenes.infos import build_infos, create_nuscenes_infos, load_infos
from datasets.nuscenes.synthetic import SyntheticSpec, generate_synthetic_nuscenes
from datasets.nuscenes.visualize import draw_bev, draw_camera_boxes

__all__ = [
    "CAMERA_NAMES",
    "CLASS_NAMES",
    "PC_RANGE",
    "NuScenesMultiViewDataset",
    "SyntheticSpec",
    "build_infos",
    "collate_nuscenes",
    "create_nuscenes_infos",
    "detections_to_results",
    "draw_bev",
    "draw_camera_boxes",
    "evaluate_nuscenes",
    "generate_synthetic_nuscenes",
    "load_infos",
]
