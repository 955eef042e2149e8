"""Reading data files so that nothing wrong passes silently: every error names the file and what it holds.

- :func:`read_json` turns a missing, empty, binary or malformed JSON file into one message naming it.
- :func:`read_rgb` refuses truncated JPEG and PNG files before decoding them: OpenCV decodes a JPEG cut
  short without an error (libjpeg fills the missing rows with grey and only prints ``Premature end of
  JPEG file`` on stderr, which Python cannot capture), so the bytes are checked for the format's end
  marker first. Any other decode failure is refused too.
- :func:`missing_files` lists the files of a dataset that are absent, listing each folder once.
- :class:`BadImagePolicy` is what a dataset does with a bad image: raise, or skip to another sample and
  count (a warning names every skipped file; the count is shared by the DataLoader's worker processes).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

import cv2
import numpy as np

logger = logging.getLogger(__name__)

T = TypeVar("T")
OnBadImage = Literal["raise", "skip"]

_JPEG_START = b"\xff\xd8"
_JPEG_START_OF_SCAN = b"\xff\xda"
_JPEG_END = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END_CHUNK = b"IEND\xaeB`\x82"  # the IEND chunk type and its (constant) CRC


class BadImageError(ValueError):
    """An image file that exists but is truncated, corrupt or not an image (see :func:`read_rgb`)."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path

    def __reduce__(self) -> tuple[type, tuple[str, Path]]:
        return type(self), (str(self), self.path)


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The parsed content of the JSON file ``path``, which should hold ``what`` (e.g. "COCO annotations").

    Raises:
        FileNotFoundError: ``path`` does not exist (message names it and ``what``).
        ValueError: ``path`` is a folder, empty, not UTF-8 text (a binary file) or not valid JSON
            (truncated, garbage); the message names the file, ``what`` and where parsing stopped.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} file not found: {path}")
    if path.is_dir():
        raise ValueError(f"{what} file {path} is a directory; expected a JSON file")
    data = path.read_bytes()
    if not data.strip():
        raise ValueError(f"{what} file {path} is empty ({len(data)} bytes); expected JSON")
    try:
        text = data.decode("utf-8")
        return json.loads(text)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{what} file {path} is not JSON text: byte {error.start} is not UTF-8 (a binary file?)"
        ) from error
    except json.JSONDecodeError as error:
        # the text stops inside its last token (a cut number or word) or string
        rest = text[error.pos :]
        cut_token = re.fullmatch(r"[\w.+\-]*\s*", rest) is not None
        ends_early = cut_token or error.msg.startswith("Unterminated string")
        truncated = " (truncated?)" if ends_early else ""
        raise ValueError(
            f"{what} file {path} is not valid JSON{truncated}: {error.msg} at line {error.lineno} "
            f"column {error.colno} of {len(data)} bytes"
        ) from error


def image_file_problem(data: bytes) -> str | None:
    """Why the bytes of an image file cannot be a complete image, or None if they may be.

    JPEG: the end-of-image marker FFD9 must follow the last start-of-scan marker FFDA (inside a scan
    an FF byte is always followed by 00 or a restart marker, so neither pattern occurs by chance; bytes
    after FFD9 are allowed). PNG: the IEND chunk must be present. Other formats are left to the decoder.
    """
    if not data:
        return "is empty (0 bytes)"
    if data.startswith(_JPEG_START):
        last_scan = data.rfind(_JPEG_START_OF_SCAN)
        if last_scan < 0:
            return "is a truncated JPEG: it has no image data (no start-of-scan marker)"
        if data.find(_JPEG_END, last_scan) < 0:
            return "is a truncated JPEG: no end-of-image marker after its last scan"
    elif data.startswith(_PNG_SIGNATURE) and data.rfind(_PNG_END_CHUNK) < 0:
        return "is a truncated PNG: no IEND chunk"
    return None


def read_rgb(path: str | os.PathLike, what: str, exif_orientation: bool = False) -> np.ndarray:
    """Decode an image file as (H, W, 3) uint8 RGB, refusing truncated or undecodable files.

    Args:
        path: the image file.
        what: its dataset entry, put in every message (e.g. "image id 42 in instances_val2017.json").
        exif_orientation: apply the EXIF orientation tag; datasets keep it off, because their boxes and
            calibrations refer to the stored pixel grid.

    Raises:
        FileNotFoundError: the file does not exist.
        BadImageError (a ValueError): the file is empty, truncated (JPEG/PNG) or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path} ({what})")
    data = path.read_bytes()
    problem = image_file_problem(data)
    if problem is None:
        flags = cv2.IMREAD_COLOR if exif_orientation else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
        if image is not None:
            return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        problem = f"cannot be decoded as an image ({len(data)} bytes)"
    raise BadImageError(f"image file {path} {problem} ({what})", path)


def missing_files(paths: Iterable[Path]) -> list[Path]:
    """Those of ``paths`` that are not files, in order; each folder is listed once (fast for 10^5 files)."""
    listings: dict[Path, set[str]] = {}
    missing = []
    for path in paths:
        folder = path.parent
        if folder not in listings:
            listings[folder] = (
                {entry.name for entry in os.scandir(folder) if entry.is_file()} if folder.is_dir() else set()
            )
        if path.name not in listings[folder]:
            missing.append(path)
    return missing


class BadImagePolicy:
    """What a dataset does when a sample's image is bad (:class:`BadImageError`).

    ``"raise"`` re-raises. ``"skip"`` logs a warning naming the file, counts it in :attr:`num_skipped`
    and returns the next sample (in index order, wrapping around) whose images are good. The counter
    lives in shared memory, so skips inside DataLoader worker processes are counted too; a bad image
    is counted again each time it is drawn (once per epoch).

    Args:
        on_bad_image: ``"raise"`` or ``"skip"``.
        dataset_name: names the dataset in the log and in the error when every sample is bad.
    """

    def __init__(self, on_bad_image: OnBadImage, dataset_name: str) -> None:
        if on_bad_image not in ("raise", "skip"):
            raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {on_bad_image!r}")
        self.on_bad_image = on_bad_image
        self.dataset_name = dataset_name
        self._skipped = multiprocessing.Value("q", 0)

    @property
    def num_skipped(self) -> int:
        """Bad images skipped so far, by this process and its DataLoader workers."""
        return int(self._skipped.value)

    def get(self, index: int, length: int, load: Callable[[int], T]) -> T:
        """``load(index)``, or under ``"skip"`` the first of ``load(index + 1)``, ... that succeeds.

        Raises:
            BadImageError: under ``"raise"``; under ``"skip"`` when all ``length`` samples are bad.
        """
        if self.on_bad_image == "raise":
            return load(index)
        last_bad = Path()
        for offset in range(length):
            try:
                return load((index + offset) % length)
            except BadImageError as error:
                last_bad = error.path
                with self._skipped.get_lock():
                    self._skipped.value += 1
                logger.warning(
                    "%s: skipping sample %d: %s", self.dataset_name, (index + offset) % length, error
                )
        raise BadImageError(f"{self.dataset_name}: all {length} samples have a bad image", last_bad)
