"""Run every method of the comparison with several seeds, then ``da-pose compare`` (``make benchmark``).

    python scripts/benchmark.py                                   # benchmark preset, seeds 0 1 2, 2 jobs
    python scripts/benchmark.py --preset demo --data data/demo --experiment toy-demo-seeds
    python scripts/benchmark.py --dry-run                         # the plan, what is finished, nothing run

Each seed pretrains its own source-only model; every adaptation starts from its seed's model;
CC-SSL-R fine-tunes its seed's CC-SSL model on the labelled target. The runs are ``da-pose``
commands (one process each, ``--jobs`` at a time, each with ``cores / jobs`` torch threads) in one
MLflow experiment, named ``<config>_s<seed>``. Resumable: a run already FINISHED in MLflow is
skipped, an interrupted one continues from its last checkpoint (``--resume auto``), and a failed
run only stops the runs that depend on it. Logs: ``<out>/<experiment>/logs/<run>.log``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from da_pose.adapt import METHODS as ADAPTATION_METHODS
from da_pose.config import BASELINES

ROOT = Path(__file__).resolve().parents[1]
TOY = "experiments/toy"


@dataclass
class Job:
    name: str
    argv: list[str]  # the da-pose command after the executable, without the shared options
    after: list[str] = field(default_factory=list)  # job names that must finish first


# backbone -> (run-name tag, --set for every run, --set for training from scratch); the toy
# configs are written for the hourglass and carry everything else
BACKBONES: dict[str, tuple[str, list[str], list[str]]] = {
    "hourglass": ("hg", [], []),
    "resnet18": ("r18", ["model.backbone=resnet18", "model.deconv_layers=3", "model.deconv_filters=128"],
                 ["train.lr=0.001"]),  # experiments/toy/pretrain_resnet.yaml
}


def plan(seeds, methods, runs: Path, experiment: str, backbone: str = "hourglass") -> list[Job]:
    """The jobs of every seed in dependency order (pretraining and oracle first)."""
    tag, model_sets, scratch_sets = BACKBONES[backbone]
    jobs = []  # (method rank, seed, job)
    for s in seeds:
        def name(base: str) -> str:
            return f"{base}_{tag}_s{s}"

        pre, ccssl = name("pretrain"), name("ccssl")
        init = str(runs / experiment / pre / "last.pt")
        table = {
            # method: (job name, command, config, extra --set, depends on)
            "source_only": (pre, "pretrain", "pretrain_hg", scratch_sets, []),
            "oracle": (name("oracle"), "finetune", "oracle_hg", scratch_sets, []),
            # control: source-only training continued for as many steps as CC-SSL adds
            "source_only_ext": (name("source_only_ext"), "pretrain", "source_only_ext_hg", [f"init={init}"], [pre]),
            # CC-SSL-R: the CC-SSL model fine-tuned on the labelled target (uses target labels)
            "ccssl_r": (name("ccssl_r"), "finetune", "ccssl_r_hg",
                        [f"init={runs / experiment / ccssl / 'last.pt'}"], [ccssl]),
        }
        for method in ADAPTATION:  # every registered method: adapt NAME experiments/toy/NAME_hg.yaml
            table[method] = (name(method), f"adapt {method}", f"{method}_hg", [f"init={init}"], [pre])
        for method in methods:
            job_name, command, config, sets, after = table[method]
            argv = command.split() + [f"{TOY}/{config}.yaml", "--seed", str(s)]
            for kv in [f"name={job_name}", *model_sets, *sets]:
                argv += ["--set", kv]
            jobs.append((METHODS.index(method), s,
                         Job(job_name, argv, [a for a in after if any(table[m][0] == a for m in methods)])))
    # method-major: an interrupted benchmark has the main rows for every seed before the ablations
    return [job for _, _, job in sorted(jobs, key=lambda t: t[:2])]


# in the order they are run: the main rows first, then every other registered method
ADAPTATION = tuple(m for m in ADAPTATION_METHODS if (ROOT / TOY / f"{m}_hg.yaml").is_file())
MAIN = ("source_only", "oracle", "ccssl", "wscda", "wscda_pplo", "plain_pl", "source_only_ext", "ccssl_r")
METHODS = tuple(m for m in MAIN if m in ADAPTATION or m in BASELINES) + tuple(m for m in ADAPTATION if m not in MAIN)


def finished_runs(experiment: str, tracking_uri: str) -> set[str]:
    """Names of the FINISHED runs of the experiment (none when it does not exist yet)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return set()
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              max_results=10000)
    return {r.info.run_name for r in runs}


def run_all(jobs: list[Job], shared: list[str], done: set[str], n_jobs: int, threads: int, logs: Path,
            bin_dir: Path) -> dict[str, str]:
    """Run the jobs not in ``done``, at most ``n_jobs`` at a time; returns name -> outcome."""
    logs.mkdir(parents=True, exist_ok=True)
    outcome = {j.name: "finished earlier" for j in jobs if j.name in done}
    pending = [j for j in jobs if j.name not in done]
    env = dict(os.environ, DA_POSE_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    exe = str(bin_dir / "da-pose")

    def launch(job: Job) -> tuple[Job, int, float]:
        t0 = time.perf_counter()
        with open(logs / f"{job.name}.log", "ab") as log:
            rc = subprocess.call([exe, *job.argv, *shared], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        return job, rc, time.perf_counter() - t0

    running = {}
    with ThreadPoolExecutor(max_workers=n_jobs) as pool:
        while pending or running:
            for job in list(pending):
                if len(running) >= n_jobs:
                    break
                states = [outcome.get(a) for a in job.after]
                if any(s is not None and not s.startswith("finished") for s in states):
                    outcome[job.name] = "skipped: " + ", ".join(a for a, s in zip(job.after, states)
                                                                 if s and not s.startswith("finished")) + " failed"
                    pending.remove(job)
                    print(f"[benchmark] {job.name}: {outcome[job.name]}", flush=True)
                elif all(s is not None for s in states):
                    pending.remove(job)
                    print(f"[benchmark] start {job.name}", flush=True)
                    running[pool.submit(launch, job)] = job
            if not running:
                continue
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                job, rc, dt = fut.result()
                del running[fut]
                outcome[job.name] = f"finished in {dt:.0f} s" if rc == 0 else f"failed (exit {rc}, see {logs / job.name}.log)"
                print(f"[benchmark] {job.name}: {outcome[job.name]}", flush=True)
    return outcome


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="benchmark", help="generator preset written to --data when missing")
    ap.add_argument("--data", default=None, help="benchmark folder (default data/<preset>)")
    ap.add_argument("--experiment", default=None, help="MLflow experiment (default toy-<preset>)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--backbone", default="hourglass", choices=list(BACKBONES),
                    help="the toy configs' hourglass, or a ResNet-18 SimpleBaseline (runs named *_r18_s<seed>)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per run (default: cores / jobs)")
    ap.add_argument("--tracking-uri", default="sqlite:///mlruns.db")
    ap.add_argument("--out", default="runs", help="run folders")
    ap.add_argument("--bin", default=str(Path(sys.executable).parent), help="folder holding da-pose")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run (repeatable), e.g. --set device=cuda")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and what is finished; run nothing")
    args = ap.parse_args(argv)
    data = args.data or f"data/{args.preset}"
    experiment = args.experiment or f"toy-{args.preset}"
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    runs = Path(args.out)
    jobs = plan(args.seeds, args.methods, runs, experiment, args.backbone)
    done = finished_runs(experiment, args.tracking_uri)
    if args.dry_run:
        for j in jobs:
            state = "finished" if j.name in done else "to run"
            print(f"{j.name:34s} {state:9s} da-pose {' '.join(j.argv)}" + (f"  (after {', '.join(j.after)})" if j.after else ""))
        return 0
    bin_dir = Path(args.bin)
    t0 = time.perf_counter()
    if not (Path(data) / "manifest.json").is_file():
        subprocess.check_call([str(bin_dir / "da-pose"), "data", "generate", "--preset", args.preset, "--out", data,
                               "--seed", "0", "--workers", str(os.cpu_count() or 1)], cwd=ROOT)
    shared = ["--set", f"data.root={data}", "--set", f"experiment={experiment}", "--set", f"out_dir={runs}",
              "--tracking-uri", args.tracking_uri, "--resume", "auto"]
    for kv in args.sets:
        shared += ["--set", kv]
    outcome = run_all(jobs, shared, done, args.jobs, threads, runs / experiment / "logs", bin_dir)
    failed = [n for n, o in outcome.items() if not o.startswith("finished")]
    print(f"\n[benchmark] {len(jobs) - len(failed)} of {len(jobs)} runs finished; "
          f"{time.perf_counter() - t0:.0f} s this time")
    subprocess.call([str(bin_dir / "da-pose"), "compare", "--experiment", experiment, "--tracking-uri",
                     args.tracking_uri, "--out", str(runs / experiment / "compare")], cwd=ROOT)
    if failed:
        print("[benchmark] not finished: " + "; ".join(f"{n} ({outcome[n]})" for n in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
