"""Read cell boxes from Pascal VOC XML and YOLO txt into one form.

Both formats become ``AnnotatedImage(image_path, width, height, boxes)`` with ``boxes`` a list of
``Box(kind, bbox)``, ``kind`` one of ``"wbc"``, ``"rbc"``, ``"platelet"`` (the names used by
``hemato_model.detection``) and ``bbox = (x0, y0, x1, y1)`` image pixels, ``x1``/``y1`` exclusive.

* **VOC** (BCCD, CBC): ``<object><name>WBC|RBC|Platelets</name><bndbox>``. VOC corners are
  inclusive, 1-based by convention; BCCD/CBC write them 0-based, so ``xmax`` is used as the
  exclusive end as written (one pixel does not matter for matching). Boxes are clipped to the
  image. Images are looked up in ``JPEGImages/`` beside ``Annotations/`` unless an image folder is
  given (CBC keeps only annotations: its images are BCCD's).
* **YOLO** (TXL-PBC): ``labels/<name>.txt`` with ``cls cx cy w h`` normalised, classes
  0 WBC, 1 RBC, 2 Platelets (``data.yaml``); ``classes.txt`` is skipped. The image size comes from
  the image itself (Pillow reads only the header).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

logger = logging.getLogger(__name__)

#: Annotation names (either format) → detection kind.
NAME_TO_KIND = {
    "wbc": "wbc",
    "rbc": "rbc",
    "platelets": "platelet",
    "platelet": "platelet",
    "plt": "platelet",
    "pc": "platelet",
}
YOLO_CLASSES = ("wbc", "rbc", "platelet")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class AnnotationError(ValueError):
    """A folder or file that cannot be read as annotations."""


@dataclass(frozen=True)
class Box:
    kind: str
    bbox: tuple[int, int, int, int]


@dataclass
class AnnotatedImage:
    image_path: Path
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Box]:
        return [b for b in self.boxes if b.kind == kind]


def _clip(x0: float, y0: float, x1: float, y1: float, w: int, h: int) -> tuple[int, int, int, int]:
    ix0, iy0 = max(0, int(round(x0))), max(0, int(round(y0)))
    ix1, iy1 = min(w, int(round(x1))), min(h, int(round(y1)))
    return ix0, iy0, max(ix1, ix0 + 1), max(iy1, iy0 + 1)


def _find_image(folder: Path, stem: str, hint: str | None = None) -> Path | None:
    if hint:
        p = folder / hint
        if p.is_file():
            return p
    for suffix in IMAGE_SUFFIXES:
        for s in (suffix, suffix.upper()):
            p = folder / f"{stem}{s}"
            if p.is_file():
                return p
    return None


def read_voc_file(xml_path: Path, images_dir: Path) -> AnnotatedImage:
    """One VOC XML file. Raises ``AnnotationError`` when it cannot be parsed."""
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise AnnotationError(f"{xml_path}: not a readable VOC XML file ({exc})") from exc
    filename = (root.findtext("filename") or "").strip() or None
    image_path = _find_image(images_dir, xml_path.stem, filename)
    if image_path is None:
        raise AnnotationError(f"{xml_path.name}: no image {filename or xml_path.stem} in {images_dir}")
    w = int(float(root.findtext("size/width") or 0))
    h = int(float(root.findtext("size/height") or 0))
    if w <= 0 or h <= 0:
        with Image.open(image_path) as im:
            w, h = im.size
    boxes = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip().lower()
        kind = NAME_TO_KIND.get(name)
        bb = obj.find("bndbox")
        if kind is None or bb is None:
            logger.debug("%s: skipping object %r", xml_path.name, name)
            continue
        try:
            x0, y0, x1, y1 = (float(bb.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as exc:
            raise AnnotationError(f"{xml_path.name}: bad box coordinates") from exc
        boxes.append(Box(kind, _clip(x0, y0, x1, y1, w, h)))
    return AnnotatedImage(image_path, w, h, boxes)


def read_voc_dir(data_dir: Path, images_dir: Path | None = None) -> list[AnnotatedImage]:
    """All ``*.xml`` of ``data_dir/Annotations`` (or of ``data_dir`` itself).

    Images: ``images_dir`` if given, else ``JPEGImages/`` beside ``Annotations/``.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise AnnotationError(f"annotation folder not found: {data_dir}")
    ann_dir = data_dir / "Annotations" if (data_dir / "Annotations").is_dir() else data_dir
    xmls = sorted(ann_dir.glob("*.xml"))
    if not xmls:
        raise AnnotationError(f"no VOC *.xml files in {ann_dir}")
    if images_dir is None:
        base = ann_dir.parent
        images_dir = base / "JPEGImages"
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise AnnotationError(f"image folder not found: {images_dir} (give --images)")
    return [read_voc_file(x, images_dir) for x in xmls]


def read_yolo_file(label_path: Path, image_path: Path) -> AnnotatedImage:
    """One YOLO label file for one image."""
    try:
        with Image.open(image_path) as im:
            w, h = im.size
    except OSError as exc:
        raise AnnotationError(f"{image_path}: not a readable image ({exc})") from exc
    boxes = []
    try:
        lines = label_path.read_text().splitlines()
    except OSError as exc:
        raise AnnotationError(f"{label_path}: cannot read ({exc})") from exc
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        try:
            cls = int(float(parts[0]))
            cx, cy, bw, bh = (float(v) for v in parts[1:5])
        except (ValueError, IndexError) as exc:
            raise AnnotationError(f"{label_path.name}:{n}: expected 'cls cx cy w h'") from exc
        if not 0 <= cls < len(YOLO_CLASSES):
            logger.debug("%s:%d: skipping class %d", label_path.name, n, cls)
            continue
        box = _clip((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h, w, h)
        boxes.append(Box(YOLO_CLASSES[cls], box))
    return AnnotatedImage(image_path, w, h, boxes)


def read_yolo_dir(data_dir: Path, split: str | None = None, images_dir: Path | None = None) -> list[AnnotatedImage]:
    """A YOLO data set.

    Accepted layouts: ``data_dir/images[/split]`` + ``data_dir/labels[/split]`` (TXL-PBC with
    ``split="test"``), or ``data_dir`` itself holding the label files with ``images_dir`` given.
    Images without a label file are read as having no cells; label files without an image are
    an error.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise AnnotationError(f"annotation folder not found: {data_dir}")
    if (data_dir / "labels").is_dir():
        labels_dir = data_dir / "labels"
        img_dir = Path(images_dir) if images_dir else data_dir / "images"
        if split:
            labels_dir = labels_dir / split
            if images_dir is None:
                img_dir = img_dir / split
    else:
        labels_dir = data_dir
        if images_dir is None:
            raise AnnotationError(f"{data_dir} has no labels/ folder; give the image folder too")
        img_dir = Path(images_dir)
    if not labels_dir.is_dir():
        raise AnnotationError(f"label folder not found: {labels_dir}")
    if not img_dir.is_dir():
        raise AnnotationError(f"image folder not found: {img_dir}")
    out = []
    for image_path in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        label_path = labels_dir / f"{image_path.stem}.txt"
        if label_path.is_file():
            out.append(read_yolo_file(label_path, image_path))
        else:
            with Image.open(image_path) as im:
                w, h = im.size
            out.append(AnnotatedImage(image_path, w, h, []))
    if not out:
        raise AnnotationError(f"no images in {img_dir}")
    return out


#: Split entries of a YOLO ``data.yaml``, in the order ``evaluate-detection`` prefers one.
YOLO_SPLIT_KEYS = ("test", "val", "train")


def read_yolo_data_yaml(path: Path) -> dict[str, Path]:
    """The split entries of a YOLO ``data.yaml``: ``{"train"|"val"|"test": image folder}``.

    Entries are resolved as YOLO does: relative to the file's ``path:`` key when it has one, else to
    the folder holding the file. Only single-folder entries are read (not lists or ``.txt`` lists).

    Raises:
        AnnotationError: when the file cannot be read, is not a mapping, or names no split.
    """
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise AnnotationError(f"{path}: not a readable YOLO data.yaml ({exc.__class__.__name__})") from exc
    if not isinstance(doc, dict):
        raise AnnotationError(f"{path}: not a YOLO data.yaml (expected a mapping with train/val/test)")
    base = path.parent
    if isinstance(doc.get("path"), str) and doc["path"].strip():
        p = Path(doc["path"])
        base = p if p.is_absolute() else base / p
    out: dict[str, Path] = {}
    for key in YOLO_SPLIT_KEYS:
        entry = doc.get(key)
        if isinstance(entry, str) and entry.strip():
            p = Path(entry)
            out[key] = (p if p.is_absolute() else base / p).resolve()
    if not out:
        raise AnnotationError(f"{path}: names no train/val/test image folder")
    return out


def _labels_for(images_dir: Path) -> Path:
    """YOLO's rule: the label folder is the image folder with its last ``images`` part → ``labels``."""
    parts = list(images_dir.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    raise AnnotationError(f"{images_dir}: no 'images' folder in the path to find its labels by")


def read_yolo_split(data_yaml: Path, split: str | None = None) -> tuple[str, list[AnnotatedImage]]:
    """One split of the YOLO set a ``data.yaml`` describes: ``split`` if given, else the first of
    ``test``, ``val``, ``train`` it names. Returns the split's name and its images.

    Raises:
        AnnotationError: on an unreadable file, a split it does not name, or missing folders.
    """
    splits = read_yolo_data_yaml(data_yaml)
    if split is None:
        split = next(k for k in YOLO_SPLIT_KEYS if k in splits)
    if split not in splits:
        raise AnnotationError(f"{data_yaml}: no {split!r} entry (it names {', '.join(splits)})")
    images_dir = splits[split]
    if not images_dir.is_dir():
        raise AnnotationError(f"{data_yaml}: {split} image folder not found: {images_dir}")
    return split, read_yolo_dir(_labels_for(images_dir), images_dir=images_dir)
