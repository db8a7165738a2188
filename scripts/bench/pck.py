"""Time pck_summary on 100,000 random predictions x 18 joints (target: well under a second).

Run: python scripts/bench/pck.py [--n 100000] [--repeats 5]
"""

import argparse
import time

import numpy as np

from da_pose.eval.pck import pck_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="number of samples")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best is printed")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 256, (args.n, 18, 2)).astype(np.float32)  # N, K, 2
    pred = gt + rng.normal(0, 10, gt.shape).astype(np.float32)  # N, K, 2
    visible = rng.random((args.n, 18)) > 0.2  # N, K
    sides = np.full(args.n, 256.0)  # N

    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = pck_summary(pred, gt, visible, sides)
        times.append(time.perf_counter() - start)
    print(
        f"pck_summary: {args.n} samples x 18 joints: best {min(times) * 1e3:.1f} ms, "
        f"median {np.median(times) * 1e3:.1f} ms over {args.repeats} runs "
        f"(pck@0.05_crop/all = {out['pck@0.05_crop/all']:.1f})"
    )


if __name__ == "__main__":
    main()
