"""Loader throughput with full SimCLR augmentations: FFCV + distcl ops vs torchvision DataLoader.

Both variants produce two augmented float32 views per image with the same recipe
(Chen et al. 2020, App. A, as distcl's `simclr` preset): RandomResizedCrop (0.08-1), flip,
colour jitter with p=0.8 (strength 0.5 at 32 px, 1.0 at 96 px), greyscale p=0.2, plus
Gaussian blur p=0.5 (kernel 9, sigma 0.1-2) at 96 px, then uint8 -> float in [0, 1].
- ffcv: `ffcv.loader.Loader` over a temporary `.beton` (32 px raw, 96 px JPEG quality 90),
  pipelines from `distcl.data.views.view_pipelines("simclr", ...)`, num_workers=2 (numba
  threads).
- torchvision: `torch.utils.data.DataLoader(num_workers=2, persistent_workers=True)` over the
  same images in memory (32 px: uint8 arrays; 96 px: the JPEG bytes, decoded per item with
  `torchvision.io.decode_jpeg`), `torchvision.transforms.v2` per item.
Images are synthetic but structured (gradients, rectangles, noise). Each timed call is one
pass over the variant's images; the variants alternate (harness.measure_alternating) after a
warm-up pass of each, which holds FFCV's numba compile and the DataLoader's worker start.
Throughput counts images per second (two views of one image count once); batch size 256.

Run: python benchmarks/bench_loader.py [--quick] [--json PATH]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

from distcl.data.views import view_pipelines  # noqa: E402

BATCH = 256
WORKERS = 2  # the machine's 2 cores, for both loaders


def synthetic_images(n: int, side: int, seed: int = 0) -> np.ndarray:
    """n x side x side x 3 uint8: a colour gradient, two flat rectangles and mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / (side - 1)  # side x side in [0, 1]
    images = np.empty((n, side, side, 3), np.uint8)
    for i in range(n):
        a, b = rng.uniform(-120, 120, (2, 1, 1, 3))
        img = rng.uniform(60, 200, 3) + a * yy[..., None] + b * xx[..., None]
        for _ in range(2):
            y0, x0 = rng.integers(0, side - 4, 2)
            h, w = rng.integers(3, side // 2, 2)
            img[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 6, img.shape)
        images[i] = np.clip(img, 0, 255)
    return images


def write_beton(path: Path, images: np.ndarray, write_mode: str) -> None:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    class Indexed:
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int):
            return images[i], i % 10

    field = RGBImageField(write_mode=write_mode, jpeg_quality=90)
    writer = DatasetWriter(str(path), {"image": field, "label": IntField()}, num_workers=WORKERS)
    writer.from_indexed_dataset(Indexed())


def ffcv_pass(path: Path, side: int):
    """One-epoch callable over a 2-view FFCV Loader with the simclr preset."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.pipeline import PipelineSpec
    from ffcv.transforms import ToTensor

    views = view_pipelines("simclr", side, 3, n_views=2)  # float32 B x 3 x H x W in [0, 1]
    loader = Loader(
        str(path),
        batch_size=BATCH,
        num_workers=WORKERS,
        order=OrderOption.RANDOM,
        seed=0,
        drop_last=True,
        pipelines={
            "image": views[0],
            "label": [IntDecoder(), ToTensor()],
            "image_v2": PipelineSpec("image", transforms=views[1]),
        },
    )

    def run() -> int:
        n = 0
        for batch in loader:  # (view1, label, view2), float32 B x 3 x H x W
            n += batch[0].shape[0]
        assert batch[0].dtype == batch[2].dtype == torch.float32
        return n

    return run, len(loader) * BATCH


class TorchvisionTwoViews(torch.utils.data.Dataset):
    """Items `(view1, view2, label)`; images are uint8 arrays or JPEG bytes."""

    def __init__(self, items: list, side: int, jpeg: bool):
        from torchvision.transforms import v2

        s = 0.5 if side <= 64 else 1.0  # as distcl's simclr preset
        ops = [
            v2.RandomResizedCrop(side, scale=(0.08, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
            v2.RandomGrayscale(p=0.2),
        ]
        if side >= 96:
            ops.append(v2.RandomApply([v2.GaussianBlur(9, sigma=(0.1, 2.0))], p=0.5))
        ops.append(v2.ToDtype(torch.float32, scale=True))
        self.transform = v2.Compose(ops)
        self.items, self.jpeg = items, jpeg

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from torchvision.io import decode_jpeg

        item = self.items[i]
        img = decode_jpeg(item) if self.jpeg else torch.from_numpy(item).permute(2, 0, 1)
        return self.transform(img), self.transform(img), i % 10


def torchvision_pass(images: np.ndarray, jpeg: bool):
    """One-epoch callable over a torchvision DataLoader (2 workers, persistent)."""
    from torchvision.io import encode_jpeg

    if jpeg:
        items = [encode_jpeg(torch.from_numpy(im).permute(2, 0, 1), quality=90) for im in images]
    else:
        items = list(images)
    dataset = TorchvisionTwoViews(items, images.shape[1], jpeg)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        num_workers=WORKERS,
        persistent_workers=True,
        drop_last=True,
    )

    def run() -> int:
        n = 0
        for v1, _, _ in loader:
            n += v1.shape[0]
        return n

    return run, len(loader) * BATCH


def images_per_second(times: list[float], n: int) -> dict[str, float]:
    stats = harness.summarize(times)  # fastest time = highest rate
    return {"median": n / stats["median"], "min": n / stats["max"], "max": n / stats["min"]}


def main() -> None:
    args = harness.parse_args(__doc__.splitlines()[0])
    torch.set_num_threads(1)
    print("machine:", harness.machine_description())
    # (side, storage, FFCV images, torchvision images): sized so each pass takes ~1-3 s.
    settings = [(32, "raw", 20480, 1536), (96, "jpg", 6144, 512)]
    reps = 3 if args.quick else 5
    if args.quick:
        settings = [(32, "raw", 10240, 512), (96, "jpg", 3072, 256)]
    metrics: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        variants = {}
        for side, storage, n_ffcv, n_tv in settings:
            images = synthetic_images(max(n_ffcv, n_tv), side)
            path = Path(tmp) / f"bench_{side}.beton"
            write_beton(path, images[:n_ffcv], storage)
            variants[side] = {
                "ffcv": ffcv_pass(path, side),
                "torchvision": torchvision_pass(images[:n_tv], jpeg=storage == "jpg"),
            }
        # Warm-up: start the DataLoader workers first, so they fork before numba's thread
        # pool exists, then one FFCV epoch per setting to pay its numba compile.
        for name in ("torchvision", "ffcv"):
            for side in variants:
                variants[side][name][0]()
        for side, storage, _, _ in settings:
            runs = {name: run for name, (run, _) in variants[side].items()}
            counts = {name: n for name, (_, n) in variants[side].items()}
            times = harness.measure_alternating(runs, reps=reps, warmup=0)
            rates = {name: images_per_second(times[name], counts[name]) for name in runs}
            ratio = rates["ffcv"]["median"] / rates["torchvision"]["median"]
            print(f"\n{side} px ({storage}), SimCLR augmentations, 2 views, images/s:")
            print(f"  {'variant':<13}{'median':>10}{'min':>10}{'max':>10}{'images':>8}")
            for name, r in rates.items():
                print(
                    f"  {name:<13}{r['median']:>10.0f}{r['min']:>10.0f}{r['max']:>10.0f}"
                    f"{counts[name]:>8}"
                )
            print(f"  ffcv / torchvision: {ratio:.1f}x")
            metrics[f"ffcv_images_per_s_{side}px"] = round(rates["ffcv"]["median"], 1)
            metrics[f"torchvision_images_per_s_{side}px"] = round(rates["torchvision"]["median"], 1)
            metrics[f"ffcv_vs_torchvision_{side}px"] = round(ratio, 2)
    print("\nratios:", {k: v for k, v in metrics.items() if k.startswith("ffcv_vs")})
    harness.write_json(args.json, metrics)


if __name__ == "__main__":
    main()
