"""Pretraining throughput end to end against the model step alone (how close to the model limit).

    python scripts/bench/pipeline.py                          # demo config, data/demo or a temp set
    python scripts/bench/pipeline.py --set data.workers=2 --images 96 --repeats 2
    python scripts/bench/pipeline.py --profile                # + cProfile of one end-to-end epoch

What is timed, on the pretrain path of ``experiments/toy/pretrain_hg.yaml`` (the demo model,
data, augmentation, batch size and optimizer as configured there; the table names them),
images/s over ``--images`` source images per epoch after one untimed step:

- end to end: ``loaders.make_dataset`` (a real train-mode PoseDataset with the config's
  augmentation: random scale/rotation/shift/flip, appearance, target generation; cache filled
  up front as the job does), ``loaders.make_loader`` (the configured ``data.workers``; a new loader
  per epoch, as ``run_supervised`` makes them) and ``Trainer.train_epoch`` with
  ``supervised_step`` (forward, joints MSE, backward, optimizer step), as ``da-pose pretrain``
  runs them. Each step's time counts from asking the loader for the batch to the end of the
  optimizer step (the first step of an epoch also pays for starting the loader).
- model only: ``Trainer.train_epoch`` on a batch of the same shape already collated in memory.
- data wait: the part of the end-to-end time spent waiting for the loader.

With ``data.workers = 0`` model-only steps alternate with end-to-end steps one by one, so the
machine's other load falls on both alike; with worker processes (which prepare batches ahead
during whatever runs next) whole epochs alternate.

The end-to-end / model-only ratio targets >= 0.9. With ``data.workers = 0`` the loader runs in
series with the model, so that needs the data path >= 9x faster than the model step (second
row; with workers it is the wait that remains). Prints the machine line and a markdown table.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import os
import pstats
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from da_pose.config import load_config
from da_pose.data.manifest import load_domain
from da_pose.data.skeleton import NUM_JOINTS
from da_pose.data.loaders import make_codec, make_dataset, make_loader
from da_pose.models.factory import build_model
from da_pose.train.steps import supervised_step
from da_pose.train.trainer import Trainer, resolve_device
from common import machine_line, ratio_row, sync  # scripts/bench/common.py (the script's own folder)

DEMO_CONFIG = "experiments/toy/pretrain_hg.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEMO_CONFIG)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. data.workers=2 (repeatable)")
    parser.add_argument("--data", default="", help="benchmark folder (default: the config's data.root "
                        "when it holds manifest.json, else a small generated one)")
    parser.add_argument("--images", type=int, default=64, help="source train images per timed epoch")
    parser.add_argument("--repeats", type=int, default=1, help="timed epochs (steps are summed over them)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--profile", action="store_true", help="cProfile one end-to-end epoch, print the top")
    args = parser.parse_args(argv)
    if args.images < 1 or args.repeats < 1 or args.threads < 0:
        parser.error("--images and --repeats must be >= 1, --threads >= 0")
    return args


def bench_root(wanted: str, images: int, tmp: str) -> tuple[Path, str]:
    """A benchmark folder with at least ``images`` source train images, and where it came from."""
    if wanted and (Path(wanted) / "manifest.json").is_file():
        return Path(wanted), f"{wanted} (source train split)"
    from da_pose.data.toy.generate import generate
    from da_pose.data.toy.presets import PRESETS

    preset = dataclasses.replace(PRESETS["tiny"], source_train=images)
    root = Path(tmp) / "bench"
    generate(root, preset=preset, seed=0, workers=min(2, os.cpu_count() or 1), progress=False)
    return root, f"generated tiny preset with {images} source images ({wanted or '-'} has no manifest.json)"


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def waiting(batches, total: dict):
    """Yield the batches of a loader, adding the time spent waiting for each to ``total["wait"]``
    (the first wait includes starting the loader and its workers)."""
    start = time.perf_counter()
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        finally:
            total["wait"] += time.perf_counter() - start
        yield batch
        start = time.perf_counter()


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_config(args.config, args.overrides)
    with tempfile.TemporaryDirectory(prefix="bench_pipe_") as tmp:
        root, origin = bench_root(args.data or base.data.root, args.images, tmp)
        cfg = load_config(args.config, [*args.overrides, f"data.root={root}", f"device={args.device}",
                                        f"out_dir={tmp}/runs"])
        device = resolve_device(cfg.device)
        bs = cfg.train.batch_size
        codec = make_codec(cfg)
        records = load_domain(root, cfg.data.source, "train")[: args.images]
        ds = make_dataset(cfg, records, codec, train=True)  # cache filled up front, as the job does
        steps = len(ds) // bs
        if steps < 1:
            raise SystemExit(f"{root}: {len(ds)} source train images, fewer than one batch of {bs}")
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, NUM_JOINTS)
        trainer = Trainer(model, cfg.train, device=device, run_dir=Path(tmp) / "runs", seed=cfg.seed,
                          show_progress=False)
        # the same loader as run_supervised's batches(epoch); a new one per epoch, as there
        loader = lambda epoch: make_loader(cfg, ds, bs, shuffle=True, epoch=epoch, drop_last=True)  # noqa: E731
        in_memory = list(loader(0))  # steps x collated batches: the model-only input

        trainer.train_epoch(supervised_step, in_memory[:1])  # untimed warm-up step
        total = {"e2e": 0.0, "model": 0.0, "wait": 0.0}
        step = partial(trainer.train_epoch, supervised_step)
        for rep in range(args.repeats):
            batches = waiting(loader(rep + 1), total)
            if cfg.data.workers == 0:
                # in series: alternate single steps, so other load falls on both sides alike
                for k in range(steps):
                    total["e2e"] += timed(lambda: step([next(batches)]), device)
                    total["model"] += timed(lambda: step([in_memory[k]]), device)
            else:
                # worker processes prepare batches ahead, during whatever runs next: whole epochs
                total["e2e"] += timed(lambda: step(batches), device)
                total["model"] += timed(lambda: step(in_memory), device)
        profile_text = ""
        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(trainer.train_epoch, supervised_step, loader(args.repeats + 1))
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(18)
            profile_text = out.getvalue()

    images = steps * bs * args.repeats
    e2e, model_only = images / total["e2e"], images / total["model"]
    data_only = images / max(total["wait"], 1e-9)
    workers = cfg.data.workers
    aug = cfg.aug
    print(machine_line(device))
    print(f"data: {origin}; {steps * bs} images per epoch = {steps} batches of {bs}; data.workers={workers}, "
          f"cache={cfg.data.cache}; aug scale {aug.scale} rotate {aug.rotate} (p {aug.rotate_prob}) translate "
          f"{aug.translate} flip {aug.flip} appearance {aug.appearance} (p {aug.appearance_prob}); model "
          f"{cfg.model.backbone} {cfg.model.stacks} stacks x {cfg.model.features} features, input "
          f"{cfg.data.input_size}, {cfg.train.optimizer}; {args.repeats} epoch(s) each, alternating "
          f"{'steps' if workers == 0 else 'epochs'}")
    print()
    print("| measurement | ours img/s | reference img/s | ratio | target | met | note |")
    print("|---|---:|---:|---:|---:|---|---|")
    print(ratio_row("pretrain end to end vs model step alone", e2e, model_only, 0.9,
              "dataset + loader + targets + train step vs train step on batches in memory"))
    print(ratio_row("data path (loader wait) vs model step alone", data_only, model_only, 9.0,
              f"{100 * total['wait'] / total['e2e']:.1f} % of the end-to-end time is spent waiting for batches"),
          flush=True)
    if profile_text:
        print()
        print("cProfile of one end-to-end epoch (top functions by own time):")
        print()
        print("```")
        print(profile_text.strip())
        print("```")


if __name__ == "__main__":
    main()
