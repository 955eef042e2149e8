"""Class names: the 80 COCO 2017 categories in the 91-id label space of the published models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# COCO 2017 category id -> name. Ids run 1..90 with 10 unused ids (12, 26, 29, 30, 45, 66, 68, 69, 71,
# 83); the published models have 91 logits so that every id is its own label (0 is never used).
COCO_CLASSES: dict[int, str] = {
    1: "person",
    2: "bicycle",
    3: "car",
    4: "motorcycle",
    5: "airplane",
    6: "bus",
    7: "train",
    8: "truck",
    9: "boat",
    10: "traffic light",
    11: "fire hydrant",
    13: "stop sign",
    14: "parking meter",
    15: "bench",
    16: "bird",
    17: "cat",
    18: "dog",
    19: "horse",
    20: "sheep",
    21: "cow",
    22: "elephant",
    23: "bear",
    24: "zebra",
    25: "giraffe",
    27: "backpack",
    28: "umbrella",
    31: "handbag",
    32: "tie",
    33: "suitcase",
    34: "frisbee",
    35: "skis",
    36: "snowboard",
    37: "sports ball",
    38: "kite",
    39: "baseball bat",
    40: "baseball glove",
    41: "skateboard",
    42: "surfboard",
    43: "tennis racket",
    44: "bottle",
    46: "wine glass",
    47: "cup",
    48: "fork",
    49: "knife",
    50: "spoon",
    51: "bowl",
    52: "banana",
    53: "apple",
    54: "sandwich",
    55: "orange",
    56: "broccoli",
    57: "carrot",
    58: "hot dog",
    59: "pizza",
    60: "donut",
    61: "cake",
    62: "chair",
    63: "couch",
    64: "potted plant",
    65: "bed",
    67: "dining table",
    70: "toilet",
    72: "tv",
    73: "laptop",
    74: "mouse",
    75: "remote",
    76: "keyboard",
    77: "cell phone",
    78: "microwave",
    79: "oven",
    80: "toaster",
    81: "sink",
    82: "refrigerator",
    84: "book",
    85: "clock",
    86: "vase",
    87: "scissors",
    88: "teddy bear",
    89: "hair drier",
    90: "toothbrush",
}

COCO_NUM_CLASSES = 91


def class_names(num_classes: int, names: Mapping[int, str] | Sequence[str] | None = None) -> dict[int, str]:
    """Label -> name for a model with ``num_classes`` logits.

    Args:
        num_classes: the model's number of classes.
        names: names from a checkpoint or an annotation file: a mapping label -> name (integer or
            integer-string keys, as JSON writes them) or a sequence indexed by label. None: the COCO
            names when ``num_classes`` is 91 (the published label space), else no names.

    Returns:
        The names of the labels that have one; labels outside ``0..num_classes - 1`` raise.

    Raises:
        ValueError: a label is not an integer in ``0..num_classes - 1``, or a name is not a string.
    """
    if names is None:
        return dict(COCO_CLASSES) if num_classes == COCO_NUM_CLASSES else {}
    items = names.items() if isinstance(names, Mapping) else enumerate(names)
    out: dict[int, str] = {}
    for key, name in items:
        try:
            label = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"class names: label {key!r} is not an integer") from None
        if not 0 <= label < num_classes:
            raise ValueError(f"class names: label {label} is outside 0..{num_classes - 1} (num_classes)")
        if not isinstance(name, str):
            raise ValueError(f"class names: the name of label {label} must be a string, got {name!r}")
        out[label] = name
    return out
