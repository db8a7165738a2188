"""Embedded-benchmark generator: images/s with one worker vs several (the parallel speed-up).

    python scripts/bench/generate.py                      # reduced demo preset, workers 1 vs 2
    python scripts/bench/generate.py --source 64 --videos 6 --frames 16 --other 32 --workers 4

Both runs render the same reduced ``demo`` preset (``dataclasses.replace(PRESETS["demo"], ...)``)
with the same seed into fresh temporary folders, one after the other, and the table reports the
ratio measured side by side, so a busy shared machine slows both alike. The generator promises
the same bytes whatever ``workers`` is; the table says whether the two outputs were identical.

Prints the machine line, then a markdown table: measurement, images/s of each run, ratio, target,
and a note with the cores each run obtained (CPU seconds of the process and its workers / wall
seconds) and its CPU seconds per image. The target is 0.8 x min(workers, CPU count): the renderer
is CPU-bound numpy/OpenCV in separate processes, so a miss points at serial work (the parent's
index writing, task granularity), or, when the parallel run obtained no more cores than the
serial one, at other people's load. A last row probes the machine itself: the same fixed
pure-Python work in ``workers`` processes at once against one, i.e. the speed-up perfectly
parallel code would get while the other load lasts. OpenCV's own threads (on in the 1-worker run,
off in the workers) can give the 1-worker run more than one core now and then.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from da_pose.data.toy.generate import generate
from da_pose.data.toy.presets import PRESETS
from common import machine_line  # scripts/bench/common.py (the script's own folder)

MAT_HEADER_TEXT = 116  # bytes of a MAT-file's descriptive header text (level 5 format)
SPIN_STEPS = 3_000_000  # pure-Python loop steps of the machine probe (a fraction of a second)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=int, default=32, help="synthetic source images (640 x 480 PNG)")
    parser.add_argument("--videos", type=int, default=4, help="target videos (shots)")
    parser.add_argument("--frames", type=int, default=8, help="frames per target video (480 x 360 JPEG)")
    parser.add_argument("--other", type=int, default=32, help="other-species images (384 x 288 JPEG)")
    parser.add_argument("--workers", type=int, default=2, help="parallel run's worker processes")
    parser.add_argument("--repeats", type=int, default=1,
                        help="alternating runs of each setting; the fastest of each is kept")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.source, args.videos, args.frames) < 1 or args.other < 0:
        parser.error("--source, --videos and --frames must be >= 1, --other >= 0")
    if args.workers < 2 or args.repeats < 1:
        parser.error("--workers must be >= 2 (compared with 1) and --repeats >= 1")
    return args


def folder_digest(root: Path) -> str:
    """SHA-1 over every file's relative path and bytes, in sorted order (same bytes, same digest).

    A MAT file's 116-byte header text holds its creation time, the one part a seed cannot fix:
    it is skipped.
    """
    h = hashlib.sha1()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        data = p.read_bytes()
        h.update(str(p.relative_to(root)).encode())
        h.update(data[MAT_HEADER_TEXT:] if p.suffix == ".mat" else data)
    return h.hexdigest()


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed_generate(preset, workers: int, seed: int) -> tuple[float, float, str]:
    """Wall seconds and CPU seconds (worker processes included) to generate ``preset`` into a
    fresh temporary folder, and the output's digest.

    Runs in the calling process; :func:`run_fresh` calls it in a new one.
    """
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        out = Path(tmp) / "data"
        cpu = cpu_seconds()
        start = time.perf_counter()
        generate(out, preset=preset, seed=seed, workers=workers, progress=False)
        seconds = time.perf_counter() - start
        return seconds, cpu_seconds() - cpu, folder_digest(out)


def run_fresh(preset, workers: int, seed: int) -> tuple[float, float, str]:
    """:func:`timed_generate` in a freshly spawned process, so that every timed run starts alike.

    It also keeps the generator's fork pool away from a parent whose OpenCV thread pool has
    already run (an earlier inline run): a forked worker calling ``cv2.setNumThreads`` there was
    seen to hang for good in ``pthread_cond_destroy``.
    """
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(timed_generate, preset, workers, seed).result()


def _spin(barrier, queue, n: int) -> None:
    """Fixed pure-Python work, started together with the other processes; puts its seconds."""
    barrier.wait()
    start = time.perf_counter()
    x = 0
    for i in range(n):
        x += i * i
    queue.put(time.perf_counter() - start)


def spin_seconds(processes: int, n: int) -> float:
    """Wall seconds of ``processes`` spawned processes each doing the same fixed work at once."""
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_spin, args=(barrier, queue, n)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    seconds = max(queue.get() for _ in procs)
    for proc in procs:
        proc.join()
    return seconds


def main(argv=None) -> None:
    args = parse_args(argv)
    # half of the other images go to val, the rest to train (the generator needs both splits' files)
    preset = dataclasses.replace(
        PRESETS["demo"], name="bench", source_train=args.source, source_val=0, target_videos=args.videos,
        target_frames=args.frames, other_train=args.other - args.other // 4, other_val=args.other // 4,
    )
    images = args.source + args.videos * args.frames + args.other
    best = {1: (float("inf"), 0.0), args.workers: (float("inf"), 0.0)}  # (wall, cpu) of the fastest run
    digests = {}
    spin = {1: float("inf"), args.workers: float("inf")}
    for _ in range(args.repeats):
        for workers in (1, args.workers):
            seconds, cpu, digests[workers] = run_fresh(preset, workers, args.seed)
            best[workers] = min(best[workers], (seconds, cpu))
            spin[workers] = min(spin[workers], spin_seconds(workers, SPIN_STEPS))
    capacity = args.workers * spin[1] / spin[args.workers]  # speed-up of perfectly parallel work, now
    (wall1, cpu1), (wall_n, cpu_n) = best[1], best[args.workers]
    serial, parallel = images / wall1, images / wall_n
    target = 0.8 * min(args.workers, os.cpu_count() or 1)
    ratio = parallel / serial
    same = "yes" if digests[1] == digests[args.workers] else "NO"

    print(machine_line(torch.device("cpu")))
    print(f"reduced demo preset: {args.source} source + {args.videos} x {args.frames} target + {args.other} other "
          f"= {images} images, seed {args.seed}, best of {args.repeats}; same bytes with 1 and "
          f"{args.workers} workers: {same}")
    print()
    print(f"| measurement | workers={args.workers} img/s | workers=1 img/s | ratio | target | met | note |")
    print("|---|---:|---:|---:|---:|---|---|")
    # cores obtained = CPU seconds / wall seconds: a parallel run that obtains no more cores than
    # the serial one was held back by the machine's other load, not by the generator; CPU seconds
    # per image compare the work done, whatever the load
    note = (f"cores obtained {cpu_n / wall_n:.2f} vs {cpu1 / wall1:.2f}; CPU s per image "
            f"{cpu_n / images:.3f} vs {cpu1 / images:.3f}")
    print(f"| generator parallel speed-up | {parallel:.1f} | {serial:.1f} | {ratio:.2f}x | >= {target:.1f}x | "
          f"{'yes' if ratio >= target else 'no'} | {note} |")
    print(f"| machine now: {args.workers} busy processes vs 1 | - | - | {capacity:.2f}x | - | - | the most any "
          f"{args.workers}-process code could gain while the other load lasts |", flush=True)

if __name__ == "__main__":
    main()
