"""Run the comparison, methods x seeds x named shifts, then ``da-pose compare`` (``make benchmark``).

    python scripts/benchmark.py                                   # the default matrix, seeds 0 1 2, 2 jobs
    python scripts/benchmark.py --matrix calibration --preset demo --seeds 0   # source-only + oracle per shift
    python scripts/benchmark.py --shifts none --preset demo --data data/demo   # one dataset, no shifts
    python scripts/benchmark.py --dry-run                         # the plan, what is finished, an estimated time

Shifts (``--shifts``, docs/shifts.md): each one's data is generated into ``<data>/<shift>`` when
missing (a comma combination ``pose,shape`` into ``<data>/pose+shape``). The source domain is the
same bytes under every shift, so each seed pretrains ONE source-only model (on the home shift's
folder: ``all`` when it is run, else the first shift) and every shift reuses it: adaptations start
from it, and on the other shifts it is evaluated with ``da-pose evaluate --log`` (runs
``source_only_<bb>_<shift>_s<seed>``, tagged ``command=evaluate``, ``method``, ``shift``, ``seed``;
metrics ``eval/...``). Every training run is tagged ``shift`` by ``da_pose.run`` from the data's
manifest. ``--matrix``: ``calibration`` = source_only + oracle per shift; ``default`` = the main
methods on every shift, the ablations on ``all`` only; ``full`` = every method x every shift (3
seeds on the benchmark preset, for a bigger machine); ``labels`` = the semi-supervised protocol: methods x
labelled fractions (LABEL_FRACTIONS) on one shift (pose), the oracle on each subset as the floor, runs
``<method>_l<percent>_<bb>_<shift>_s<seed>``, then ``compare --by labels``. ``--methods`` replaces the
matrix's methods (with ``labels``: the methods crossed with the fractions).

Each seed's adaptations start from its seed's model; CC-SSL-R fine-tunes its seed's CC-SSL model
of the same shift on the labelled target. The runs are ``da-pose`` commands (one process each,
``--jobs`` at a time, each with ``cores / jobs`` torch threads) in one MLflow experiment, named
``<config>_<bb>[_<shift>]_s<seed>``. Resumable: a run already FINISHED in MLflow is skipped, an
interrupted one continues from its last checkpoint (``--resume auto``), and a failed run only stops
the runs that depend on it. Logs: ``<out>/<experiment>/logs/<run>.log``.

On a cluster (``--launcher slurm``, the ``cluster`` extra: submitit): the same plan, the same skip of
FINISHED runs, the same commands, environment and log files, one SLURM job per run, each
dependent run submitted with ``--dependency=afterok:<its prerequisites' job ids>`` (and
``--kill-on-invalid-dep=yes``, so a failed prerequisite cancels its dependents); the script returns
once every job id is printed. The data is generated before submission, on the submitting machine
(as the local runner does), so every job finds it on the shared file system and no job has to wait
for a generation job. Every job must log to one shared MLflow tracking server (``--tracking-uri
http://host:5000``, README "On a cluster"). Run the same command again once the jobs are done:
it submits nothing, tags the evaluate runs and prints the comparison (run while jobs are still
queued, it submits the unfinished ones again). ``--launcher local-submitit``: the same submission
code with submitit's LocalExecutor on this machine, which knows no dependencies: each run is
submitted once its prerequisites' results are in (the tests use it).
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
from da_pose.errors import run_script
from da_pose.data.toy.presets import SHIFTS, parse_shifts

ROOT = Path(__file__).resolve().parents[1]
TOY = "experiments/toy"


@dataclass
class Job:
    name: str
    argv: list[str]  # the da-pose command after the executable, without the shared options
    after: list[str] = field(default_factory=list)  # job names that must finish first
    kind: str = "train"  # train: gets the shared run options; evaluate: ``da-pose evaluate --log``
    shift: str | None = None
    tags: dict = field(default_factory=dict)  # set on the job's MLflow run once it finished


# backbone -> (run-name tag, --set for every run, --set for training from scratch); the toy
# configs are written for the hourglass and carry everything else
# backbone -> (run-name part, model --set, --set of runs trained from scratch, --set of adaptation runs)
BACKBONES: dict[str, tuple[str, list[str], list[str], list[str]]] = {
    "hourglass": ("hg", [], [], []),
    "resnet18": ("r18", ["model.backbone=resnet18", "model.deconv_layers=3", "model.deconv_filters=128"],
                 ["train.lr=0.001"],  # experiments/toy/pretrain_resnet.yaml
                 # for methods without a <method>_r18.yaml: the diagnosis in docs/results.md (a lower
                 # restart rate and a short curriculum)
                 ["train.lr=0.0002", "ccssl.keep_schedule=[0.2,0.2,0.2,0.2]"]),
}
# trained on the source alone: once per seed (on the home shift's folder), evaluated on every other shift
SOURCE_TRAINED = ("source_only", "source_only_ext")


def shift_dir(shift: str) -> str:
    """The folder and run-name part of a shift: ``pose,shape`` -> ``pose+shape``."""
    return shift.replace(",", "+")


def home_shift(shifts: list[str]) -> str:
    """The shift whose folder the source-trained models are trained with (their target test rows)."""
    return "all" if "all" in shifts else shifts[0]


def run_name(base: str, backbone: str, seed: int, shift: str | None = None) -> str:
    """``<base>_<bb>[_<shift>]_s<seed>``, e.g. ``oracle_hg_pose_s0``."""
    mid = f"_{shift_dir(shift)}" if shift else ""
    return f"{base}_{BACKBONES[backbone][0]}{mid}_s{seed}"


def _seed_table(s: int, runs: Path, experiment: str, backbone: str, shift: str | None) -> dict[str, tuple]:
    """method -> (job name, command, config, extra --set, depends on) for one seed and shift."""
    _, _, scratch_sets, adapt_sets = BACKBONES[backbone]

    def name(base: str, per_shift: bool = True) -> str:
        return run_name(base, backbone, s, shift if per_shift else None)

    pre, ccssl = name("pretrain", False), name("ccssl")
    init = str(runs / experiment / pre / "last.pt")
    table = {
        "source_only": (pre, "pretrain", "pretrain_hg", scratch_sets, []),
        # the seed's source model fine-tuned on the shift's labelled target train split
        "oracle": (name("oracle"), "finetune", "oracle_hg", [f"init={init}"], [pre]),
        # control: source-only training continued for as many steps as CC-SSL adds
        "source_only_ext": (name("source_only_ext", False), "pretrain", "source_only_ext_hg", [f"init={init}"], [pre]),
        # CC-SSL-R: the CC-SSL model fine-tuned on the labelled target (uses target labels)
        "ccssl_r": (name("ccssl_r"), "finetune", "ccssl_r_hg", [f"init={runs / experiment / ccssl / 'last.pt'}"],
                    [ccssl]),
    }
    for method in ADAPTATION:  # every registered method: adapt NAME experiments/toy/NAME_hg.yaml
        config, sets = backbone_config(method, backbone, adapt_sets)
        table[method] = (name(method), f"adapt {method}", config, [f"init={init}", *sets], [pre])
    return table


def backbone_config(method: str, backbone: str, fallback_sets: list[str]) -> tuple[str, list[str]]:
    """The config of an adaptation method on ``backbone``: ``<method>_<bb>.yaml`` where one exists
    (settings of its own, e.g. chosen by scripts/sweep.py on target val), else the hourglass's
    ``<method>_hg.yaml`` with the backbone's fallback --set."""
    own = f"{method}_{BACKBONES[backbone][0]}"
    if (ROOT / TOY / f"{own}.yaml").is_file():
        return own, []
    return f"{method}_hg", list(fallback_sets)


def _evaluate_job(name: str, trained: str, runs: Path, experiment: str, root: str, seed: int, shift: str) -> Job:
    """A source-trained model on another shift's target test split, logged as its own MLflow run."""
    argv = ["evaluate", "--checkpoint", str(runs / experiment / trained / "last.pt"), "--split", "test",
            "--out", str(runs / experiment / name / "evaluate"), "--log",
            "--set", f"name={name}", "--set", f"data.root={root}"]
    return Job(name, argv, [trained], kind="evaluate", shift=shift,
               tags={"shift": shift, "seed": str(seed), "source_run": trained})


def plan(seeds, methods, runs: Path, experiment: str, backbone: str = "hourglass", shifts=None,
         data: str = "data", labels_init: str = "floor", home: str | None = None) -> list[Job]:
    """The jobs of every seed (and shift) in dependency order (pretraining and oracle first).

    ``methods``: a list for every shift, or ``{shift: list}``. ``shifts``: None runs on one
    dataset (the shared ``data.root``) with the historical run names; else each shift's runs use
    ``<data>/<shift>`` and carry the shift in their names, except the source-trained models.
    ``labels_init``: where a method run on labels starts (:func:`labelled_entry`). ``home``: the
    shift the shared source models were trained on, when they exist already (:func:`trained_home`;
    default :func:`home_shift`); every other shift gets their evaluation runs.
    """
    _, model_sets, _, _ = BACKBONES[backbone]
    per_shift = {None: list(methods)} if shifts is None else {
        sh: list(methods[sh] if isinstance(methods, dict) else methods) for sh in shifts}
    home = None if shifts is None else home or home_shift(list(shifts))
    if home in per_shift:  # the shared source models are trained with the home shift's data
        wanted = [m for m in SOURCE_TRAINED if any(m in ms for ms in per_shift.values())]
        per_shift[home] = wanted + [m for m in per_shift[home] if m not in wanted]
    # the shared source models first (their evaluations follow them), then the shifts in the order given
    order = {sh: 1 + i for i, sh in enumerate(per_shift)}
    jobs = []  # (method rank, seed, shift rank, job)
    for s in seeds:
        for sh, ms in per_shift.items():
            table = _seed_table(s, runs, experiment, backbone, sh)
            root = f"{data}/{shift_dir(sh)}" if sh else None
            for method in ms:
                job_name, command, config, sets, after = labelled_entry(table, method, labels_init)
                if sh is not None and sh != home and method in SOURCE_TRAINED:
                    job = _evaluate_job(run_name(method, backbone, s, sh), job_name, runs, experiment, root, s, sh)
                else:
                    argv = command.split() + [f"{TOY}/{config}.yaml", "--seed", str(s)]
                    for kv in [f"name={job_name}", *model_sets, *sets, *([f"data.root={root}"] if root else [])]:
                        argv += ["--set", kv]
                    job = Job(job_name, argv, list(after), shift=sh)
                rank = 0 if sh == home and method in SOURCE_TRAINED else order[sh]
                jobs.append((METHODS.index(method.split("@")[0]), s, rank, job))
    names = {job.name for *_, job in jobs}
    for *_, job in jobs:  # a dependency on a method not asked for: its run exists already
        job.after = [a for a in job.after if a in names]
    # method-major: an interrupted benchmark has the main rows for every seed before the ablations
    return [job for *_, job in sorted(jobs, key=lambda t: t[:3])]


# in the order they are run: the main rows first, then every other registered method
ADAPTATION = tuple(m for m in ADAPTATION_METHODS if (ROOT / TOY / f"{m}_hg.yaml").is_file())
MAIN = ("source_only", "oracle", "ccssl", "wscda", "wscda_pplo", "plain_pl", "source_only_ext", "ccssl_r")
METHODS = tuple(m for m in MAIN if m in ADAPTATION or m in BASELINES) + tuple(m for m in ADAPTATION if m not in MAIN)
SINGLE_SHIFTS = tuple(SHIFTS)
MATRICES = ("default", "full", "calibration", "labels")
# --matrix labels (docs/usage.md, "Semi-supervised protocol"): data.target_labels values x these methods
# (with every target train label there is no unlabelled target left: the oracle is the line's end)
LABEL_FRACTIONS, LABEL_SHIFT = ("0", "0.02", "0.1"), "pose"
LABEL_METHODS = ("plain_pl", "mean_teacher", "scarcenet")


LABELS_INIT = ("floor", "source")


def labelled_entry(table: dict, method: str, labels_init: str = "floor") -> tuple:
    """``NAME@FRACTION`` (``--matrix labels``): NAME's entry run on that labelled target subset.

    ``labels_init="floor"``: an adaptation method starts from the supervised-only floor of its seed
    and subset (the oracle command on the same labels, ``oracle_l<percent>_...``), as ScarceNet's
    published recipe starts its semi-supervised stage from the model trained on the labelled images
    (FACTS 8.4); its paired difference to the floor is then what the unlabelled target adds.
    ``"source"``: from the seed's source model, like the runs without labels."""
    base, _, labels = method.partition("@")
    name, command, config, sets, after = table[base]
    if not labels:
        return table[base]
    tag = "all" if labels == "all" else f"{100 * float(labels):g}"
    sets, after = [*sets, f"data.target_labels={labels}"], list(after)
    if labels_init == "floor" and command.startswith("adapt "):
        floor = table["oracle"][0].replace("oracle_", f"oracle_l{tag}_", 1)
        init = next(kv for kv in sets if kv.startswith("init="))
        sets = [f"init={Path(init[len('init='):]).parent.parent / floor / 'last.pt'}" if kv == init else kv
                for kv in sets]
        after = [floor]
    return name.replace(f"{base}_", f"{base}_l{tag}_", 1), command, config, sets, after
# The default matrix (docs/shifts.md, "Running the comparison per shift"): chosen to fit 100 minutes
# on 2 CPU cores. The shifts: three single shifts that model different phenomena (pose and
# viewpoint; clutter, limb-like distractors and the herd; the look, with the long shadows of a low
# sun), and ``all``. ``occlusion`` and ``video`` meet the calibration rule since session 11 but stay
# out of the default for time (``--shifts occlusion video`` adds them). On each: the
# references and the pseudo-label methods; on ``all`` also the CC-SSL ablations. Every other method
# (WS-CDA, PPLO, CC-SSL-R, RegDA, ...) and every other shift run with ``--matrix full``, or name them.
DEFAULT_SHIFTS = ("pose", "context", "appearance", "all")
PER_SHIFT = ("source_only", "oracle", "source_only_ext", "plain_pl", "ccssl", "mean_teacher")
# the three consistency terms (the curriculum ablation runs with --matrix full)
ABLATIONS = ("ccssl_no_invariance", "ccssl_no_equivariance", "ccssl_no_temporal")


def matrix_methods(matrix: str, shifts: list[str], chosen=None) -> dict[str, list[str]]:
    """shift -> methods of a ``--matrix``: ``calibration`` the two references everywhere;
    ``default`` the references and the pseudo-label methods everywhere, and the CC-SSL ablations on
    ``all`` (or the home shift); ``full`` every method everywhere; ``labels`` the floor (source-only,
    the oracle on every labelled subset) and ``chosen`` (LABEL_METHODS) x LABEL_FRACTIONS."""
    if matrix == "labels":
        floor = ["source_only", "oracle", *(f"oracle@{f}" for f in LABEL_FRACTIONS if f not in ("0", "all"))]
        ms = [m for m in chosen or LABEL_METHODS if m in METHODS and m not in floor]
        return {sh: floor + [m if f == "0" else f"{m}@{f}" for m in ms for f in LABEL_FRACTIONS] for sh in shifts}
    if matrix == "calibration":
        return {sh: ["source_only", "oracle"] for sh in shifts}
    if matrix == "full":
        return {sh: list(METHODS) for sh in shifts}
    main = [m for m in METHODS if m in PER_SHIFT]
    home = home_shift(shifts)
    return {sh: main + [m for m in METHODS if m in ABLATIONS] if sh == home else main for sh in shifts}


# Rough minutes of one run at one torch thread on the demo preset, by config (a config not named
# here: by command), measured on this 2-core machine two runs at a time with nothing else running
# (the median of the idle default and labels matrices, session 7; README, "Wall time"; WS-CDA,
# PPLO, RegDA, UDA-Animal, UniFrame and ScarceNet: the idle toy-demo-methods runs, session 8).
# CC-SSL-R was timed beside other work, so its figure is high. How a preset's data scales them;
# generating: the first folder of a shift set (every domain), then one more shift (its target only,
# the source shared through --source-from), on every core.
MINUTES = {"pretrain": 3.0, "finetune": 1.0, "adapt": 2.5, "evaluate": 0.2,
           "pretrain_hg": 3.0, "oracle_hg": 1.0, "source_only_ext_hg": 1.1, "ccssl_r_hg": 2.0,
           "plain_pl_hg": 2.3, "ccssl_hg": 2.9, "mean_teacher_hg": 2.1, "wscda_hg": 1.4, "wscda_pplo_hg": 2.7,
           "ccssl_no_invariance_hg": 2.7, "ccssl_no_equivariance_hg": 2.7, "ccssl_no_temporal_hg": 3.4,
           "scarcenet_hg": 3.0, "regda_hg": 2.7, "uda_animal_hg": 3.2, "uniframe_hg": 2.5}
# a ResNet-18 SimpleBaseline run against the same config's hourglass run: the median ratio of the
# eight configs run with both backbones in toy-demo-methods (2.6-3.8; the mean teacher 1.6), from
# `python scripts/bench/run_durations.py --experiment toy-demo-methods` (session 9)
BACKBONE_SCALE = {"hourglass": 1.0, "resnet18": 2.8}
GENERATE_MINUTES = {"first": 1.2, "more": 0.3}  # core-minutes
PRESET_SCALE = {"tiny": 0.05, "demo": 1.0, "benchmark": 5.0}


def run_minutes(job: Job, preset: str) -> float:
    """Rough minutes of ``job`` at one thread on ``preset`` (its config's measured minutes, scaled
    by the backbone a ``--set model.backbone=`` names and by the preset's data size)."""
    scale = PRESET_SCALE.get(preset, 1.0)
    kind = job.argv[0]
    config = next((Path(a).stem for a in job.argv if a.endswith(".yaml")), "")
    base = MINUTES.get(config, MINUTES.get(kind, 3.0))
    backbone = next((a.split("=", 1)[1] for a in job.argv if a.startswith("model.backbone=")), "hourglass")
    base *= BACKBONE_SCALE.get(backbone, 1.0)
    if kind == "adapt":  # the adaptation steps are fixed; the pseudo-labelling passes scale with the data
        return base * (0.6 + 0.4 * scale)
    return base * scale


def estimate_minutes(jobs: list[Job], preset: str, n_jobs: int, threads: int, datasets: int,
                     first: bool = True) -> float:
    """Wall minutes: the runs' work spread over ``n_jobs`` slots, each faster with more threads
    (assumed 1.6x per doubling), plus generating ``datasets`` folders on every core (``first``: one
    of them renders the shared source)."""
    speed = 1.6 ** max(threads.bit_length() - 1, 0)
    work = sum(run_minutes(j, preset) for j in jobs)
    scale = PRESET_SCALE.get(preset, 1.0)
    gen = (GENERATE_MINUTES["first"] + (datasets - 1) * GENERATE_MINUTES["more"]) if datasets and first \
        else datasets * GENERATE_MINUTES["more"]
    return work / max(n_jobs, 1) / speed + gen * scale / max(n_jobs * threads, 1)


def _finished(experiment: str, tracking_uri: str):
    """(client, the experiment's FINISHED runs by name); no runs when it does not exist yet."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return client, {}
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              max_results=10000)
    return client, {r.info.run_name: r for r in runs}


def finished_runs(experiment: str, tracking_uri: str) -> set[str]:
    """Names of the FINISHED runs of the experiment (none when it does not exist yet)."""
    return set(_finished(experiment, tracking_uri)[1])


def trained_home(experiment: str, tracking_uri: str, names: list[str]) -> str | None:
    """The ``shift`` tag of the first FINISHED run among ``names`` (the seeds' shared source
    models): the shift whose folder they were trained with. A later call with other shifts must
    evaluate them on its home shift too, not take their own target test row for it."""
    runs = _finished(experiment, tracking_uri)[1]
    return next((runs[n].data.tags["shift"] for n in names if n in runs and runs[n].data.tags.get("shift")), None)


def tag_runs(jobs: list[Job], experiment: str, tracking_uri: str) -> None:
    """Set each job's ``tags`` on its FINISHED run (idempotent: also mends a run whose tagging
    was interrupted). ``da-pose evaluate --log`` knows no seed nor shift, the plan does."""
    jobs = [j for j in jobs if j.tags]
    if not jobs:
        return
    client, by_name = _finished(experiment, tracking_uri)
    for job in jobs:
        run = by_name.get(job.name)
        if run is not None:
            for key, value in job.tags.items():
                if run.data.tags.get(key) != value:
                    client.set_tag(run.info.run_id, key, value)


def to_run(jobs: list[Job], done: set[str]) -> list[tuple[Job, list[str]]]:
    """The dependency graph of every launcher: the jobs not in ``done`` in an order where each
    comes after its prerequisites (the plan's order where it allows), each with the prerequisites
    it still waits for (a FINISHED one is no longer a dependency)."""
    left = [j for j in jobs if j.name not in done]
    placed, order = set(done), []
    while left:
        job = next((j for j in left if all(a in placed for a in j.after)), None)
        if job is None:
            raise ValueError("unknown prerequisite or dependency cycle: "
                             + ", ".join(f"{j.name} after {', '.join(j.after)}" for j in left))
        order.append((job, [a for a in job.after if a not in done]))
        placed.add(job.name)
        left.remove(job)
    return order


def run_env(threads: int) -> dict[str, str]:
    """What every run's environment sets on top of the machine's: its torch threads."""
    return {"DA_POSE_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}


def command(job: Job, shared: dict[str, list[str]], bin_dir: Path) -> list[str]:
    """The run's full command: ``da-pose`` with the job's argv and the options of its kind."""
    return [str(bin_dir / "da-pose"), *job.argv, *shared[job.kind]]


def run_logged(argv: list[str], log: str, env: dict[str, str]) -> int:
    """Run ``argv`` in the repository with ``env`` added to this machine's environment, its
    output appended to ``log``; returns the exit code."""
    with open(log, "ab") as out:
        return subprocess.call(argv, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, **env), cwd=ROOT)


def run_job(name: str, argv: list[str], log: str, env: dict[str, str]) -> str:
    """What a submitit job calls (top level, so it pickles): the local runner's command, log and
    environment; raises with one line when the command fails."""
    rc = run_logged(argv, log, env)
    if rc != 0:
        raise RuntimeError(f"{name}: exit {rc}, see {log}")
    return name


def run_all(jobs: list[Job], shared: dict[str, list[str]], done: set[str], n_jobs: int, threads: int, logs: Path,
            bin_dir: Path, on_finished=None) -> dict[str, str]:
    """Run the jobs not in ``done``, at most ``n_jobs`` at a time; returns name -> outcome.

    ``shared``: the options appended per job kind (``train``, ``evaluate``); ``on_finished(job)``
    runs after each job that exited 0.
    """
    logs.mkdir(parents=True, exist_ok=True)
    outcome = {j.name: "finished earlier" for j in jobs if j.name in done}
    pending = [j for j, _ in to_run(jobs, done)]
    env = run_env(threads)

    def launch(job: Job) -> tuple[Job, int, float]:
        t0 = time.perf_counter()
        rc = run_logged(command(job, shared, bin_dir), str(logs / f"{job.name}.log"), env)
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
                if rc == 0 and on_finished is not None:
                    on_finished(job)
                print(f"[benchmark] {job.name}: {outcome[job.name]}", flush=True)
    return outcome


LAUNCHERS = ("local", "slurm", "local-submitit")
SUBMITIT_MISSING = ("[benchmark] --launcher {} needs submitit: pip install -e '.[cluster]' "
                    "(or pip install 'submitit>=1.5')")


def afterok(job_ids: list[str]) -> str | None:
    """sbatch's ``--dependency``: start once every one of ``job_ids`` exited 0 (None: no dependency)."""
    return "afterok:" + ":".join(job_ids) if job_ids else None


def slurm_parameters(name: str, after_ids: list[str], partition: str | None = None, minutes: int = 240,
                     cpus: int = 4, gpus: int = 0, mem: str | None = None) -> dict:
    """``SlurmExecutor.update_parameters`` for one run (every key set, so nothing carries over
    from the previous run's; None leaves the option out of the sbatch file)."""
    return {"job_name": name, "partition": partition, "time": minutes, "cpus_per_task": cpus,
            "gpus_per_node": gpus or None, "mem": mem, "dependency": afterok(after_ids),
            "stderr_to_stdout": True,
            # a prerequisite that failed cancels its dependents instead of leaving them pending forever
            "additional_parameters": {"kill-on-invalid-dep": "yes"} if after_ids else {}}


def make_executor(launcher: str, folder: Path):
    """submitit's SlurmExecutor (``slurm``) or LocalExecutor (``local-submitit``) writing to ``folder``."""
    import cloudpickle
    import submitit

    if __name__ != "__main__":  # loaded from its file (the tests): not importable where the job runs
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return (submitit.SlurmExecutor if launcher == "slurm" else submitit.LocalExecutor)(folder=folder)


def submit_all(jobs: list[Job], shared: dict[str, list[str]], done: set[str], threads: int, logs: Path,
               bin_dir: Path, executor, parameters, wait: bool, on_finished=None) -> dict[str, str]:
    """Submit the jobs not in ``done`` through a submitit ``executor``, one job per run calling
    ``run_job`` with the local runner's command, environment and log; returns name -> outcome.

    ``parameters(job, after_ids)``: the executor's parameters for a run whose prerequisites are
    the submitted jobs ``after_ids``. ``wait`` False (SLURM): the prerequisites are the scheduler's
    dependencies (``slurm_parameters``); returns once all are submitted ("submitted as ID").
    ``wait`` True (LocalExecutor, no dependencies): a run is submitted once its prerequisites'
    results are in, skipped if one failed, and every result is awaited, as ``run_all`` reports
    them; ``on_finished(job)`` runs after each that succeeded.
    """
    logs.mkdir(parents=True, exist_ok=True)
    outcome = {j.name: "finished earlier" for j in jobs if j.name in done}
    env = run_env(threads)
    handles, started, by_name = {}, {}, {j.name: j for j in jobs}

    def settle(name: str) -> None:
        if name not in handles or not outcome[name].startswith("submitted"):
            return
        try:
            handles[name].result()
        except Exception as e:  # noqa: BLE001  (submitit's FailedJobError carries the job's traceback)
            # run_job's one line ("NAME: exit RC, see LOG") is the traceback's last line naming the run
            lines = [ln for ln in str(e).splitlines() if ln.strip()] or ["?"]
            line = next((ln for ln in reversed(lines) if f"{name}: exit" in ln), lines[0])
            outcome[name] = f"failed ({line.split(f'{name}: ', 1)[-1]})"
        else:
            outcome[name] = f"finished in {time.perf_counter() - started[name]:.0f} s"
            if on_finished is not None:
                on_finished(by_name[name])
        print(f"[benchmark] {name}: {outcome[name]}", flush=True)

    for job, after in to_run(jobs, done):
        ids = []
        if wait:
            for a in after:
                settle(a)
            failed = [a for a in after if not outcome[a].startswith("finished")]
            if failed:
                outcome[job.name] = "skipped: " + ", ".join(failed) + " failed"
                print(f"[benchmark] {job.name}: {outcome[job.name]}", flush=True)
                continue
        else:
            ids = [handles[a].job_id for a in after]
        executor.update_parameters(**parameters(job, ids))
        log = str((logs / f"{job.name}.log").resolve())
        handles[job.name] = executor.submit(run_job, job.name, command(job, shared, bin_dir), log, env)
        started[job.name] = time.perf_counter()
        outcome[job.name] = f"submitted as {handles[job.name].job_id}"
        print(f"[benchmark] {job.name}: {outcome[job.name]}" + (f" ({afterok(ids)})" if ids else ""), flush=True)
    if wait:
        for name in list(handles):
            settle(name)
    return outcome


def ensure_data(shifts, data: str, preset: str, seed: int, bin_dir: Path) -> int:
    """Generate ``<data>/<shift>`` (or ``data`` without shifts) where its manifest is missing;
    returns how many folders were written."""
    folders = [(None, data)] if shifts is None else [(sh, f"{data}/{shift_dir(sh)}") for sh in shifts]
    have = [f for _, f in folders if (Path(f) / "manifest.json").is_file()]
    written = 0
    for sh, folder in folders:
        if folder in have:
            continue
        cmd = [str(bin_dir / "da-pose"), "data", "generate", "--preset", preset, "--out", folder,
               "--seed", str(seed), "--workers", str(os.cpu_count() or 1)]
        if sh:
            cmd += ["--shift", sh]
        # the source and other domains are the same under every shift: render them once
        reuse = ["--source-from", have[0]] if have else []
        if subprocess.call(cmd + reuse, cwd=ROOT) != 0:
            if not reuse:
                raise subprocess.CalledProcessError(1, cmd)
            subprocess.check_call(cmd, cwd=ROOT)  # e.g. a folder of another seed: render everything
        have.append(folder)
        written += 1
    return written


def _metric(run, keys=("target_test/pck@0.05_crop/mean", "eval/pck@0.05_crop/mean")):
    """A training run's target test figure, or an evaluate run's (MLflow stores ``@`` escaped)."""
    from da_pose.tracking import metric_name

    metrics = {metric_name(k): v for k, v in run.data.metrics.items()}
    return next((metrics[k] for k in keys if k in metrics), None)


def calibration_table(experiment: str, tracking_uri: str, backbone: str = "hourglass") -> str:
    """Markdown: per shift, source-only and oracle target-test crop PCK (mean over seeds) and the
    gap, from the experiment's FINISHED runs (the source-only rows of other shifts are the
    ``evaluate`` runs). The calibration rule (docs/shifts.md): gap >= 10 points on every single shift."""
    runs = _finished(experiment, tracking_uri)[1]
    if not runs:
        return "(no runs)"
    cells: dict[tuple[str, str], dict[str, float]] = {}
    for run in runs.values():
        tags, value = run.data.tags, _metric(run)
        if value is None or "shift" not in tags or tags.get("method") not in ("source_only", "oracle"):
            continue
        if tags.get("backbone", backbone) != backbone:
            continue
        cells.setdefault((tags["shift"], tags["method"]), {})[tags.get("seed", "?")] = value
    order = [*SINGLE_SHIFTS, "all"]
    shifts = sorted({sh for sh, _ in cells}, key=lambda sh: (order.index(sh) if sh in order else len(order), sh))
    lines = ["| shift | source_only | oracle | gap | seeds |", "|---|---|---|---|---|"]
    for sh in shifts:
        so, orc = cells.get((sh, "source_only"), {}), cells.get((sh, "oracle"), {})
        mean = lambda d: sum(d.values()) / len(d) if d else None  # noqa: E731
        a, b = mean(so), mean(orc)
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731  (the metrics are in %)
        gap = "-" if a is None or b is None else f"{b - a:.1f}"
        seeds = ",".join(sorted(set(so) & set(orc))) or "-"
        lines.append(f"| {sh} | {fmt(a)} | {fmt(b)} | {gap} | {seeds} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=None,
                    help="generator preset written to --data when missing (default: demo; benchmark for --matrix full)")
    ap.add_argument("--data", default=None,
                    help="benchmark folder, one subfolder per shift (default data/<preset>-shifts; data/<preset> "
                         "with --shifts none)")
    ap.add_argument("--data-seed", type=int, default=0, help="generator seed of data written when missing")
    ap.add_argument("--experiment", default=None,
                    help="MLflow experiment (default toy-<preset>-shifts; toy-<preset> with --shifts none)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--matrix", default="default", choices=MATRICES,
                    help="what runs: default (main methods x shifts, ablations on all), full, calibration, labels")
    ap.add_argument("--shifts", nargs="+", default=None,
                    help="shifts (a comma list combines), 'none' for one dataset without shifts (default: "
                         f"{' '.join(DEFAULT_SHIFTS)} for --matrix default, else {' '.join(SINGLE_SHIFTS)} all)")
    ap.add_argument("--methods", nargs="+", default=None, choices=METHODS, help="replaces the matrix's methods")
    ap.add_argument("--labels-init", default="floor", choices=LABELS_INIT,
                    help="--matrix labels: a method on labels starts from the supervised-only floor of its subset "
                         "(default; ScarceNet's published staging) or from the source model")
    ap.add_argument("--backbone", default="hourglass", choices=list(BACKBONES),
                    help="the toy configs' hourglass, or a ResNet-18 SimpleBaseline (runs named *_r18_*)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per run (default: cores / jobs)")
    ap.add_argument("--tracking-uri", default="sqlite:///mlruns.db")
    ap.add_argument("--out", default="runs", help="run folders")
    ap.add_argument("--bin", default=str(Path(sys.executable).parent), help="folder holding da-pose")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run (repeatable), e.g. --set device=cuda")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, what is finished and an estimated time")
    ap.add_argument("--launcher", default="local", choices=LAUNCHERS,
                    help="local: subprocesses here (--jobs at a time); slurm: one SLURM job per run through submitit, "
                         "dependent runs afterok their prerequisites; local-submitit: submitit's local executor")
    ap.add_argument("--slurm-partition", default=None, help="SLURM partition (default: the cluster's)")
    ap.add_argument("--slurm-time", type=int, default=240, help="minutes per run (the time limit of each job)")
    ap.add_argument("--slurm-cpus", type=int, default=4, help="CPUs per run (and its torch threads without --threads)")
    ap.add_argument("--slurm-gpus", type=int, default=0, help="GPUs per run (add --set device=cuda)")
    ap.add_argument("--slurm-mem", default=None, help="memory per run, e.g. 16G (default: the cluster's)")
    ap.add_argument("--submitit-folder", default=None,
                    help="submitit's pickles and job output (default <out>/<experiment>/submitit/%%j; on the shared "
                         "file system for slurm)")
    return ap.parse_args(argv)


def resolve_shifts(names, matrix: str = "default") -> list[str] | None:
    """``--shifts``: canonical shift names (a comma list in SHIFTS order), None for ``none``."""
    if names is None:
        return list(DEFAULT_SHIFTS) if matrix == "default" else [LABEL_SHIFT] if matrix == "labels" else [
            *SINGLE_SHIFTS, "all"]
    if names == ["none"]:
        return None
    out = []
    for name in names:
        canon = ",".join(parse_shifts(name))
        if canon not in out:
            out.append(canon)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.launcher != "local" and not args.dry_run:
        try:
            import submitit  # noqa: F401
        except ImportError:
            print(SUBMITIT_MISSING.format(args.launcher), file=sys.stderr)
            return 2
    args.preset = args.preset or ("benchmark" if args.matrix == "full" else "demo")
    shifts = resolve_shifts(args.shifts, args.matrix)
    data = args.data or (f"data/{args.preset}" if shifts is None else f"data/{args.preset}-shifts")
    # not make demo's experiment (toy-demo): compare would mix its runs with the benchmark's
    experiment = args.experiment or (f"toy-{args.preset}" if shifts is None else f"toy-{args.preset}-shifts")
    threads = args.threads or (args.slurm_cpus if args.launcher == "slurm" else
                               max(1, (os.cpu_count() or 1) // max(1, args.jobs)))
    runs = Path(args.out)
    if args.methods is not None and (args.matrix != "labels" or shifts is None):
        methods = list(args.methods)
    elif shifts is None:
        methods = ["source_only", "oracle"] if args.matrix == "calibration" else list(METHODS)
    else:
        methods = matrix_methods(args.matrix, shifts, args.methods)
    home = None if shifts is None else trained_home(experiment, args.tracking_uri,
                                                     [run_name("pretrain", args.backbone, s) for s in args.seeds])
    jobs = plan(args.seeds, methods, runs, experiment, args.backbone, shifts, data, args.labels_init, home)
    done = finished_runs(experiment, args.tracking_uri)
    if args.dry_run:
        for j in jobs:
            state = "finished" if j.name in done else "to run"
            print(f"{j.name:40s} {state:9s} da-pose {' '.join(j.argv)}" + (f"  (after {', '.join(j.after)})" if j.after else ""))
        todo = [j for j in jobs if j.name not in done]
        folders = [data] if shifts is None else [f"{data}/{shift_dir(sh)}" for sh in shifts]
        missing = sum(not (Path(f) / "manifest.json").is_file() for f in folders)
        minutes = estimate_minutes(todo, args.preset, args.jobs, threads, missing, first=missing == len(folders))
        print(f"\n[benchmark] {len(todo)} of {len(jobs)} runs to do, {missing} data folders to generate; "
              f"estimated {minutes:.0f} min with {args.jobs} jobs x {threads} threads (rough: per-run minutes "
              f"measured on the demo preset, scaled by the data size)")
        return 0
    bin_dir = Path(args.bin)
    t0 = time.perf_counter()
    executor, folder = None, Path(args.submitit_folder or runs / experiment / "submitit" / "%j")
    if args.launcher != "local" and any(j.name not in done for j in jobs):
        try:  # before generating data: a machine without SLURM fails at once
            executor = make_executor(args.launcher, folder)
        except RuntimeError as e:  # SlurmExecutor: no srun here
            print(f"[benchmark] --launcher {args.launcher}: {e}", file=sys.stderr)
            return 2
    # on the submitting machine, before any job: every job finds its data on the shared file system
    ensure_data(shifts, data, args.preset, args.data_seed, bin_dir)
    user = [a for kv in args.sets for a in ("--set", kv)]
    common = ["--set", f"experiment={experiment}", "--tracking-uri", args.tracking_uri]
    shared = {
        # without shifts every run reads the one folder; with shifts each job names its own
        "train": common + ["--set", f"out_dir={runs}", "--resume", "auto"]
                 + (["--set", f"data.root={data}"] if shifts is None else []) + user,
        "evaluate": common + user,
    }
    logs, tag = runs / experiment / "logs", (lambda job: tag_runs([job], experiment, args.tracking_uri))
    if args.launcher == "local":
        outcome = run_all(jobs, shared, done, args.jobs, threads, logs, bin_dir, on_finished=tag)
    elif executor is not None:
        if args.launcher == "slurm":
            params = lambda job, ids: slurm_parameters(  # noqa: E731
                job.name, ids, args.slurm_partition, args.slurm_time, args.slurm_cpus, args.slurm_gpus, args.slurm_mem)
        else:
            params = lambda job, ids: {"timeout_min": args.slurm_time}  # noqa: E731
        outcome = submit_all(jobs, shared, done, threads, logs, bin_dir, executor, params,
                             wait=args.launcher != "slurm", on_finished=tag)
        if args.launcher == "slurm":
            tag_runs(jobs, experiment, args.tracking_uri)  # runs that finished since the last submission
            n = sum(o.startswith("submitted") for o in outcome.values())
            print(f"\n[benchmark] {n} of {len(jobs)} runs submitted to SLURM (submitit folder {folder}, logs in "
                  f"{logs}); once they are done, run this command again: it submits nothing, tags the runs and "
                  f"compares them")
            return 0
    else:
        outcome = {j.name: "finished earlier" for j in jobs}
    tag_runs(jobs, experiment, args.tracking_uri)
    failed = [n for n, o in outcome.items() if not o.startswith("finished")]
    print(f"\n[benchmark] {len(jobs) - len(failed)} of {len(jobs)} runs finished; "
          f"{time.perf_counter() - t0:.0f} s this time")
    if shifts is not None:
        print("\n[benchmark] target test crop PCK, source-only vs oracle per shift:\n"
              + calibration_table(experiment, args.tracking_uri, args.backbone))
    subprocess.call([str(bin_dir / "da-pose"), "compare", "--experiment", experiment, "--tracking-uri",
                     args.tracking_uri, "--out", str(runs / experiment / "compare"),
                     *(["--by", "labels"] if args.matrix == "labels" else
                       ["--by", "shift"] if shifts is not None else [])], cwd=ROOT)
    if failed:
        print("[benchmark] not finished: " + "; ".join(f"{n} ({outcome[n]})" for n in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
