"""fracture.data.presets: decode to uint8 (S, S, 3) and augment deterministically for a given generator."""

import numpy as np
import pytest
from PIL import Image

from fracture.core.names import IMAGE, LABEL, PATH
from fracture.data.presets import augment, decode_batch, decode_resize

SIZE = 32


@pytest.fixture
def grey_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "grey.jpg"
    Image.fromarray(rng.integers(0, 256, (50, 40), dtype=np.uint8), mode="L").save(path, quality=95)
    return path


@pytest.fixture
def rgb_png(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "colour.png"
    pixels = rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)
    pixels[..., 0] = 255  # a clearly non-grey image
    pixels[..., 2] = 0
    Image.fromarray(pixels, mode="RGB").save(path)
    return path


@pytest.fixture
def large_jpeg(tmp_path):
    path = tmp_path / "large.jpg"
    yy, xx = np.mgrid[0:1800, 0:1500]
    Image.fromarray(((xx + yy) % 256).astype(np.uint8), mode="L").convert("RGB").save(path, quality=90)
    return path


def _images(seed=0, n=3, size=SIZE):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("which", ["grey_jpeg", "rgb_png", "large_jpeg"])
def test_decode_resize_shape_and_dtype(request, which):
    image = decode_resize(request.getfixturevalue(which), SIZE)
    assert image.shape == (SIZE, SIZE, 3)
    assert image.dtype == np.uint8


def test_greyscale_is_replicated_to_three_equal_channels(grey_jpeg):
    image = decode_resize(grey_jpeg, SIZE)
    assert np.array_equal(image[..., 0], image[..., 1])
    assert np.array_equal(image[..., 1], image[..., 2])
    assert image.std() > 0  # a real picture, not a blank


def test_rgb_keeps_its_colours(rgb_png):
    image = decode_resize(rgb_png, SIZE)
    assert (image[..., 0] > 200).all() and (image[..., 2] < 50).all()


def test_decode_matches_pil_resize(grey_jpeg):
    with Image.open(grey_jpeg) as img:
        expected = np.asarray(img.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    assert np.array_equal(decode_resize(grey_jpeg, SIZE), expected)


def test_decode_is_deterministic(large_jpeg):
    assert np.array_equal(decode_resize(large_jpeg, SIZE), decode_resize(large_jpeg, SIZE))


def test_decode_batch_drops_path_and_adds_image(grey_jpeg, rgb_png, large_jpeg):
    batch = {
        PATH: np.array([str(grey_jpeg), str(rgb_png), str(large_jpeg)]),
        LABEL: np.array([1, 0, 1]),
        "image_id": np.array(["a", "b", "c"]),
    }
    out = decode_batch(batch, size=SIZE)
    assert PATH not in out
    assert set(out) == {IMAGE, LABEL, "image_id"}
    assert out[IMAGE].shape == (3, SIZE, SIZE, 3) and out[IMAGE].dtype == np.uint8
    np.testing.assert_array_equal(out[LABEL], [1, 0, 1])
    np.testing.assert_array_equal(out["image_id"], ["a", "b", "c"])
    assert np.array_equal(out[IMAGE][1], decode_resize(rgb_png, SIZE))
    assert PATH in batch  # the input batch is not mutated


def test_augment_keeps_shape_and_dtype_and_changes_pixels():
    images = _images()
    out = augment(images, rng=np.random.default_rng(0))
    assert out.shape == images.shape and out.dtype == np.uint8
    assert out is not images
    assert not np.array_equal(out, images)
    for before, after in zip(images, out, strict=True):
        assert not np.array_equal(before, after)


def test_augment_does_not_modify_its_input():
    images = _images()
    copy = images.copy()
    augment(images, rng=np.random.default_rng(0))
    assert np.array_equal(images, copy)


def test_augment_is_deterministic_for_a_seed_and_varies_across_seeds():
    images = _images()
    a = augment(images, rng=np.random.default_rng(42))
    b = augment(images, rng=np.random.default_rng(42))
    c = augment(images, rng=np.random.default_rng(43))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_augment_of_a_constant_image_stays_sane():
    images = np.full((2, SIZE, SIZE, 3), 128, dtype=np.uint8)
    out = augment(images, rng=np.random.default_rng(0))
    assert out.shape == images.shape and out.dtype == np.uint8
    as_float = out.astype(np.float32) / 255
    assert np.isfinite(as_float).all()
    # Rotation/shift only ever brings in the black fill: every pixel is the constant or darker.
    assert out.max() <= 128 and (out == 128).mean() > 0.5


@pytest.mark.parametrize("strength", ["seed", "light"])
def test_augment_with_per_image_seeds_depends_only_on_each_seed(strength):
    # An image's view must not depend on its batch-mates: the same rows batched differently (as a
    # shuffle buffer or another worker count does) get the same views.
    images = _images(n=4)
    seeds = [[17, 0, row] for row in range(4)]
    whole = augment(images, strength=strength, seeds=seeds)
    halves = np.concatenate(
        [
            augment(images[:2], strength=strength, seeds=seeds[:2]),
            augment(images[2:], strength=strength, seeds=seeds[2:]),
        ]
    )
    assert np.array_equal(whole, halves)
    next_epoch = augment(images, strength=strength, seeds=[[17, 1, row] for row in range(4)])
    assert not np.array_equal(whole, next_epoch)


def test_light_augment_only_flips_and_shifts():
    images = _images(n=3)
    out = augment(images, strength="light", rng=np.random.default_rng(0))
    # a flip and a cyclic shift move pixels but keep every value: the histogram is unchanged
    for before, after in zip(images, out, strict=True):
        assert np.array_equal(np.sort(before, axis=None), np.sort(after, axis=None))
    assert np.array_equal(augment(images, strength="none", rng=np.random.default_rng(0)), images)


def test_augment_refuses_an_unknown_strength_and_ambiguous_seeding():
    with pytest.raises(ValueError, match="strength"):
        augment(_images(n=1), strength="heavy", rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="exactly one"):
        augment(_images(n=1))
