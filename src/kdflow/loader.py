"""Device-resident batches: uint8 data on the device; crop, flip, normalize per batch.

No DataLoader and no worker processes: for CIFAR-sized data the copy to the device happens
once, and augmentation is a handful of tensor ops per batch (airbench's recipe). The order
and the augmentation of epoch e depend only on (seed, e), so a resumed run sees the same
batches as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std per channel of uint8 images (N, C, H, W), on the 0..1 scale."""
    x = images.float().div_(255)
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator that is a pure function of (seed, epoch)."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch) % (2**63))
    return g


class DeviceBatches:
    """Batches of (normalized float images, labels) drawn from tensors kept on `device`."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        device: torch.device,
        mean: torch.Tensor,
        std: torch.Tensor,
        train: bool,
        crop_padding: int = 0,
        flip: bool = False,
        channels_last: bool = False,
    ):
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.device = device
        self.mean = mean.to(device).view(1, -1, 1, 1)
        self.std = std.to(device).view(1, -1, 1, 1)
        self.train = train
        self.crop_padding = crop_padding if train else 0
        self.flip = flip and train
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        """Batches per epoch. Training drops the last partial batch: BatchNorm's statistics of a
        few images are noise, and of one image an error."""
        n = len(self.labels)
        if self.train:
            return max(1, n // self.batch_size)
        return -(-n // self.batch_size)

    @property
    def num_images(self) -> int:
        if self.train:
            return min(len(self.labels), len(self) * self.batch_size)
        return len(self.labels)

    def epoch(self, seed: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if not self.train:
            for start in range(0, n, self.batch_size):
                idx = slice(start, start + self.batch_size)
                yield self._normalize(self.images[idx]), self.labels[idx]
            return
        g = epoch_generator(seed, epoch)
        order = torch.randperm(n, generator=g)
        pad = self.crop_padding
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            # all random draws of a batch happen on the CPU generator, in a fixed order
            shifts = torch.randint(0, 2 * pad + 1, (len(idx), 2), generator=g) if pad else None
            flips = torch.rand(len(idx), generator=g) < 0.5 if self.flip else None
            x = self.images[idx.to(self.device)]
            if shifts is not None:
                x = _random_crop(x, shifts.to(self.device), pad)
            if flips is not None:
                x = torch.where(flips.to(self.device).view(-1, 1, 1, 1), x.flip(3), x)
            yield self._normalize(x), self.labels[idx.to(self.device)]

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255).sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=self.memory_format)


def _random_crop(x: torch.Tensor, shifts: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad by `pad` and cut each image at its own (dy, dx) offset, in one gather."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (shifts[:, 0:1] + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (shifts[:, 1:2] + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channel = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, channel, rows, cols]
