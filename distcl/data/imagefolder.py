"""ImageFolder trees: `ROOT/<split>/<class>/<image>`, as torchvision's ImageFolder and ImageNet.

Classes are the sub-folders of `ROOT/train` (of the split's own folder when there is no
`train`), sorted by name, numbered from 0, so every split shares one numbering; a split with a
class folder that `train` lacks is refused. Images are found by extension (EXTENSIONS, any
case), sorted per class, decoded lazily with Pillow and converted to RGB. The `test` split reads
`ROOT/test`, or `ROOT/val` when there is no `test` folder (ImageNet ships train and val).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distcl.data.source_types import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def _classes(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


class ImageFolderSource:
    """Lazily decoded `(H x W x 3 uint8, label)` pairs of one split; sizes may differ."""

    name = "imagefolder"
    channels = 3

    def __init__(self, root: str, split: str):
        if not root:
            raise DataError(
                "data.dataset=imagefolder needs the tree's location: set data.root=DIR (or "
                "distcl prepare --root DIR), where DIR/<split>/<class>/*.jpg"
            )
        base = Path(root)
        folder = base / split
        if split == "test" and not folder.is_dir() and (base / "val").is_dir():
            folder = base / "val"
        if not folder.is_dir():
            found = _classes(base) if base.is_dir() else []
            raise DataError(
                f"ImageFolder split folder {folder} not found (layout: {base}/<split>/<class>/"
                f"*.jpg; folders there: {', '.join(found) or 'none'})"
            )
        self.split, self.folder = split, folder
        self.classes = _classes(base / "train") if (base / "train").is_dir() else _classes(folder)
        index = {c: i for i, c in enumerate(self.classes)}
        extra = sorted(set(_classes(folder)) - set(index))
        if extra:
            raise DataError(
                f"{folder} has class folders that {base / 'train'} lacks: {', '.join(extra[:5])}"
            )
        self.files: list[Path] = []
        labels = []
        for name in _classes(folder):
            files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in EXTENSIONS)
            self.files += files
            labels += [index[name]] * len(files)
        if not self.files:
            raise DataError(
                f"no images ({', '.join(EXTENSIONS)}) under {folder}/<class>/; check data.root"
            )
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.files[i]) as im:
                image = np.asarray(im.convert("RGB"))  # H x W x 3 uint8
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"cannot decode {self.files[i]}: {exc}; remove or fix it") from None
        return image, int(self.labels[i])

    @property
    def resolution(self) -> int:
        """The shorter side of the first image (sizes may differ; the sidecar has the spread)."""
        return int(min(self[0][0].shape[:2]))
