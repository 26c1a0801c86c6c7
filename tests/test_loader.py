"""Device-resident batches: crops and flips are right; the order depends on (seed, epoch)."""

import torch

from kdflow.loader import DeviceBatches, _random_crop, channel_stats, epoch_generator


def _batches(images, labels, batch_size=4, **kw):
    mean, std = torch.zeros(3), torch.ones(3)
    return DeviceBatches(
        images, labels, batch_size=batch_size, device=torch.device("cpu"), mean=mean, std=std, **kw
    )


def test_random_crop_equals_a_per_image_crop():
    x = torch.randint(0, 256, (5, 3, 6, 7), dtype=torch.uint8)
    shifts = torch.tensor([[0, 0], [4, 4], [2, 1], [0, 3], [1, 4]])
    out = _random_crop(x, shifts, pad=2)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        assert torch.equal(out[i], padded[:, dy : dy + 6, dx : dx + 7])


def test_epoch_is_a_function_of_seed_and_epoch():
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(10)
    b = _batches(images, labels, train=True, crop_padding=2, flip=True)

    def run(seed, epoch):
        return [(x.clone(), y.clone()) for x, y in b.epoch(seed, epoch)]

    first = run(0, 3)
    torch.manual_seed(123)  # global RNG state must not matter
    again = run(0, 3)
    assert all(
        torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
        for a, c in zip(first, again, strict=True)
    )
    other = run(0, 4)
    assert not all(torch.equal(a[1], c[1]) for a, c in zip(first, other, strict=True))
    # a whole epoch visits every image at most once; the partial last batch is dropped
    seen = torch.cat([y for _, y in first])
    assert len(seen) == 8 and len(set(seen.tolist())) == 8


def test_evaluation_is_in_order_unaugmented_and_complete():
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    b = _batches(images, torch.arange(10), train=False, crop_padding=4, flip=True)
    xs, ys = zip(*b.epoch(0, 0), strict=True)
    assert torch.equal(torch.cat(ys), torch.arange(10))
    assert torch.allclose(torch.cat(xs), images.float() / 255)


def test_flip_mirrors_half_the_images_at_the_positions_the_seed_draws():
    # every image is either itself or its mirror image; which ones are mirrored is drawn from
    # the (seed, epoch) generator (after the order, one draw per image of a batch), and about
    # half of them are: a loader that never (or always) flips fails here
    n, batch = 64, 16
    images = torch.randint(0, 256, (n, 3, 4, 6), dtype=torch.uint8, generator=_generator(0))
    b = _batches(images, torch.arange(n), batch_size=batch, train=True, flip=True)
    seen, drawn = [], []
    for seed in range(4):
        g = epoch_generator(seed, 0)
        order = torch.randperm(n, generator=g)
        for i, (x, y) in enumerate(b.epoch(seed, 0)):
            assert torch.equal(y, order[i * batch : (i + 1) * batch])
            drawn += (torch.rand(batch, generator=g) < 0.5).tolist()
            for img, label in zip(x, y, strict=True):
                original = images[label].float() / 255
                assert not torch.equal(original, original.flip(2))  # a flip shows
                assert torch.equal(img, original) or torch.equal(img, original.flip(2))
                seen.append(torch.equal(img, original.flip(2)))
    assert seen == drawn
    assert 0.4 < sum(seen) / len(seen) < 0.6, sum(seen)


def test_without_flip_no_image_is_mirrored():
    images = torch.randint(0, 256, (8, 3, 4, 6), dtype=torch.uint8, generator=_generator(1))
    b = _batches(images, torch.arange(8), train=True, flip=False)
    for seed in range(3):
        for x, y in b.epoch(seed, 0):
            assert torch.equal(x, images[y].float() / 255)


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def test_channel_stats():
    images = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    images[:, 1] = 255
    mean, std = channel_stats(images)
    assert mean.tolist() == [0.0, 1.0, 0.0] and std.tolist() == [0.0, 0.0, 0.0]
