"""Compiled FFCV augmentation ops: per-image random draws (rates, independence, random order)
against torchvision on the same draws, and a real FFCV Loader."""

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from ffcv.pipeline.compiler import Compiler
from numba import njit

from distcl.data import ffcv_ops as fops

from .aug_fixtures import assert_close, colourful_images, tv, write_beton

torch.set_num_threads(1)


# ---- the compiled ops, called the way FFCV's compiled stage calls them --------------------


@pytest.fixture(scope="module", autouse=True)
def _single_thread_compiler():
    """One numba thread: `range` instead of prange, so seeding numba's generator in this
    thread fixes the op's draws (numba's generator is separate from numpy's)."""
    Compiler.set_num_threads(1)
    torch.set_num_threads(1)


@njit
def _seed_numba(seed: int) -> None:
    np.random.seed(seed)


def _compiled(op, shape: tuple[int, ...]):
    op.declare_state_and_memory(_state(shape))
    return Compiler.compile(op.generate_code())


def _state(shape):
    from ffcv.pipeline.state import State

    return State(jit_mode=True, device=torch.device("cpu"), shape=shape, dtype=np.dtype("u1"))


@njit
def _jitter_draws(n, b, c, s, h, p, seed):
    """The draws ColorJitter makes, in its order (white-box: replays the op's generator)."""
    np.random.seed(seed)
    apply = np.random.rand(n) < p
    bright = np.random.uniform(max(0.0, 1.0 - b), 1.0 + b, n)
    contr = np.random.uniform(max(0.0, 1.0 - c), 1.0 + c, n)
    satur = np.random.uniform(max(0.0, 1.0 - s), 1.0 + s, n)
    hue = np.random.uniform(-h, h, n)
    keys = np.random.rand(n, 4)
    return apply, bright, contr, satur, hue, keys


def test_color_jitter_applies_torchvision_ops_in_a_random_order_per_image():
    strengths = (0.8, 0.8, 0.8, 0.2)
    imgs = colourful_images(64, 20, seed=1)  # 64 x 20 x 20 x 3
    fn = _compiled(fops.ColorJitter(*strengths, p=0.8), imgs.shape[1:])
    _seed_numba(123)
    out = fn(imgs.copy(), None)
    apply, bright, contr, satur, hue, keys = _jitter_draws(len(imgs), *strengths, 0.8, 123)
    tv_ops = [
        (TF.adjust_brightness, bright),
        (TF.adjust_contrast, contr),
        (TF.adjust_saturation, satur),
        (TF.adjust_hue, hue),
    ]
    orders = set()
    for i, img in enumerate(imgs):
        ref = img
        if apply[i]:
            order = tuple(np.argsort(keys[i]))
            orders.add(order)
            for k in order:
                fn_k, factors = tv_ops[k]
                ref = tv(ref, fn_k, float(factors[i]))
        assert_close(out[i], ref, f"image {i}")
    assert len(orders) >= 10  # 24 possible orders over ~51 jittered images


def test_gaussian_blur_op_draws_one_sigma_per_image():
    imgs = colourful_images(32, 24, seed=2)

    @njit
    def draws(n, seed):
        np.random.seed(seed)
        return np.random.rand(n) < 0.5, np.random.uniform(0.1, 2.0, n)

    fn = _compiled(fops.GaussianBlur(0.5, 0.1, 2.0, kernel_size=5), imgs.shape[1:])
    _seed_numba(7)
    out = fn(imgs.copy(), None)
    apply, sigma = draws(len(imgs), 7)
    assert 0 < apply.sum() < len(imgs)
    for i, img in enumerate(imgs):
        ref = tv(img, TF.gaussian_blur, [5, 5], [float(sigma[i])] * 2) if apply[i] else img
        assert_close(out[i], ref, f"blurred image {i}")


def _changed(op, imgs: np.ndarray) -> np.ndarray:
    """Per image, whether the compiled op changed it (B,)."""
    out = _compiled(op, imgs.shape[1:])(imgs.copy(), None)
    return (out != imgs).reshape(len(imgs), -1).any(axis=1)


@pytest.mark.parametrize(
    "op",
    [
        fops.ColorJitter(brightness=1.0, p=0.3),  # factor in [0, 2]: 200 unchanged only for f<1.005
        fops.RandomGrayscale(p=0.3),
        fops.GaussianBlur(p=0.3, sigma_min=1.0, kernel_size=3),  # sigma 0.1 can be a no-op
        fops.Solarization(p=0.3, threshold=0),  # threshold 0: every value is inverted
    ],
    ids=lambda op: type(op).__name__,
)
def test_per_image_rate_matches_p(op):
    n = 4000
    imgs = colourful_images(n, 8, seed=3)
    imgs[:, :, :, 1] = 200  # no pixel is already grey, none is a fixed point of solarize
    changed = _changed(op, imgs)
    # Binomial(4000, 0.3): sd 0.0072, so +-0.035 is a 4.8-sigma bound.
    assert abs(changed.mean() - 0.3) < 0.035, f"rate {changed.mean():.3f} for p=0.3"


@pytest.mark.parametrize("op_cls", [fops.RandomGrayscale, fops.Solarization, fops.GaussianBlur])
def test_images_in_one_batch_get_independent_decisions(op_cls):
    imgs = colourful_images(64, 8, seed=4)
    imgs[:, :, :, 1] = 200
    kwargs = {fops.Solarization: {"threshold": 0}, fops.GaussianBlur: {"sigma_min": 1.0}}.get(
        op_cls, {}
    )
    changed = _changed(op_cls(p=0.5, **kwargs), imgs)
    assert 0 < changed.sum() < len(imgs)  # one draw per batch would give all or none


def test_jitter_factors_differ_per_image():
    imgs = np.full((64, 4, 4, 3), 100, np.uint8)
    out = _compiled(fops.ColorJitter(brightness=0.5, p=1.0), imgs.shape[1:])(imgs.copy(), None)
    values = out[:, 0, 0, 0]
    assert len(np.unique(values)) > 20  # one factor per batch would give one value
    assert values.min() >= 50 and values.max() <= 150  # factor in [0.5, 1.5]


def test_parallel_compile_with_two_loader_workers():
    """Loader(num_workers=2) compiles the ops with prange (numba parallel=True)."""
    imgs = np.full((256, 6, 6, 3), 100, np.uint8)
    Compiler.set_num_threads(2)
    try:
        fn = _compiled(fops.ColorJitter(brightness=0.5, hue=0.1, p=0.5), imgs.shape[1:])
        out = fn(imgs.copy(), None)
    finally:
        Compiler.set_num_threads(1)
        torch.set_num_threads(1)
    changed = (out != imgs).reshape(len(imgs), -1).any(axis=1).mean()
    assert 0.35 < changed < 0.65  # Binomial(256, ~0.49): sd 0.031


def test_to_grey_channel_and_normalize():
    grey = np.random.default_rng(0).integers(0, 256, (5, 6, 7, 1), dtype=np.uint8)
    rgb = np.repeat(grey, 3, axis=3)
    to_grey = fops.ToGreyChannel()
    _, alloc = to_grey.declare_state_and_memory(_state(rgb.shape[1:]))
    assert alloc.shape == (6, 7, 1)
    out = Compiler.compile(to_grey.generate_code())(rgb, np.empty_like(grey))
    np.testing.assert_array_equal(out, grey)  # a stored grey image comes back exactly

    norm = fops.NormalizeToFloat(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    state, alloc = norm.declare_state_and_memory(_state(rgb.shape[1:]))
    assert state.dtype == np.float32 and state.shape == alloc.shape == (3, 6, 7)
    got = Compiler.compile(norm.generate_code())(rgb, np.empty((5, 3, 6, 7), np.float32))
    want = (rgb / 255.0 - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.25, 0.5])
    np.testing.assert_allclose(got, want.transpose(0, 3, 1, 2), atol=1e-5)  # B x C x H x W
    with pytest.raises(ValueError, match="NormalizeToFloat needs 1 means"):
        fops.NormalizeToFloat((0.5, 0.5, 0.5), (1, 1, 1)).declare_state_and_memory(
            _state((4, 4, 1))
        )


# ---- inside a real ffcv.loader.Loader -----------------------------------------------------


@pytest.fixture(scope="module")
def loader_batches(tmp_path_factory):
    """One epoch through a real Loader with every op (one pipeline: ~10 s of numba compile,
    mostly FFCV's own decoder). Two-view loaders are tested in test_views.py."""
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, ToTensor, ToTorchImage

    path = write_beton(tmp_path_factory.mktemp("beton") / "ops.beton", n=256, side=32)
    view = [
        RandomResizedCropRGBImageDecoder((32, 32), scale=(0.5, 1.0)),
        RandomHorizontalFlip(),
        fops.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
        fops.RandomGrayscale(p=0.5),
        fops.GaussianBlur(p=0.5, kernel_size=3),
        fops.Solarization(p=0.5),
        ToTensor(),
        ToTorchImage(channels_last=False),
    ]
    loader = Loader(
        str(path),
        batch_size=16,
        num_workers=1,
        order=OrderOption.SEQUENTIAL,
        pipelines={"image": view},
    )
    return [(images.clone(), labels.clone()) for images, labels in loader]


def test_ops_compile_and_run_inside_a_loader(loader_batches):
    assert len(loader_batches) == 16
    images, labels = loader_batches[0]
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.flatten().tolist() == [i % 10 for i in range(16)]
    # Only fops.RandomGrayscale(p=0.5) makes these colourful images grey (R == G == B everywhere).
    grey = [
        (x[:, 0] == x[:, 1]).flatten(1).all(1) & (x[:, 1] == x[:, 2]).flatten(1).all(1)
        for x, _ in loader_batches
    ]  # 16 batches of 16 bools
    rate = torch.cat(grey).float().mean()
    assert 0.38 < rate < 0.62, f"greyscale rate {rate:.3f} for p=0.5 over 256 images"
    # Per-image draws: a batch is all grey or all colour with probability 2 * 0.5**16.
    mixed = sum(0 < int(g.sum()) < len(g) for g in grey)
    assert mixed >= 15, f"only {mixed} of 16 batches mix grey and colour images"
