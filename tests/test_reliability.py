"""Faults survived with nothing lost: kill -9, half-written checkpoints, a full disk, dead runs.

The end-to-end tests run the real command line (``python -m da_pose``) on the tiny generated
benchmark, kill it with SIGKILL at a chosen moment, resume it with ``--resume auto`` and compare
the final weights with an uninterrupted run's (CPU, deterministic mode, one thread in every
process so that both runs do bitwise the same arithmetic). docs/faults.md lists every fault
tried and the test that covers it.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from da_pose import checkpoint, jobs, run
from da_pose.train.dist import DistInfo
from da_pose.cli import main
from da_pose.config import dump_yaml, load_config
from da_pose.data import manifest
from da_pose.errors import CheckpointError, DaPoseError, DataError, TrackingError
from da_pose.models.factory import build_model
from da_pose.tracking import MlflowTracker
from tests.conftest import fresh_store, tiny_overrides

PACKAGE = Path(__file__).resolve().parents[1] / "da_pose"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------------- helpers
def cli(args, cwd: Path, log: Path) -> subprocess.Popen:
    """Start ``python -m da_pose ARGS``; output to ``log``."""
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "da_pose", *map(str, args)], cwd=cwd, stdout=fh,
                                stderr=subprocess.STDOUT, env=ENV)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    rc = proc.wait(timeout=timeout)
    assert rc == 0, log.read_text()[-3000:]


def kill_when(proc: subprocess.Popen, ready, log: Path, timeout: float = 300) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (polled every few milliseconds)."""
    t0 = time.monotonic()
    while not ready():
        assert proc.poll() is None, "the run ended before the fault could be injected:\n" + log.read_text()[-3000:]
        assert time.monotonic() - t0 < timeout, "timed out waiting for the kill point"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def sets(overrides) -> list[str]:
    out = []
    for o in overrides:
        out += ["--set", o]
    return out


def run_of(uri: str, name: str, experiment: str = "tests"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == name]
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def same_weights(a: Path, b: Path) -> None:
    ca, cb = checkpoint.load(a), checkpoint.load(b)
    assert (ca["epoch"], ca["step"]) == (cb["epoch"], cb["step"])
    assert ca["model"].keys() == cb["model"].keys()
    for k, v in ca["model"].items():
        assert torch.equal(v, cb["model"][k]), k


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))








def init_checkpoint(root: Path, tmp_path: Path) -> Path:
    """An untrained tiny model saved as a checkpoint: runs compared bitwise start from it, so the
    comparison does not depend on initialisation (seeded too: test_fresh_runs_with_one_seed_start_equal)."""
    cfg = load_config(None, tiny_overrides(root, tmp_path, "init"))
    path = tmp_path / "init.pt"
    checkpoint.save(path, {"model": build_model(cfg.model, 18).state_dict(), "arch": run.arch_of(cfg),
                           "config": dump_yaml(cfg)})
    return path


# ----------------------------------------------------------------------------------- kill -9
@pytest.mark.slow
def test_kill9_pretrain_resumes_to_the_uninterrupted_weights(tiny_benchmark, empty_yaml, tmp_path,
                                                             mlflow_template):
    # source-val evaluation only at the end: the test is about the training state, and it is slow
    epochs = ["train.epochs=4", "train.eval_every=10", f"init={init_checkpoint(tiny_benchmark, tmp_path)}"]
    ref_uri = fresh_store(mlflow_template, tmp_path / "ref.db")
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    ref = cli(["pretrain", empty_yaml, *sets(tiny_overrides(tiny_benchmark, tmp_path, "ref", ref_uri) + epochs)],
              tmp_path, tmp_path / "ref.log")
    args = ["pretrain", empty_yaml, *sets(tiny_overrides(tiny_benchmark, tmp_path, "killed", uri) + epochs)]
    run_dir = tmp_path / "runs" / "tests" / "killed"
    log = tmp_path / "killed.log"
    kill_when(cli(args, tmp_path, log), lambda: (run_dir / "last.pt").is_file(), log)
    at_kill = checkpoint.load(run_dir / "last.pt")
    assert 1 <= at_kill["epoch"] < 4

    # a kill during a save leaves a temporary file beside last.pt: it must never be loaded
    (run_dir / ".last.pt.deadbeef.tmp").write_bytes(b"half of a checkpoint")
    killed = run_of(uri, "killed")
    assert killed.info.status == "RUNNING"  # nobody ended it
    probe = MlflowTracker(uri, "tests", "probe")  # the next start marks the dead process's run KILLED
    probe.end()
    assert MlflowClient(uri).get_run(killed.info.run_id).info.status == "KILLED"

    finish(cli(args + ["--resume", "auto"], tmp_path, log), log)
    finish(ref, tmp_path / "ref.log")
    same_weights(run_dir / "last.pt", tmp_path / "runs" / "tests" / "ref" / "last.pt")
    assert checkpoint.load(run_dir / "last.pt")["epoch"] == 4
    assert (run_dir / ".last.pt.deadbeef.tmp").read_bytes() == b"half of a checkpoint"  # ignored, untouched
    resumed = MlflowClient(uri).get_run(killed.info.run_id)  # the same MLflow run continued
    assert resumed.info.status == "FINISHED" and resumed.data.tags["resumed"] == "true"


@pytest.mark.slow
def test_kill9_ccssl_resumes_to_the_uninterrupted_weights(tiny_benchmark, empty_yaml, tmp_path, mlflow_template):
    init = init_checkpoint(tiny_benchmark, tmp_path)  # an untrained model stands in for a pretrained one
    ccssl = [f"init={init}", "method=ccssl", "ccssl.rounds=2", "ccssl.steps_per_round=2", "ccssl.num_transforms=2"]
    ref_uri = fresh_store(mlflow_template, tmp_path / "ref.db")
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    ref = cli(["adapt", "ccssl", empty_yaml, *sets(tiny_overrides(tiny_benchmark, tmp_path, "ref", ref_uri) + ccssl)],
              tmp_path, tmp_path / "ref.log")
    args = ["adapt", "ccssl", empty_yaml, *sets(tiny_overrides(tiny_benchmark, tmp_path, "killed", uri) + ccssl)]
    run_dir = tmp_path / "runs" / "tests" / "killed"
    log = tmp_path / "killed.log"
    # round 0's pseudo-labels are written: the run is training round 0 or labelling round 1
    kill_when(cli(args, tmp_path, log), lambda: (run_dir / "pseudo_labels" / "round_00.pt").is_file(), log)
    # the cached labels of the round to redo are damaged too: they must be regenerated, not trusted
    for cached in (run_dir / "pseudo_labels").glob("round_*.pt"):
        cached.write_bytes(cached.read_bytes()[:64])
    finish(cli(args + ["--resume", "auto"], tmp_path, log), log)
    finish(ref, tmp_path / "ref.log")
    same_weights(run_dir / "last.pt", tmp_path / "runs" / "tests" / "ref" / "last.pt")
    assert checkpoint.load(run_dir / "last.pt")["epoch"] == 2
    run = run_of(uri, "killed")
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
    assert "target_test/pck_at_0.05_crop/mean" in run.data.metrics


CHILD = textwrap.dedent("""
    import os, sys, time
    import torch
    from da_pose import checkpoint

    path, mode = sys.argv[1], sys.argv[2]
    checkpoint.save(path, {"model": {"w": torch.full((5000,), 1.0)}, "step": 1})
    def half_written(fd):  # the process dies with half of the bytes on disk (before the rename)
        os.ftruncate(fd, os.fstat(fd).st_size // 2)
        print("half", flush=True)
        time.sleep(120)

    def stalled_replace(src, dst):  # ... or with the whole temporary file written, before the rename
        print("replace", flush=True)
        time.sleep(120)

    if mode == "write":
        os.fsync = half_written
    else:
        os.replace = stalled_replace
    checkpoint.save(path, {"model": {"w": torch.full((5000,), 2.0)}, "step": 2})
""")


@pytest.mark.parametrize("moment", ["write", "replace"])
def test_kill9_during_a_save_never_replaces_last(tmp_path, moment):
    last = tmp_path / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(last), moment], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    line = proc.stdout.readline().strip()
    assert line == ("half" if moment == "write" else "replace"), proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    ckpt = checkpoint.load(last)  # the previous checkpoint, whole
    assert ckpt["step"] == 1 and torch.equal(ckpt["model"]["w"], torch.full((5000,), 1.0))
    (tmp,) = leftovers(tmp_path)  # the dead process's temporary file, under another name
    assert tmp.startswith(".last.pt.")
    if moment == "write":
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            checkpoint.load(tmp_path / tmp)
    # the next save ignores the leftover and replaces last.pt
    checkpoint.save(last, {"model": {"w": torch.full((5000,), 3.0)}, "step": 3})
    assert checkpoint.load(last)["step"] == 3 and leftovers(tmp_path) == [tmp]


# ----------------------------------------------------------------------------------- full disk
def _limit_file_size() -> None:
    # A real kernel write failure: files may not grow past 64 KiB (EFBIG instead of a signal).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))


def test_failed_write_is_a_checkpoint_error_and_keeps_last(tmp_path):
    """torch's writer reports a failed write as a RuntimeError; the user must get a
    CheckpointError and the previous last.pt, with no temporary file left behind."""
    code = textwrap.dedent("""
        import sys, torch
        from da_pose import checkpoint
        from da_pose.errors import CheckpointError
        path = sys.argv[1]
        checkpoint.save(path, {"step": 1})
        try:
            checkpoint.save(path, {"step": 2, "w": torch.zeros(100_000)})  # 400 kB > the 64 KiB limit
        except CheckpointError as exc:
            print("refused:", exc)
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "last.pt")], capture_output=True, text=True,
                          env=ENV, preexec_fn=_limit_file_size, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "refused: could not write" in proc.stdout and "the previous file is unchanged" in proc.stdout
    assert checkpoint.load(tmp_path / "last.pt")["step"] == 1
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_disk_full_during_pretraining_stops_cleanly_and_resumes(tiny_benchmark, empty_yaml, tmp_path, capsys,
                                                                 monkeypatch, mlflow_template):
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    over = tiny_overrides(tiny_benchmark, tmp_path, "full", uri) + ["train.epochs=2", "train.eval_every=10"]
    run_dir = tmp_path / "runs" / "tests" / "full"
    real_replace = os.replace
    saves = {"last.pt": 0}

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == "last.pt":
            saves["last.pt"] += 1
            if saves["last.pt"] >= 2:  # the disk fills up after the first epoch's checkpoint
                raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain", str(empty_yaml), *sets(over)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert "last.pt (No space left on device); the previous file is unchanged" in lines[0]
    assert checkpoint.load(run_dir / "last.pt")["epoch"] == 1  # the last good checkpoint
    assert leftovers(run_dir) == []
    assert run_of(uri, "full").info.status == "FAILED"

    monkeypatch.setattr(os, "replace", real_replace)  # space freed: continue where it stopped
    main(["pretrain", str(empty_yaml), *sets(over), "--resume", "auto"])
    ckpt = checkpoint.load(run_dir / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["step"] == 6
    assert run_of(uri, "full").info.status == "FINISHED"


@pytest.mark.slow
def test_unusable_out_dir_is_refused_before_the_mlflow_run(tiny_benchmark, tmp_path, mlflow_template):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the run folder should go\n")
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    cfg = load_config(None, tiny_overrides(tiny_benchmark, tmp_path, "blocked", uri) + [f"out_dir={blocker}"])
    try:
        with pytest.raises(DaPoseError, match="blocker"):
            jobs.run_pretrain(cfg)
    finally:
        client = MlflowClient(cfg.tracking_uri)
        exp = client.get_experiment_by_name("tests")
        running = [r for r in client.search_runs([exp.experiment_id])] if exp else []
        assert all(r.info.status != "RUNNING" for r in running)


def test_fresh_runs_with_one_seed_start_equal(tiny_benchmark, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_benchmark, tmp_path, "seeded"))
    ctx = run.RunContext(cfg, tmp_path / "run", run.NullTracker(), torch.device("cpu"), DistInfo())
    weights = []
    for other_process_state in (1, 2):  # whatever the process did before the job
        torch.manual_seed(other_process_state)
        model, _ = run.build(cfg, ctx)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.slow  # the MLflow store template
def test_tracking_store_damaged_mid_run_is_one_tracking_error(tmp_path, mlflow_template):
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    tracker = MlflowTracker(uri, "tests", "damaged")
    tracker.log_metrics({"train/loss": 1.0}, step=1)
    (tmp_path / "mlruns.db").write_bytes(b"not a database" * 512)
    for call in (lambda: tracker.log_metrics({"train/loss": 0.5}, step=2), lambda: tracker.set_tags({"a": 1}),
                 lambda: tracker.log_params({"b": 2}), lambda: tracker.log_artifact(tmp_path / "mlruns.db")):
        with pytest.raises(TrackingError, match="mlruns.db: .* failed") as err:
            call()
        assert "\n" not in str(err.value) and "SELECT" not in str(err.value)
    tracker.end("FAILED")  # ending never masks the error that stopped the run


# ----------------------------------------------------------------------------------- security
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "pickle.load", "pickle.loads", "yaml.load",
                   "yaml.unsafe_load", "marshal.loads", "os.system"}
PICKLE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal"}


def _call_name(node: ast.Call) -> str:
    """``eval``, ``torch.load``, ``sys.path.insert`` ... (dotted name of what is called)."""
    parts, f = [], node.func
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    parts.append(f.id if isinstance(f, ast.Name) else "?")
    return ".".join(reversed(parts))


def _keyword(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expr>"
    return None


def security_problems(text: str, where: str) -> list[str]:
    """What a source file does that the project forbids, checked on its syntax tree: code
    execution, pickle loading, torch.load without weights_only=True, numpy pickles, unsafe YAML,
    sys.path edits."""
    problems = []
    for node in ast.walk(ast.parse(text)):
        line = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Call):
            name = _call_name(node)
            if name in FORBIDDEN_CALLS:
                problems.append(f"{line}: {name}(")
            if name == "torch.load" and _keyword(node, "weights_only") is not True:
                problems.append(f"{line}: torch.load without weights_only=True")
            if name in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") not in (None, False):
                problems.append(f"{line}: np.load with allow_pickle")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = {a.name.split(".")[0] for a in node.names}
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module.split(".")[0])
            if names & PICKLE_MODULES:
                problems.append(f"{line}: imports {sorted(names & PICKLE_MODULES)[0]}")
        elif isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
                and node.value.id == "sys":
            problems.append(f"{line}: touches sys.path")
    return problems


def test_source_has_no_code_execution_or_unsafe_loading():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    problems = [p for f in files for p in security_problems(f.read_text(), str(f.relative_to(PACKAGE.parent)))]
    assert problems == []


def test_the_security_check_catches_each_rule():
    bad = {
        'eval("1")': "eval(",
        'exec("x = 1")': "exec(",
        'import pickle': "imports pickle",
        'from pickle import loads': "imports pickle",
        'pickle.load(fh)': "pickle.load(",
        'torch.load("a.pt")': "without weights_only",
        'torch.load("a.pt", weights_only=False)': "without weights_only",
        'np.load("a.npy", allow_pickle=True)': "allow_pickle",
        'yaml.load("a: 1")': "yaml.load(",
        'sys.path.insert(0, ".")': "sys.path",
        'sys.path = []': "sys.path",
    }
    for line, expected in bad.items():
        found = security_problems(line, "x.py")
        assert len(found) >= 1 and any(expected in f for f in found), (line, found)
    ok = 'torch.load("a.pt", weights_only=True); np.load("a.npy", allow_pickle=False); model.eval(); re.compile("x")'
    assert security_problems(ok, "x.py") == []


@pytest.mark.parametrize("relative", ["../outside", "a/../../outside", "/etc/passwd", "..\\..\\outside", "..", ""])
def test_manifest_paths_cannot_escape_their_root(tmp_path, relative):
    with pytest.raises(DataError, match="escapes the benchmark folder|non-empty relative path"):
        manifest.resolve_inside(tmp_path, relative)


@pytest.mark.parametrize("field", ["root", "split_files", "annotations", "images"])
def test_every_manifest_path_field_is_checked(tiny_benchmark, tmp_path, field):
    doc = json.loads((tiny_benchmark / manifest.MANIFEST).read_text())
    domain = {"root": "source", "split_files": "target", "annotations": "other", "images": "other"}[field]
    entry = doc["domains"][domain]
    entry[field] = {k: "../../etc/passwd" for k in entry[field]} if isinstance(entry[field], dict) else "../../etc"
    (tmp_path / manifest.MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(DataError, match="escapes the benchmark folder"):
        manifest.read_manifest(tmp_path)


def test_paths_inside_the_root_resolve_there(tmp_path):
    assert manifest.resolve_inside(tmp_path, "a/./b/../c") == tmp_path / "a" / "c"
