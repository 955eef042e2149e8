"""The simulated world behind a synthetic nuScenes scene: a curved road, a moving ego car and objects.

Positions live on the ground plane of the global frame (z = 0 is the road surface). The road is an arc
parametrised by arc length ``s`` along the ego's path and a lateral offset ``d`` (left positive).
Every object keeps its lateral slot; moving objects of one slot share its speed, so objects placed
without overlap never collide. Attributes follow the motion (moving/parked/stopped, with/without
rider, moving/standing), which is also the rule the evaluation uses to name attributes of
predictions, so ground truth fed back through the evaluation scores a perfect attribute error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Lateral layout of the road (metres from the ego lane centre, left positive).
ROAD_EDGES: tuple[float, float] = (-5.25, 8.75)
PARKING_BANDS: tuple[tuple[float, float], ...] = ((-9.75, -6.75), (8.75, 11.75))
SIDEWALK_BANDS: tuple[tuple[float, float], ...] = ((-14.0, -9.75), (11.75, 16.0))
DASHED_LINES: tuple[float, ...] = (-1.75, 5.25)
CENTER_LINE = 1.75
SOLID_LINES: tuple[float, ...] = (ROAD_EDGES[0] + 0.15, ROAD_EDGES[1] - 0.15)


@dataclass(frozen=True)
class Slot:
    """A lateral track objects stand or move on. ``direction`` +1/-1 moves along/against s, 0 is static."""

    name: str
    lateral: float
    direction: int
    speed_range: tuple[float, float] = (0.0, 0.0)


SLOTS: dict[str, Slot] = {
    slot.name: slot
    for slot in (
        Slot("lane_same", -3.5, 1, (4.0, 9.0)),
        Slot("lane_opposite_near", 3.5, -1, (4.0, 9.0)),
        Slot("lane_opposite_far", 7.0, -1, (3.0, 7.0)),
        Slot("bike_lane", -6.0, 1, (3.0, 5.0)),
        Slot("parking_right", -8.25, 0),
        Slot("parking_left", 10.25, 0),
        Slot("walkway_right", -11.0, 1, (1.0, 1.6)),
        Slot("walkway_left", 13.0, -1, (1.0, 1.6)),
        Slot("sidewalk_right", -13.0, 0),
        Slot("sidewalk_left", 15.0, 0),
    )
}

_LANES = ("lane_same", "lane_opposite_near", "lane_opposite_far")
_PARKING = ("parking_right", "parking_left")
_SIDEWALKS = ("sidewalk_right", "sidewalk_left")


@dataclass(frozen=True)
class CategorySpec:
    """How one nuScenes category appears: size (w, l, h), where it moves/stands, attributes, BGR colour."""

    category: str
    detection_name: str | None
    size: tuple[float, float, float]
    moving_slots: tuple[str, ...]
    static_slots: tuple[str, ...]
    moving_attribute: str
    static_attribute: str
    color: tuple[int, int, int]
    yaw_offset: float = 0.0
    yaw_jitter: float = 0.05


CATEGORY_SPECS: tuple[CategorySpec, ...] = (
    CategorySpec(
        "vehicle.car",
        "car",
        (1.95, 4.6, 1.7),
        _LANES,
        _PARKING,
        "vehicle.moving",
        "vehicle.parked",
        (40, 40, 220),
    ),
    CategorySpec(
        "vehicle.truck",
        "truck",
        (2.5, 7.0, 2.9),
        _LANES,
        _PARKING,
        "vehicle.moving",
        "vehicle.parked",
        (40, 160, 240),
    ),
    CategorySpec(
        "vehicle.construction",
        "construction_vehicle",
        (2.8, 6.5, 3.2),
        ("lane_same",),
        _PARKING,
        "vehicle.moving",
        "vehicle.parked",
        (20, 220, 250),
    ),
    CategorySpec(
        "vehicle.bus.rigid",
        "bus",
        (2.9, 11.0, 3.5),
        _LANES,
        ("parking_right",),
        "vehicle.moving",
        "vehicle.stopped",
        (200, 90, 30),
    ),
    CategorySpec(
        "vehicle.trailer",
        "trailer",
        (2.9, 10.0, 3.8),
        (),
        _PARKING,
        "",
        "vehicle.parked",
        (140, 60, 120),
        yaw_jitter=0.03,
    ),
    CategorySpec(
        "movable_object.barrier",
        "barrier",
        (2.5, 0.5, 0.98),
        (),
        _PARKING,
        "",
        "",
        (235, 235, 235),
        yaw_offset=np.pi / 2,
    ),
    CategorySpec(
        "vehicle.motorcycle",
        "motorcycle",
        (0.77, 2.1, 1.47),
        ("bike_lane", "lane_same"),
        _SIDEWALKS,
        "cycle.with_rider",
        "cycle.without_rider",
        (200, 40, 200),
    ),
    CategorySpec(
        "vehicle.bicycle",
        "bicycle",
        (0.6, 1.7, 1.3),
        ("bike_lane",),
        _SIDEWALKS,
        "cycle.with_rider",
        "cycle.without_rider",
        (60, 200, 60),
    ),
    CategorySpec(
        "human.pedestrian.adult",
        "pedestrian",
        (0.67, 0.73, 1.77),
        ("walkway_right", "walkway_left"),
        _SIDEWALKS,
        "pedestrian.moving",
        "pedestrian.standing",
        (230, 200, 20),
        yaw_jitter=np.pi,
    ),
    CategorySpec(
        "movable_object.trafficcone",
        "traffic_cone",
        (0.41, 0.41, 1.07),
        (),
        _PARKING,
        "",
        "",
        (0, 110, 255),
        yaw_jitter=np.pi,
    ),
    CategorySpec(
        "movable_object.pushable_pullable",
        None,
        (0.6, 0.8, 1.0),
        (),
        _SIDEWALKS,
        "",
        "",
        (90, 60, 40),
        yaw_jitter=np.pi,
    ),
)


@dataclass(frozen=True)
class Road:
    """Arc of curvature ``curvature`` (1/m, non-zero) from ``origin`` (2,) with heading ``heading0``."""

    origin: tuple[float, float]
    heading0: float
    curvature: float

    @property
    def _center(self) -> np.ndarray:
        return (
            np.array(self.origin) + np.array([-np.sin(self.heading0), np.cos(self.heading0)]) / self.curvature
        )

    def heading(self, s: np.ndarray | float) -> np.ndarray:
        """Tangent heading at arc length ``s`` (any shape), radians."""
        return self.heading0 + self.curvature * np.asarray(s, dtype=np.float64)

    def point(self, s: np.ndarray | float, d: np.ndarray | float) -> np.ndarray:
        """Global xy (..., 2) of road coordinates (s, d)."""
        theta = self.heading(s)
        normal = np.stack([-np.sin(theta), np.cos(theta)], -1)
        return self._center + (np.asarray(d, dtype=np.float64)[..., None] - 1.0 / self.curvature) * normal

    def coordinates(self, xy: np.ndarray, s_near: float) -> tuple[np.ndarray, np.ndarray]:
        """Road coordinates (s, d), each of shape (...), of global points ``xy`` (..., 2) near ``s_near``."""
        offset = xy - self._center
        sign = np.sign(self.curvature)
        d = 1.0 / self.curvature - sign * np.hypot(offset[..., 0], offset[..., 1])
        theta = np.arctan2(sign * offset[..., 0], -sign * offset[..., 1])  # the normal is -sign * offset
        dtheta = np.mod(theta - self.heading(s_near) + np.pi, 2 * np.pi) - np.pi
        return s_near + dtheta / self.curvature, d


@dataclass(frozen=True)
class WorldObject:
    """One object instance: its category, size and motion in road coordinates."""

    spec: CategorySpec
    size: tuple[float, float, float]
    slot: Slot
    s0: float
    speed: float
    yaw_offset: float

    @property
    def attribute(self) -> str:
        return self.spec.moving_attribute if self.speed > 0 else self.spec.static_attribute

    def s_at(self, t: float) -> float:
        return self.s0 + self.slot.direction * self.speed * t

    def pose(self, road: Road, t: float) -> tuple[np.ndarray, float]:
        """Global box centre (3,) and yaw at time ``t`` (s since the scene start)."""
        s = self.s_at(t)
        xy = road.point(s, self.slot.lateral)
        heading = float(road.heading(s)) if self.speed > 0 else float(road.heading(self.s0))
        return np.array([xy[0], xy[1], self.size[2] / 2]), heading + self.yaw_offset


@dataclass(frozen=True)
class World:
    """A scene's world: road, ego speed (ego drives d = 0 from s = 0 at t = 0) and objects."""

    road: Road
    ego_speed: float
    objects: tuple[WorldObject, ...]

    def ego_pose(self, t: float) -> tuple[np.ndarray, float]:
        """Global ego position (3,) (z = 0) and yaw at time ``t``."""
        s = self.ego_speed * t
        xy = self.road.point(s, 0.0)
        return np.array([xy[0], xy[1], 0.0]), float(self.road.heading(s))


def _extent_along_road(size: tuple[float, float, float], yaw_offset: float) -> float:
    w, length, _ = size
    return abs(np.cos(yaw_offset)) * length + abs(np.sin(yaw_offset)) * w


def make_world(rng: np.random.Generator, duration: float, objects_per_class: int) -> World:
    """Sample a world for a scene lasting ``duration`` seconds.

    Each category gets ``objects_per_class`` instances (one for the non-detection category); the first
    instance of each is placed within about 20 m of the ego at mid-scene so every class is observable.
    """
    road = Road(
        origin=(float(rng.uniform(300, 1800)), float(rng.uniform(300, 1800))),
        heading0=float(rng.uniform(-np.pi, np.pi)),
        curvature=float(rng.choice([-1, 1]) * rng.uniform(0.002, 0.012)),
    )
    ego_speed = float(rng.uniform(2.0, 6.0))
    speeds = {name: float(rng.uniform(*slot.speed_range)) for name, slot in SLOTS.items()}
    t_mid = duration / 2
    ego_mid = ego_speed * t_mid
    occupied: dict[str, list[tuple[float, float]]] = {name: [] for name in SLOTS}
    objects: list[WorldObject] = []
    for spec in CATEGORY_SPECS:
        count = objects_per_class if spec.detection_name is not None else 1
        for index in range(count):
            window = (-15.0, 20.0) if index == 0 else (-40.0, 45.0)
            for _ in range(100):
                moving = bool(spec.moving_slots) and (not spec.static_slots or rng.random() < 0.5)
                slot = SLOTS[str(rng.choice(spec.moving_slots if moving else spec.static_slots))]
                scale = rng.uniform(0.92, 1.08)
                size = (spec.size[0] * scale, spec.size[1] * scale, spec.size[2] * scale)
                if moving:
                    yaw_offset = np.pi if slot.direction < 0 else 0.0
                else:
                    flip = np.pi * rng.integers(0, 2)
                    yaw_offset = spec.yaw_offset + flip + rng.uniform(-spec.yaw_jitter, spec.yaw_jitter)
                speed = speeds[slot.name] if moving else 0.0
                s_mid = ego_mid + rng.uniform(*window)
                s0 = s_mid - slot.direction * speed * t_mid
                extent = _extent_along_road(size, yaw_offset)
                if all(
                    abs(s0 - other) >= (extent + other_extent) / 2 + 1.0
                    for other, other_extent in occupied[slot.name]
                ):
                    occupied[slot.name].append((s0, extent))
                    objects.append(WorldObject(spec, size, slot, s0, speed, float(yaw_offset)))
                    break
            else:
                raise RuntimeError(f"could not place a {spec.category} without overlap in 100 tries")
    return World(road, ego_speed, tuple(objects))
