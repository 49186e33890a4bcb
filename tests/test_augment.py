"""Augmentation ops and the view generator: shapes, value range, reproducibility, and what each op does."""

import pytest
import torch

from nocollapse.augment import AugmentConfig, ViewGenerator
from nocollapse.augment import ops


def images(batch=8, channels=1, side=28, seed=0):
    return torch.randint(0, 256, (batch, channels, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("channels", [1, 3])
def test_views_have_the_right_shape_and_range_and_are_reproducible(channels):
    generator = ViewGenerator(AugmentConfig(num_views=3, crop_size=20, blur_prob=(1.0, 0.5, 0.0), solarize_prob=(0.0, 0.5, 1.0)))
    x = images(channels=channels)
    a = generator(x, torch.Generator().manual_seed(5))
    b = generator(x, torch.Generator().manual_seed(5))
    c = generator(x, torch.Generator().manual_seed(6))
    assert a.shape == (3, 8, channels, 20, 20) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1]), "views of one image must differ"


def test_normalisation_uses_mean_and_std():
    x = images(batch=64)
    plain = ViewGenerator(AugmentConfig())(x, torch.Generator().manual_seed(0))
    normalised = ViewGenerator(AugmentConfig(mean=(0.5,), std=(0.25,)))(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(normalised, (plain - 0.5) / 0.25)


def test_full_crop_without_flip_is_the_identity():
    x = torch.rand(4, 3, 16, 16)
    out = ops.random_resized_crop(x, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.0)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    flipped = ops.random_resized_crop(x, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=1.0)
    torch.testing.assert_close(flipped, x.flip(-1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels, image, size, scale, ratio", [
    (1, (28, 28), 28, (0.08, 1.0), (3 / 4, 4 / 3)),
    (3, (32, 32), 32, (0.08, 1.0), (3 / 4, 4 / 3)),
    (3, (32, 32), 20, (0.2, 1.0), (3 / 4, 4 / 3)),  # downsampling
    (3, (17, 17), 40, (0.08, 1.0), (3 / 4, 4 / 3)),  # upsampling
    (3, (24, 40), (16, 48), (0.08, 1.0), (3 / 4, 4 / 3)),  # non-square image and output
    (1, (32, 32), 32, (0.001, 0.01), (0.1, 10.0)),  # tiny, extreme crops
    (1, (32, 32), 32, (1.0, 1.0), (0.05, 20.0)),  # crops clipped to the image
], ids=["fmnist", "cifar", "down", "up", "non-square", "tiny", "clipped"])
def test_crop_equals_grid_sample_on_the_same_rectangles(channels, image, size, scale, ratio):
    """The separable resampling against torch's grid_sample over the rectangles the same draws give."""
    import math
    import torch.nn.functional as F

    x = torch.rand(64, channels, *image, generator=torch.Generator().manual_seed(0))
    out = ops.random_resized_crop(x, size, scale=scale, ratio=ratio, generator=torch.Generator().manual_seed(1))
    # Redraw the same parameters, in the op's order, and sample with an affine grid instead.
    generator = torch.Generator().manual_seed(1)
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(64, generator=generator)
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(64, generator=generator))
    width, height = torch.sqrt(area * aspect).clamp(max=1), torch.sqrt(area / aspect).clamp(max=1)
    centre_x = (1 - width) * (2 * torch.rand(64, generator=generator) - 1)
    centre_y = (1 - height) * (2 * torch.rand(64, generator=generator) - 1)
    sign = 1 - 2 * (torch.rand(64, generator=generator) < 0.5).float()
    theta = torch.zeros(64, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = width * sign, centre_x, height, centre_y
    out_size = (size, size) if isinstance(size, int) else size
    grid = F.affine_grid(theta, [64, channels, *out_size], align_corners=False)
    expected = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    assert (sign < 0).any() and (sign > 0).any()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_crop_refuses_integer_images():
    with pytest.raises(TypeError, match="floating-point"):
        ops.random_resized_crop(images(), 28)


def test_crop_copies_are_the_crops_of_the_repeated_batch():
    x = torch.rand(8, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    copied = ops.random_resized_crop(x, 10, copies=3, generator=torch.Generator().manual_seed(4))
    repeated = ops.random_resized_crop(x.repeat(3, 1, 1, 1), 10, generator=torch.Generator().manual_seed(4))
    assert copied.shape == (24, 3, 10, 10)
    torch.testing.assert_close(copied, repeated, rtol=0, atol=1e-6)


def test_crop_area_follows_the_scale():
    # A bright square in the centre: small crops magnify it, so its share of the output grows.
    x = torch.zeros(256, 1, 32, 32)
    x[:, :, 12:20, 12:20] = 1
    small = ops.random_resized_crop(x, 32, scale=(0.25, 0.25), ratio=(1, 1), generator=torch.Generator().manual_seed(0))
    full = ops.random_resized_crop(x, 32, scale=(1.0, 1.0), ratio=(1, 1), generator=torch.Generator().manual_seed(0))
    assert full.mean().item() == pytest.approx(64 / 1024, rel=0.05)
    assert small.sum(dim=(1, 2, 3)).max().item() == pytest.approx(4 * 64, rel=0.1)


def test_blur_preserves_constants_and_smooths_noise():
    constant = torch.full((2, 1, 12, 12), 0.3)
    sigma = torch.tensor([0.5, 2.0])
    torch.testing.assert_close(ops.gaussian_blur(constant, sigma, 5), constant)
    noise = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    blurred = ops.gaussian_blur(noise, sigma, 5)
    assert blurred[1].std() < blurred[0].std() < noise.std()
    kernels = ops.gaussian_kernels(torch.tensor([1.0]), 7)
    assert kernels.sum().item() == pytest.approx(1.0)


def test_colour_ops_against_their_definitions():
    x = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    factor = torch.tensor([0.5, 1.0, 1.5])
    torch.testing.assert_close(ops.adjust_brightness(x, factor), (x * factor.view(-1, 1, 1, 1)).clamp(0, 1))
    gray = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    torch.testing.assert_close(ops.grayscale(x)[:, 0], gray)
    mean = gray.mean(dim=(1, 2)).view(-1, 1, 1, 1)
    torch.testing.assert_close(ops.adjust_contrast(x, factor), (factor.view(-1, 1, 1, 1) * x + (1 - factor.view(-1, 1, 1, 1)) * mean).clamp(0, 1))
    torch.testing.assert_close(ops.adjust_saturation(x, torch.zeros(3)), gray.unsqueeze(1).expand_as(x))
    torch.testing.assert_close(ops.solarize(x), torch.where(x >= 0.5, 1 - x, x))


def test_hue_shift_round_trips_and_rotates_primaries():
    x = torch.rand(5, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ops.adjust_hue(x, torch.zeros(5)), x, atol=1e-5, rtol=0)
    there = ops.adjust_hue(x, torch.full((5,), 0.3))
    torch.testing.assert_close(ops.adjust_hue(there, torch.full((5,), -0.3)), x, atol=1e-5, rtol=0)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    green = ops.adjust_hue(red, torch.tensor([1 / 3]))
    torch.testing.assert_close(green.flatten(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-5, rtol=0)


def test_hue_shift_against_colorsys():
    """Every pixel against Python's own RGB → HSV → RGB, greys and saturated primaries included."""
    import colorsys

    generator = torch.Generator().manual_seed(2)
    x = torch.rand(6, 3, 5, 5, generator=generator)
    x[0, :, 0, 0] = 0.4  # a grey pixel: any shift leaves it
    x[1, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0])
    x[2, :, 0, 0] = torch.tensor([0.7, 0.7, 0.2])  # R and G tie for the maximum
    x[3] = 0.0  # black
    shift = torch.tensor([0.5, -0.5, 0.1, -0.37, 0.0, 0.25])
    expected = torch.empty_like(x)
    for i in range(6):
        for row in range(5):
            for column in range(5):
                hue, saturation, value = colorsys.rgb_to_hsv(*x[i, :, row, column].tolist())
                expected[i, :, row, column] = torch.tensor(colorsys.hsv_to_rgb((hue + shift[i].item()) % 1.0, saturation, value))
    torch.testing.assert_close(ops.adjust_hue(x, shift), expected, rtol=0, atol=1e-5)


def test_jitter_applies_with_its_probability():
    x = torch.rand(512, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    never = ViewGenerator(AugmentConfig(jitter_prob=0.0))._colour_jitter(x.clone(), torch.Generator().manual_seed(1))
    assert torch.equal(never, x)
    always = ViewGenerator(AugmentConfig(jitter_prob=1.0))._colour_jitter(x.clone(), torch.Generator().manual_seed(1))
    changed = (always != x).flatten(1).any(dim=1).float().mean().item()
    assert changed == 1.0
    sometimes = ViewGenerator(AugmentConfig(jitter_prob=0.8))._colour_jitter(x.clone(), torch.Generator().manual_seed(1))
    assert 0.7 < (sometimes != x).flatten(1).any(dim=1).float().mean().item() < 0.9


def test_an_op_that_no_sample_draws_leaves_the_views_alone():
    """Two images, blur with probability 1%: most calls blur nothing, which must not reach the blur at all."""
    config = AugmentConfig(blur_prob=(0.01,), solarize_prob=(0.0,), jitter_prob=0.0)
    views = ViewGenerator(config)(images(batch=2), torch.Generator().manual_seed(0))
    assert views.shape == (2, 2, 1, 28, 28) and torch.isfinite(views).all()


def test_bad_config_is_reported():
    with pytest.raises(ValueError, match="crop_scale"):
        ViewGenerator(AugmentConfig(crop_scale=(0.5, 0.2)))
    with pytest.raises(ValueError, match="num_views"):
        ViewGenerator(AugmentConfig(num_views=1))
    with pytest.raises(ValueError, match="blur_prob"):
        ViewGenerator(AugmentConfig(blur_prob=(1.5,)))


def test_views_are_asymmetric_as_configured():
    # Identity crop, no flip or jitter: view 0 must be blurred only, view 1 solarized only.
    config = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0,
                           blur_prob=(1.0, 0.0), blur_sigma=(1.0, 1.0), solarize_prob=(0.0, 1.0))
    x = images(batch=4)
    views = ViewGenerator(config)(x, torch.Generator().manual_seed(0))
    plain = x.float() / 255
    torch.testing.assert_close(views[0], ops.gaussian_blur(plain, torch.ones(4), 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(views[1], ops.solarize(plain), atol=1e-5, rtol=0)


@pytest.mark.parametrize("by_index", [True, False], ids=["by index (CPU)", "by where (GPU)"])
def test_adjustments_apply_in_each_samples_own_order(by_index):
    """Both ways of applying the colour adjustments give, for every sample, its own sequence applied one op at a time."""
    from nocollapse.augment import ops
    from nocollapse.augment.views import apply_in_order

    generator = torch.Generator().manual_seed(0)
    n = 24
    x = torch.rand(n, 3, 8, 8, generator=generator)
    adjustments = [(ops.adjust_brightness, 0.6 + 0.8 * torch.rand(n, generator=generator)),
                   (ops.adjust_contrast, 0.6 + 0.8 * torch.rand(n, generator=generator)),
                   (ops.adjust_saturation, 0.6 + 0.8 * torch.rand(n, generator=generator)),
                   (ops.adjust_hue, 0.2 * torch.rand(n, generator=generator) - 0.1)]
    order = torch.argsort(torch.rand(n, 4, generator=generator), dim=1)
    expected = []
    for i in range(n):  # the reference: one sample at a time, in its order
        y = x[i : i + 1]
        for index in order[i].tolist():
            adjust, parameter = adjustments[index]
            y = adjust(y, parameter[i : i + 1])
        expected.append(y)
    assert len({tuple(row) for row in order.tolist()}) > 10, "many different orders, or the test shows little"
    torch.testing.assert_close(apply_in_order(x.clone(), adjustments, order, by_index=by_index), torch.cat(expected), rtol=0, atol=1e-6)


def test_views_are_the_same_whether_ops_select_samples_by_index_or_by_where(monkeypatch):
    """The CPU form (gather the samples an op applies to) and the GPU form (transform all, keep with where)
    draw the same random numbers and give the same views: colour jitter, grayscale, blur and solarize."""
    from nocollapse.augment import views

    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    config = AugmentConfig(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    by_index = ViewGenerator(config)(images, torch.Generator().manual_seed(1))
    monkeypatch.setattr(views, "selects_by_index", lambda device: False)
    by_where = ViewGenerator(config)(images, torch.Generator().manual_seed(1))
    torch.testing.assert_close(by_index, by_where, rtol=0, atol=1e-5)
