"""Datasets and loaders of a run: records of a manifest domain, PoseDatasets, seeded loaders,
and the iterator that mixes several loaders into one batch per step.

Every loader's order and augmentation are fixed by ``(seed, epoch)``; loaders that feed the same
step get different epoch offsets (:data:`ROLE_OFFSETS`) so two sources never share a stream.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from da_pose.config import Config
from da_pose.data import manifest
from da_pose.data.codec import HeatmapCodec
from da_pose.data.dataset import PoseDataset
from da_pose.data.normalise import normalisation
from da_pose.data.records import PoseRecord
from da_pose.errors import DaPoseError
from da_pose.train import dist
from da_pose.train.trainer import epoch_seed

# epoch offsets of the loader seeds of each role in a mixed batch (source / labelled animals: 0)
ROLE_OFFSETS = {"source": 0, "animal": 0, "target": 100_000, "other": 200_000}


def make_codec(cfg: Config) -> HeatmapCodec:
    return HeatmapCodec.from_config(cfg.data, cfg.codec)


def domain_records(cfg: Config, domain: str, split: str) -> list[PoseRecord]:
    """Records of the manifest domain named by ``cfg.data.<domain>`` (source/target/other), or of
    ``data.root`` read as ``data.format`` (a real dataset: its split ``split``)."""
    name = getattr(cfg.data, domain)
    if cfg.data.format != "manifest":
        spec = manifest.data_spec(cfg.data.root, cfg.data.format, name)
        records = manifest.parse_data_spec(spec, animal=cfg.data.animal or None, split=split,
                                           joint_map=cfg.data.joint_map or None, strict=cfg.data.strict)
    else:
        records = manifest.load_domain(cfg.data.root, name, split, strict=cfg.data.strict)
    if not records:
        raise DaPoseError(f"{cfg.data.root}: domain '{name}' split '{split}' has no samples")
    return records


def input_normalisation(cfg: Config) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``(mean, std)`` of ``(rgb / 255 - mean) / std`` for this config (``data.normalise``)."""
    return normalisation(cfg.data.normalise, cfg.data.mean_file or None, cfg.data.mean, cfg.data.std)


def make_dataset(cfg: Config, records: Sequence[PoseRecord], codec: HeatmapCodec, train: bool) -> PoseDataset:
    mean, std = input_normalisation(cfg)
    ds = PoseDataset(list(records), codec, cfg.data.input_size, train=train, aug=cfg.aug if train else None,
                     mean=mean, std=std, cache=cfg.data.cache, strict=cfg.data.strict)
    if cfg.data.cache:
        ds.prefetch(progress=False)
    return ds


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)


def make_loader(cfg: Config, ds, batch_size: int, *, shuffle: bool, epoch: int = 0,
                info: dist.DistInfo | None = None, drop_last: bool = False) -> DataLoader:
    """A DataLoader whose order and augmentation are fixed by ``(seed, epoch)``; DDP-sharded."""
    info = info or dist.DistInfo()
    gen = torch.Generator()
    gen.manual_seed(epoch_seed(cfg.seed, epoch))
    sampler = None
    if info.enabled:
        sampler = DistributedSampler(ds, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle,
                                     seed=cfg.seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      generator=gen, num_workers=cfg.data.workers, drop_last=drop_last,
                      pin_memory=torch.cuda.is_available(), worker_init_fn=_seed_worker)


def eval_loader(cfg: Config, ds) -> DataLoader:
    """Evaluation order: unshuffled, ``train.eval_batch_size`` images a batch."""
    return make_loader(cfg, ds, cfg.train.eval_batch_size, shuffle=False)


class MixedBatches:
    """``steps`` batches of ``{name: batch of that loader}``, cycling each loader as needed.

    A loader shorter than ``steps`` starts over: a new shuffle, which the loader's seeded
    generator makes the same for the same ``(seed, epoch)``. So every step sees one batch of
    every source, whatever their sizes.
    """

    def __init__(self, loaders: dict[str, DataLoader], steps: int):
        self.loaders = loaders
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        iters = {k: iter(v) for k, v in self.loaders.items()}
        for _ in range(self.steps):
            batch = {}
            for k, it in iters.items():
                try:
                    batch[k] = next(it)
                except StopIteration:
                    iters[k] = iter(self.loaders[k])
                    batch[k] = next(iters[k])
            yield batch


def mixed_batches(cfg: Config, datasets: dict, steps: int, epoch: int, info: dist.DistInfo | None = None,
                  offsets: dict[str, int] | None = None) -> MixedBatches:
    """One shuffled, seeded ``train.batch_size`` loader per named dataset, mixed for ``steps``
    steps; the loader of role ``k`` is seeded by ``epoch + offsets[k]`` (default ROLE_OFFSETS)."""
    offsets = offsets or ROLE_OFFSETS
    loaders = {k: make_loader(cfg, ds, cfg.train.batch_size, shuffle=True, epoch=epoch + offsets.get(k, 0),
                              info=info, drop_last=True) for k, ds in datasets.items()}
    return MixedBatches(loaders, steps)
