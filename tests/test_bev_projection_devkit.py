"""On the synthetic nuScenes data: a 3D point at an annotated object's centre, projected with the
dataset's lidar2img by the model's own projection, lands where the devkit's ``view_points`` puts it and
on that object in the rendered camera image."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from bev_helpers import one_thread  # noqa: F401 (autouse fixture)
from nuscenes.utils.geometry_utils import BoxVisibility, view_points
from nuscenes_fixtures import dataset, nusc, val_infos  # noqa: F401 (fixtures)

from bev import project_to_cameras
from datasets.nuscenes import NuScenesMultiViewDataset
from datasets.nuscenes.synthetic_world import CATEGORY_SPECS

STORED = (800, 450)  # (W, H) of the default synthetic images
RESIZED = (400, 225)  # what the dataset resizes them to (lidar2img scaled with them)
#: BGR class colour of every synthetic category, by the name the infos store (detection name or category).
COLORS = {spec.detection_name or spec.category: np.array(spec.color, float) for spec in CATEGORY_SPECS}
SHADES = np.linspace(0.55, 1.0, 10)[:, None]


def _colour_distance(pixel: np.ndarray, color: np.ndarray) -> float:
    """Distance of a BGR pixel to the nearest colour the renderer paints a face of a ``color`` box with:
    sides ``shade * color``, back ``0.6 * shade * color``, front ``0.55 * shade * color + 0.45 * 255``."""
    faces = np.concatenate([SHADES * color, 0.6 * SHADES * color, 0.55 * SHADES * color + 0.45 * 255])
    return float(np.linalg.norm(faces - pixel, axis=1).min())


def _our_centre_pixels(infos: dict, sample_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Every annotated centre of a sample projected into its six cameras by ``bev.project_to_cameras``
    with the dataset's (resized) lidar2img: pixels (Ncam, K, 2) of the stored images, visible (Ncam, K)."""
    lidar2img = NuScenesMultiViewDataset(infos, image_size=RESIZED)[sample_index]["lidar2img"][-1]
    boxes = torch.tensor(infos["samples"][sample_index]["gt"]["boxes"], dtype=torch.float32).reshape(-1, 9)
    uv, visible = project_to_cameras(boxes[None, :, None, :3], lidar2img[None], (RESIZED[1], RESIZED[0]))
    pixels = uv[0, :, :, 0].double() * torch.tensor(STORED, dtype=torch.float64)
    return pixels.numpy(), visible[0, :, :, 0].numpy()


def test_annotated_centres_project_like_the_devkit_and_onto_their_objects(nusc, val_infos):  # noqa: F811
    projected = on_object = 0
    for sample_index, sample in enumerate(val_infos["samples"][:3]):
        pixels, visible = _our_centre_pixels(val_infos, sample_index)
        gt = sample["gt"]
        for cam, channel in enumerate(val_infos["camera_names"]):
            token = sample["cameras"][channel]["token"]
            path, boxes, intrinsic = nusc.get_sample_data(token, box_vis_level=BoxVisibility.NONE)
            devkit = {box.token: box for box in boxes}  # annotation boxes in this camera's frame
            in_view = []
            for k, annotation in enumerate(gt["annotation_tokens"]):
                centre = devkit[annotation].center
                expected = view_points(centre[:, None], np.asarray(intrinsic), normalize=True)[:2, 0]
                inside = centre[2] > 1e-5 and 0 < expected[0] < STORED[0] and 0 < expected[1] < STORED[1]
                assert bool(visible[cam, k]) == inside, (channel, annotation)
                if inside:
                    np.testing.assert_allclose(pixels[cam, k], expected, atol=0.05)
                    in_view.append(k)
            projected += len(in_view)
            if not in_view:
                continue
            # Nothing stands in front of the nearest object: its centre pixel shows its class colour.
            k = min(in_view, key=lambda i: np.linalg.norm(devkit[gt["annotation_tokens"][i]].center))
            u, v = np.round(pixels[cam, k]).astype(int)
            pixel = cv2.imread(path)[v, u].astype(float)
            distances = {name: _colour_distance(pixel, color) for name, color in COLORS.items()}
            assert min(distances, key=distances.get) == gt["names"][k], (channel, gt["names"][k], pixel)
            on_object += 1
    assert projected >= 20 and on_object >= 8, (projected, on_object)
