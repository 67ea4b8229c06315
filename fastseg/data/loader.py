"""Batching and loading: collation of variable box counts, a resumable sampler, the DataLoader factory."""
from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def pad_images(images, size_divisible: int = 1) -> torch.Tensor:
    """Stack [3,H,W] images of possibly different sizes into one [N,3,Hmax,Wmax] batch, zero padded at
    the bottom/right (box coordinates are unchanged by such padding)."""
    if isinstance(images, torch.Tensor):
        return images
    h = max(i.shape[-2] for i in images)
    w = max(i.shape[-1] for i in images)
    if size_divisible > 1:
        h = math.ceil(h / size_divisible) * size_divisible
        w = math.ceil(w / size_divisible) * size_divisible
    if all(i.shape[-2:] == (h, w) for i in images):
        return torch.stack(list(images))
    out = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    for i, img in enumerate(images):
        out[i, :, : img.shape[-2], : img.shape[-1]].copy_(img)
    return out


def collate(batch):
    """``[(image, target), ...] -> (images [N,3,H,W], [target, ...])``: targets stay a list because
    every image has its own number of boxes."""
    images, targets = zip(*batch)
    return pad_images(list(images)), list(targets)


class ResumableSampler(DistributedSampler):
    """DistributedSampler that (1) can start mid-epoch, so a resumed run sees exactly the samples an
    uninterrupted run would, and (2) yields ``(index, augmentation seed)`` so random augmentations are a
    pure function of (seed, epoch, position) whatever the worker count.

    Works for a single process too (``num_replicas=1, rank=0``).
    """

    def __init__(self, dataset, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.start = 0

    def set_start(self, start: int):
        """Skip the first ``start`` samples (of this rank) of the current epoch."""
        self.start = int(start)

    def __iter__(self):
        indices = list(super().__iter__())
        for pos in range(self.start, len(indices)):
            # one number per (seed, epoch, rank-local position, rank)
            aug = (self.seed * 1_000_003 + self.epoch) * 1_000_003 + pos * self.num_replicas + self.rank
            yield (indices[pos], aug & 0x7FFFFFFFFFFFFFFF)

    def __len__(self):
        return self.num_samples - self.start


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = True, num_workers: int = 0, seed: int = 0,
                drop_last: bool = True, num_replicas: int = 1, rank: int = 0, pin_memory: bool | None = None,
                sampler=None) -> DataLoader:
    """DataLoader for detection data: ``collate`` for variable box counts, pinned memory when CUDA is
    there (so host-to-device copies can run asynchronously with ``non_blocking=True``), persistent
    workers with prefetching so the next batches are decoded while the model runs.

    Training loaders get a ``ResumableSampler`` (sharded across ``num_replicas`` DDP ranks); evaluation
    loaders (``shuffle=False, drop_last=False``) read the data in order.
    """
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if sampler is None and (shuffle or num_replicas > 1):
        sampler = ResumableSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                                   drop_last=drop_last)
    kw = {}
    if num_workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=4)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      num_workers=num_workers, collate_fn=collate, pin_memory=pin_memory,
                      drop_last=drop_last, **kw)
