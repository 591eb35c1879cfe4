"""The training feed: crop + flip against a per-image reference, its randomness, and training
with it (seeded runs repeat; data that cannot be augmented are refused)."""

import pytest
import torch
import torch.nn.functional as F

from fxharden.training.feed import Augment, PAD, crop_flip, random_crop_flip, training_batches
from fxharden.training.train import TrainConfig, train
from fxharden.zoo.data import synthetic_dataset
from fxharden.zoo.networks import LeNet5


def reference(images, offsets, flips, pad):
    """Independent: pad each image with zeros, slice the window, mirror it."""
    out = []
    for img, (r, c), f in zip(images, offsets.tolist(), flips.tolist()):
        p = F.pad(img, (pad, pad, pad, pad))
        win = p[:, r:r + img.shape[1], c:c + img.shape[2]]
        out.append(win.flip(2) if f else win)
    return torch.stack(out)


def test_crop_flip_matches_a_per_image_reference():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 8, 6), generator=g, dtype=torch.uint8)
    offsets = torch.randint(0, 2 * PAD + 1, (64, 2), generator=g)
    flips = torch.rand(64, generator=g) < 0.5
    got = crop_flip(images, offsets, flips)
    assert got.dtype == torch.uint8 and got.shape == images.shape
    assert torch.equal(got, reference(images, offsets, flips, PAD))
    centre = crop_flip(images, torch.full((64, 2), PAD), torch.zeros(64, dtype=torch.bool))
    assert torch.equal(centre, images)  # no shift, no flip: the image itself


def test_random_crop_flip_draws_uniform_offsets_and_fair_flips():
    torch.manual_seed(0)
    n = 20000
    images = torch.zeros(n, 1, 1, 2, dtype=torch.uint8)
    images[:, 0, 0, 1] = 1  # a flip moves the 1 to column 0 (with no shift)
    out = random_crop_flip(images, pad=0)
    flipped = float((out[:, 0, 0, 0] == 1).float().mean())
    assert abs(flipped - 0.5) < 5 * (0.25 / n) ** 0.5
    torch.manual_seed(1)
    a = random_crop_flip(torch.ones(n, 1, 1, 1, dtype=torch.uint8), pad=1)  # 1 of 9 windows shows the pixel
    assert abs(float(a.float().mean()) - 1 / 9) < 5 * ((1 / 9) * (8 / 9) / n) ** 0.5


def test_training_with_augmentation_repeats_for_a_seed_and_changes_the_batches():
    data = synthetic_dataset(64, seed=2)
    plain = [x for x, _ in training_batches(data, 16, torch.device("cpu"), torch.Generator().manual_seed(0))]
    torch.manual_seed(5)
    aug = [x for x, _ in training_batches(data, 16, torch.device("cpu"), torch.Generator().manual_seed(0),
                                          Augment.CROP_FLIP)]
    torch.manual_seed(5)
    again = [x for x, _ in training_batches(data, 16, torch.device("cpu"), torch.Generator().manual_seed(0),
                                            "crop_flip")]
    assert len(aug) == len(plain) == 4
    assert all(torch.equal(a, b) for a, b in zip(aug, again))
    assert not all(torch.equal(a, p) for a, p in zip(aug, plain))
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        res = train(LeNet5(), data, None, TrainConfig(epochs=1, batch_size=16, augment="crop_flip", device="cpu"))
        runs.append(res.model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_augmenting_tensors_that_are_not_images_in_memory_is_refused():
    x, y = torch.randn(32, 3, 8, 8), torch.zeros(32, dtype=torch.long)
    with pytest.raises(ValueError, match=r"augment='crop_flip' works on images held in memory.*augment='none'"):
        next(training_batches((x, y), 8, torch.device("cpu"), torch.Generator(), Augment.CROP_FLIP))
    with pytest.raises(ValueError, match=r"TrainConfig.augment must be one of \['none', 'crop_flip'\]"):
        TrainConfig(augment="mixup")
