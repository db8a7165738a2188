"""scripts/benchmark.py (``make benchmark``): the plan, resuming from MLflow, failures that stop dependents."""

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import fresh_store, tiny_overrides

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_script", ROOT / "scripts" / "benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules[spec.name]


def test_plan_covers_every_method_and_seed_with_dependencies(bench):
    jobs = bench.plan([0, 1, 2], bench.METHODS, Path("runs"), "exp")
    names = [j.name for j in jobs]
    assert len(names) == len(set(names)) == 3 * len(bench.METHODS)
    by_name = {j.name: j for j in jobs}
    for s in (0, 1, 2):
        assert by_name[f"pretrain_hg_s{s}"].after == []
        # the oracle fine-tunes the seed's source model on the labelled target
        oracle = by_name[f"oracle_hg_s{s}"]
        assert oracle.after == [f"pretrain_hg_s{s}"] and f"init=runs/exp/pretrain_hg_s{s}/last.pt" in oracle.argv
        cc = by_name[f"ccssl_hg_s{s}"]
        assert cc.after == [f"pretrain_hg_s{s}"]
        assert f"init=runs/exp/pretrain_hg_s{s}/last.pt" in cc.argv and cc.argv[cc.argv.index("--seed") + 1] == str(s)
        assert by_name[f"ccssl_r_hg_s{s}"].after == [f"ccssl_hg_s{s}"]
        assert f"init=runs/exp/ccssl_hg_s{s}/last.pt" in by_name[f"ccssl_r_hg_s{s}"].argv
    # every job comes after the jobs it depends on, and the main rows come before the ablations
    position = {n: i for i, n in enumerate(names)}
    assert all(position[a] < position[j.name] for j in jobs for a in j.after)
    assert max(position[f"wscda_pplo_hg_s{s}"] for s in (0, 1, 2)) < min(
        position[f"ccssl_no_temporal_hg_s{s}"] for s in (0, 1, 2))


def test_plan_for_the_resnet_backbone(bench):
    jobs = {j.name: j for j in bench.plan([1], ["source_only", "ccssl", "mean_teacher", "wscda"], Path("runs"),
                                         "exp", "resnet18")}
    assert sorted(jobs) == ["ccssl_r18_s1", "mean_teacher_r18_s1", "pretrain_r18_s1", "wscda_r18_s1"]
    cc, mt, ws = jobs["ccssl_r18_s1"], jobs["mean_teacher_r18_s1"], jobs["wscda_r18_s1"]
    assert cc.after == ["pretrain_r18_s1"] and "init=runs/exp/pretrain_r18_s1/last.pt" in cc.argv
    assert "model.backbone=resnet18" in cc.argv and "model.backbone=resnet18" in jobs["pretrain_r18_s1"].argv
    # the scratch learning rate only where a model is trained from scratch
    assert "train.lr=0.001" in jobs["pretrain_r18_s1"].argv and "train.lr=0.001" not in cc.argv
    # a method with a config of its own for the backbone (chosen on target val) runs it, without the fallback --set
    for job, method in ((cc, "ccssl"), (mt, "mean_teacher")):
        assert f"{bench.TOY}/{method}_r18.yaml" in job.argv and "train.lr=0.0002" not in job.argv
    # one without restarts at the rate ResNet pretraining ended at, with a short curriculum (docs/results.md)
    assert f"{bench.TOY}/wscda_hg.yaml" in ws.argv
    assert "train.lr=0.0002" in ws.argv and "ccssl.keep_schedule=[0.2,0.2,0.2,0.2]" in ws.argv
    assert "train.lr=0.0002" not in jobs["pretrain_r18_s1"].argv


def test_plan_drops_dependencies_on_methods_not_asked_for(bench):
    jobs = bench.plan([0], ["ccssl"], Path("runs"), "exp")
    assert [(j.name, j.after) for j in jobs] == [("ccssl_hg_s0", [])]


def test_failed_dependency_skips_its_dependents(bench, tmp_path, mlflow_template, capsys):
    """A pretraining that fails (a config error here) stops the runs that start from it, exit 1."""
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    rc = bench.main(["--data", str(tmp_path / "nodata"), "--experiment", "e", "--seeds", "0", "--shifts", "none",
                     "--methods", "source_only", "source_only_ext", "--tracking-uri", uri, "--out", str(tmp_path / "runs"),
                     "--set", "train.no_such_key=1", "--preset", "tiny"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "pretrain_hg_s0: failed (exit 2" in out
    assert "source_only_ext_hg_s0: skipped: pretrain_hg_s0 failed" in out
    assert "not finished: " in err
    log = (tmp_path / "runs" / "e" / "logs" / "pretrain_hg_s0.log").read_text()
    assert "no_such_key" in log


@pytest.mark.slow
def test_runs_then_skips_finished_runs(bench, tiny_benchmark, tmp_path, mlflow_template, capsys):
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    keep = [kv for kv in tiny_overrides(tiny_benchmark, tmp_path)
            if kv.split("=")[0] not in ("out_dir", "tracking_uri", "name", "experiment", "data.root")]
    sets = [a for kv in keep + ["train.epochs=1", "train.max_steps=2"] for a in ("--set", kv)]
    argv = ["--data", str(tiny_benchmark), "--experiment", "bench", "--seeds", "0", "--jobs", "2", "--shifts", "none",
            "--methods", "source_only", "source_only_ext", "oracle", "--tracking-uri", uri,
            "--out", str(tmp_path / "runs"), "--bin", str(Path(sys.executable).parent), *sets]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "3 of 3 runs finished" in out and "source_only_ext" in out
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bench")
    first = {r.info.run_name: r.info.status for r in client.search_runs([exp.experiment_id])}
    assert {n: first[n] for n in ("pretrain_hg_s0", "source_only_ext_hg_s0", "oracle_hg_s0")} == dict.fromkeys(
        ("pretrain_hg_s0", "source_only_ext_hg_s0", "oracle_hg_s0"), "FINISHED")
    ext = client.search_runs([exp.experiment_id], "tags.method = 'source_only_ext'")[0]
    assert ext.data.params["init"].endswith("pretrain_hg_s0/last.pt")
    # again: nothing is re-run (only another compare summary run appears)
    assert bench.main(argv) == 0
    assert "start " not in capsys.readouterr().out
    second = client.search_runs([exp.experiment_id], "tags.command != 'compare'")
    assert len(second) == 3


# ------------------------------------------------------------------------------------ shifts


def test_shift_plan_pretrains_once_per_seed_and_evaluates_it_on_the_other_shifts(bench):
    shifts = ["pose", "shape", "all"]
    jobs = bench.plan([0, 1], bench.matrix_methods("calibration", shifts), Path("runs"), "exp", shifts=shifts,
                      data="data/s")
    by_name = {j.name: j for j in jobs}
    assert sorted(by_name) == sorted(
        [f"pretrain_hg_s{s}" for s in (0, 1)]
        + [f"oracle_hg_{sh}_s{s}" for sh in shifts for s in (0, 1)]
        + [f"source_only_hg_{sh}_s{s}" for sh in ("pose", "shape") for s in (0, 1)])
    pre = by_name["pretrain_hg_s1"]  # the home shift is `all`: its target test row is the pretraining's
    assert pre.kind == "train" and "data.root=data/s/all" in pre.argv and pre.after == []
    ev = by_name["source_only_hg_pose_s1"]
    assert ev.kind == "evaluate" and ev.argv[0] == "evaluate" and ev.after == ["pretrain_hg_s1"]
    assert "runs/exp/pretrain_hg_s1/last.pt" in ev.argv and "data.root=data/s/pose" in ev.argv
    assert ev.tags == {"shift": "pose", "seed": "1", "source_run": "pretrain_hg_s1"}
    assert "data.root=data/s/shape" in by_name["oracle_hg_shape_s0"].argv
    position = {j.name: i for i, j in enumerate(jobs)}
    assert all(position[a] < position[j.name] for j in jobs for a in j.after)


def test_shared_source_models_trained_elsewhere_are_evaluated_on_every_shift_asked(bench):
    """The shared models of an earlier call (home `all`) with other shifts: no pretraining job, and
    the source-only and control rows of every shift asked are evaluation runs, the home-less first
    shift included."""
    shifts = ["occlusion", "video"]
    methods = {sh: ["source_only", "oracle", "source_only_ext", "plain_pl"] for sh in shifts}
    jobs = bench.plan([0], methods, Path("runs"), "exp", shifts=shifts, data="data/s", home="all")
    by_name = {j.name: j for j in jobs}
    assert "pretrain_hg_s0" not in by_name and "source_only_ext_hg_s0" not in by_name
    for sh in shifts:
        for method, trained in (("source_only", "pretrain_hg_s0"), ("source_only_ext", "source_only_ext_hg_s0")):
            ev = by_name[f"{method}_hg_{sh}_s0"]
            assert ev.kind == "evaluate" and f"runs/exp/{trained}/last.pt" in ev.argv and ev.after == []
    assert by_name["plain_pl_hg_occlusion_s0"].after == []  # its source model exists already
    # without a home given, the first shift is home and trains the shared models
    assert "pretrain_hg_s0" in {j.name for j in bench.plan([0], methods, Path("runs"), "exp", shifts=shifts)}


def test_default_matrix_runs_the_ablations_on_all_only(bench):
    shifts = ["pose", "all"]
    methods = bench.matrix_methods("default", shifts)
    assert "ccssl_no_temporal" in methods["all"] and "ccssl_no_temporal" not in methods["pose"]
    assert {"source_only", "oracle", "ccssl", "plain_pl", "mean_teacher"} <= set(methods["pose"])
    assert set(methods["all"]) == set(methods["pose"]) | set(bench.ABLATIONS)
    assert "wscda" not in methods["all"] and "ccssl_r" not in methods["all"]  # --matrix full
    assert bench.matrix_methods("full", shifts) == {sh: list(bench.METHODS) for sh in shifts}
    jobs = {j.name: j for j in bench.plan([0], methods, Path("runs"), "exp", shifts=shifts, data="d")}
    assert jobs["ccssl_hg_pose_s0"].after == ["pretrain_hg_s0"]
    assert "init=runs/exp/pretrain_hg_s0/last.pt" in jobs["ccssl_hg_pose_s0"].argv
    full = {j.name: j for j in bench.plan([0], bench.matrix_methods("full", shifts), Path("runs"), "exp",
                                          shifts=shifts, data="d")}
    assert full["ccssl_r_hg_pose_s0"].after == ["ccssl_hg_pose_s0"]  # CC-SSL-R from its own shift's CC-SSL
    # the source-trained control is trained once, on the home shift, and evaluated on the others
    assert jobs["source_only_ext_hg_s0"].kind == "train" and jobs["source_only_ext_hg_pose_s0"].kind == "evaluate"
    assert jobs["source_only_ext_hg_pose_s0"].after == ["source_only_ext_hg_s0"]


def test_shift_names_are_canonical_and_checked(bench):
    assert bench.resolve_shifts(None) == list(bench.DEFAULT_SHIFTS) == ["pose", "context", "appearance", "all"]
    assert bench.resolve_shifts(None, "full") == ["appearance", "context", "pose", "shape", "occlusion", "video", "all"]
    assert bench.resolve_shifts(["shape,pose", "pose,shape", "all"]) == ["pose,shape", "all"]
    assert bench.resolve_shifts(["none"]) is None
    assert bench.shift_dir("pose,shape") == "pose+shape"
    from da_pose.errors import ConfigError

    with pytest.raises(ConfigError, match="valid: appearance"):
        bench.resolve_shifts(["weather"])


def test_a_bad_option_is_one_error_line_from_the_script(tmp_path):
    import subprocess

    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--shifts", "weather", "--dry-run",
                          "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: unknown shift weather; valid: appearance")
    assert "Traceback" not in out.stderr


def test_dry_run_prints_the_plan_and_an_estimate(bench, tmp_path, mlflow_template, capsys):
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    rc = bench.main(["--dry-run", "--matrix", "calibration", "--shifts", "pose", "shape", "--seeds", "0",
                     "--preset", "demo", "--data", str(tmp_path / "d"), "--tracking-uri", uri, "--jobs", "1",
                     "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and not (tmp_path / "d").exists()  # nothing generated, nothing run
    assert "pretrain_hg_s0" in out and "source_only_hg_shape_s0" in out and "oracle_hg_pose_s0" in out
    assert "4 of 4 runs to do, 2 data folders to generate; estimated" in out


@pytest.mark.slow
def test_calibration_matrix_runs_per_shift_with_tags(bench, tmp_path, mlflow_template, capsys):
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    sets = ["data.input_size=64", "data.heatmap_size=16", "model.depth=2", "model.features=16", "train.batch_size=4",
            "train.epochs=1", "train.max_steps=2", "train.lr_milestones=[]", "device=cpu"]
    argv = ["--matrix", "calibration", "--shifts", "pose", "shape", "--seeds", "0", "--preset", "tiny", "--jobs", "1",
            "--data", str(tmp_path / "data"), "--experiment", "cal", "--tracking-uri", uri, "--out",
            str(tmp_path / "runs"), "--bin", str(Path(sys.executable).parent), *[a for kv in sets for a in ("--set", kv)]]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "4 of 4 runs finished" in out and "| pose |" in out and "| shape |" in out
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("cal")
    tags = {r.info.run_name: r.data.tags for r in client.search_runs([exp.experiment_id], "tags.command != 'compare'")}
    assert {n: (t.get("shift"), t.get("method"), t.get("command")) for n, t in tags.items()} == {
        "pretrain_hg_s0": ("pose", "source_only", "pretrain"),
        "source_only_hg_shape_s0": ("shape", "source_only", "evaluate"),
        "oracle_hg_pose_s0": ("pose", "oracle", "finetune"),
        "oracle_hg_shape_s0": ("shape", "oracle", "finetune"),
    }
    assert tags["source_only_hg_shape_s0"]["seed"] == "0"
    # a later call on another shift: the source model trained on `pose` is evaluated on `video`
    # too (its own target test row is `pose`'s), and not trained again
    assert bench.trained_home("cal", uri, ["pretrain_hg_s0"]) == "pose" and bench.trained_home("none", uri, ["x"]) is None
    argv[argv.index("shape")] = "video"
    argv.remove("pose")
    assert bench.main(argv + ["--methods", "source_only"]) == 0
    runs = client.search_runs([exp.experiment_id], "tags.command = 'evaluate'")
    assert {r.info.run_name: r.data.tags["shift"] for r in runs} == {"source_only_hg_shape_s0": "shape",
                                                                     "source_only_hg_video_s0": "video"}
    # the second shift's folder took its source from the first: the same files, linked
    a = tmp_path / "data" / "pose" / "synthetic_animal"
    b = tmp_path / "data" / "shape" / "synthetic_animal"
    assert sorted(p.name for p in a.rglob("*.png")) == sorted(p.name for p in b.rglob("*.png"))


def test_labels_matrix_crosses_methods_with_labelled_fractions(bench, tmp_path, mlflow_template, capsys):
    assert bench.resolve_shifts(None, "labels") == ["pose"]
    methods = bench.matrix_methods("labels", ["pose"])["pose"]
    fractions = [f for f in bench.LABEL_FRACTIONS if f != "0"]
    for m in bench.LABEL_METHODS:
        assert m in methods and all(f"{m}@{f}" in methods for f in fractions)
    # the floor: source-only (0 labels), the oracle on every subset, the oracle on all labels
    assert {"source_only", "oracle", "oracle@0.02", "oracle@0.1"} <= set(methods)
    assert "oracle@all" not in methods and "oracle@0" not in methods
    jobs = {j.name: j for j in bench.plan([0, 1, 2], {"pose": methods}, Path("runs"), "exp", shifts=["pose"], data="d")}
    per_seed = 2 + len(fractions) + len(bench.LABEL_METHODS) * len(bench.LABEL_FRACTIONS)
    assert len(jobs) == 3 * per_seed
    cc = jobs["scarcenet_l2_hg_pose_s1"]
    assert "data.target_labels=0.02" in cc.argv and cc.argv[:2] == ["adapt", "scarcenet"]
    assert cc.after == ["oracle_l2_hg_pose_s1"] and "init=runs/exp/oracle_l2_hg_pose_s1/last.pt" in cc.argv
    floor = jobs["oracle_l2_hg_pose_s2"]
    assert floor.argv[0] == "finetune" and "data.target_labels=0.02" in floor.argv
    # on labels, a method starts from the floor of its seed and subset (ScarceNet's staging) ...
    mt = jobs["mean_teacher_l2_hg_pose_s2"]
    assert mt.after == ["oracle_l2_hg_pose_s2"] and "init=runs/exp/oracle_l2_hg_pose_s2/last.pt" in mt.argv
    # ... or, with labels_init="source", from the source model like the runs without labels
    src = {j.name: j for j in bench.plan([2], {"pose": methods}, Path("runs"), "exp", shifts=["pose"], data="d",
                                         labels_init="source")}["mean_teacher_l2_hg_pose_s2"]
    assert src.after == ["pretrain_hg_s2"] and "init=runs/exp/pretrain_hg_s2/last.pt" in src.argv
    assert "mean_teacher_l10_hg_pose_s0" in jobs and not any("_lall_" in name for name in jobs)
    # 0 labels and the oracle on all labels are the shift benchmark's own runs (shared by name)
    assert not any(a.startswith("data.target_labels") for a in jobs["plain_pl_hg_pose_s0"].argv + jobs[
        "oracle_hg_pose_s0"].argv)
    only = bench.matrix_methods("labels", ["pose"], ["mean_teacher"])["pose"]
    assert "mean_teacher@0.1" in only and "scarcenet" not in only
    assert "ccssl@0.02" in bench.matrix_methods("labels", ["pose"], ["ccssl"])["pose"]
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    rc = bench.main(["--dry-run", "--matrix", "labels", "--data", str(tmp_path / "d"), "--tracking-uri", uri])
    out = capsys.readouterr().out
    assert rc == 0 and "scarcenet_l10_hg_pose_s2" in out and f"{3 * per_seed} of {3 * per_seed} runs to do" in out
    assert "estimated" in out


# ------------------------------------------------------------------------- cluster launchers

# stands in for da-pose in the launcher tests: logs its argv, records when it ran, fails when asked
FAKE_DA_POSE = '''#!{python}
import json, os, sys, time
from pathlib import Path

argv = sys.argv[1:]
if argv[:1] == ["compare"]:
    sys.exit(0)
name = next(a[len("name="):] for a in argv if a.startswith("name="))
start = time.time()
print("fake da-pose", *argv, flush=True)
time.sleep(0.5)
marks = {{"start": start, "end": time.time(), "threads": os.environ.get("DA_POSE_THREADS")}}
(Path(os.environ["BENCH_MARKS"]) / f"{{name}}.json").write_text(json.dumps(marks))
sys.exit(3 if name in os.environ.get("BENCH_FAIL", "").split(",") else 0)
'''


def test_to_run_orders_by_dependency_and_drops_finished_prerequisites(bench):
    jobs = bench.plan([0, 1], ["source_only", "oracle", "ccssl", "ccssl_r"], Path("runs"), "exp")
    order = bench.to_run(list(reversed(jobs)), {"pretrain_hg_s1", "ccssl_hg_s1"})
    names = [j.name for j, _ in order]
    assert sorted(names) == sorted(j.name for j in jobs if j.name not in ("pretrain_hg_s1", "ccssl_hg_s1"))
    assert all(names.index(a) < names.index(j.name) for j, after in order for a in after)
    after = {j.name: a for j, a in order}
    assert after["oracle_hg_s0"] == ["pretrain_hg_s0"] and after["oracle_hg_s1"] == [] and after["ccssl_r_hg_s1"] == []
    assert bench.to_run(jobs, set()) == [(j, j.after) for j in jobs]  # the plan's own order where it allows
    with pytest.raises(ValueError, match="unknown prerequisite"):
        bench.to_run([bench.Job("a", ["x"], ["nowhere"])], set())


def test_slurm_submission_sets_afterok_dependencies_and_does_not_wait(bench, tmp_path):
    """The slurm path's parameters and dependencies, through the real submission code, without sbatch."""
    class Executor:  # records what SlurmExecutor would be given; result() must never be called
        def __init__(self):
            self.parameters, self.submitted = {}, []

        def update_parameters(self, **kwargs):
            self.parameters.update(kwargs)

        def submit(self, fn, *args):
            self.submitted.append((dict(self.parameters), fn, args))
            return SimpleNamespace(job_id=str(100 + len(self.submitted)), result=lambda: pytest.fail("waited"))

    jobs = bench.plan([0, 1], ["source_only", "oracle", "ccssl", "ccssl_r"], Path("runs"), "exp")
    shared = {"train": ["--set", "experiment=exp"], "evaluate": []}
    ex, logs = Executor(), tmp_path / "logs"
    outcome = bench.submit_all(
        jobs, shared, {"pretrain_hg_s1"}, 8, logs, Path("/venv/bin"), ex,
        lambda job, ids: bench.slurm_parameters(job.name, ids, "gpu", 60, 8, 1, "32G"), wait=False)
    params = {p["job_name"]: p for p, _, _ in ex.submitted}
    ids = {name: o.split()[-1] for name, o in outcome.items() if o.startswith("submitted as")}
    assert outcome["pretrain_hg_s1"] == "finished earlier" and "pretrain_hg_s1" not in params
    assert len(ex.submitted) == len(jobs) - 1
    assert params["pretrain_hg_s0"]["dependency"] is None
    assert params["oracle_hg_s0"]["dependency"] == f"afterok:{ids['pretrain_hg_s0']}"
    assert params["oracle_hg_s1"]["dependency"] is None  # its pretraining is FINISHED: nothing to wait for
    assert params["ccssl_r_hg_s1"]["dependency"] == f"afterok:{ids['ccssl_hg_s1']}"
    assert params["ccssl_r_hg_s0"]["additional_parameters"] == {"kill-on-invalid-dep": "yes"}
    assert params["oracle_hg_s1"]["additional_parameters"] == {}
    _, fn, (name, argv, log, env) = next(s for s in ex.submitted if s[0]["job_name"] == "oracle_hg_s0")
    assert fn is bench.run_job and name == "oracle_hg_s0"
    job = next(j for j in jobs if j.name == "oracle_hg_s0")
    assert argv == ["/venv/bin/da-pose", *job.argv, "--set", "experiment=exp"]
    assert log == str((logs / "oracle_hg_s0.log").resolve())
    assert env == {"DA_POSE_THREADS": "8", "OMP_NUM_THREADS": "8"}
    assert bench.afterok(["123", "456"]) == "afterok:123:456" and bench.afterok([]) is None
    # the parameters are SlurmExecutor's names: submitit writes them into the sbatch file
    slurm = pytest.importorskip("submitit.slurm.slurm")
    text = slurm._make_sbatch_string(command="true", folder=tmp_path,
                                     **bench.slurm_parameters("oracle_hg_s0", ["123", "456"], "gpu", 60, 8, 1, "32G"))
    for line in ("--dependency=afterok:123:456", "--kill-on-invalid-dep=yes", "--job-name=oracle_hg_s0",
                 "--partition=gpu", "--time=60", "--cpus-per-task=8", "--gpus-per-node=1", "--mem=32G"):
        assert f"#SBATCH {line}\n" in text
    text = slurm._make_sbatch_string(command="true", folder=tmp_path, **bench.slurm_parameters("p", []))
    assert "--dependency" not in text and "--gpus-per-node" not in text and "--partition" not in text


def test_slurm_launcher_without_submitit_says_how_to_install_it(bench, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    assert bench.main(["--launcher", "slurm", "--shifts", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs submitit: pip install -e '.[cluster]'" in err


@pytest.mark.slow
def test_local_submitit_launcher_waits_for_prerequisites_and_skips_finished_runs(
        bench, tmp_path, mlflow_template, monkeypatch, capsys):
    """The real plan, skip logic and submission code on submitit's LocalExecutor; da-pose is a stand-in."""
    pytest.importorskip("submitit")
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("e"), run_name="pretrain_hg_s1")
    client.set_terminated(run.info.run_id)  # FINISHED: the benchmark must not submit it again
    data, bin_dir, marks = tmp_path / "data", tmp_path / "bin", tmp_path / "marks"
    for d in (data, bin_dir, marks):
        d.mkdir()
    (data / "manifest.json").write_text("{}")  # nothing to generate
    exe = bin_dir / "da-pose"
    exe.write_text(FAKE_DA_POSE.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("BENCH_MARKS", str(marks))
    monkeypatch.setenv("BENCH_FAIL", "pretrain_hg_s2")
    rc = bench.main(["--launcher", "local-submitit", "--data", str(data), "--experiment", "e", "--seeds", "0", "1", "2",
                     "--shifts", "none", "--methods", "source_only", "oracle", "--tracking-uri", uri,
                     "--out", str(tmp_path / "runs"), "--bin", str(bin_dir), "--threads", "1"])
    out, err = capsys.readouterr()
    assert rc == 1
    ran = {p.stem: json.loads(p.read_text()) for p in marks.glob("*.json")}
    assert sorted(ran) == ["oracle_hg_s0", "oracle_hg_s1", "pretrain_hg_s0", "pretrain_hg_s2"]
    assert out.count("submitted as") == 4 and "pretrain_hg_s1: submitted" not in out
    assert ran["oracle_hg_s0"]["start"] >= ran["pretrain_hg_s0"]["end"]  # started after its prerequisite
    assert ran["oracle_hg_s0"]["threads"] == "1"
    assert "pretrain_hg_s2: failed (exit 3, see " in out and "oracle_hg_s2: skipped: pretrain_hg_s2 failed" in out
    assert "oracle_hg_s0: finished in" in out and "4 of 6 runs finished" in out
    assert "oracle_hg_s2 (skipped: pretrain_hg_s2 failed)" in err
    logs = tmp_path / "runs" / "e" / "logs"  # where the local runner writes them
    assert sorted(p.stem for p in logs.glob("*.log")) == sorted(ran)
    log = (logs / "oracle_hg_s0.log").read_text()
    assert "fake da-pose finetune" in log and "init=" in log and "experiment=e" in log
    assert (tmp_path / "runs" / "e" / "submitit").is_dir()


def test_estimate_scales_with_the_backbone(bench):
    """A ResNet-18 run is estimated at the measured multiple of the same config's hourglass run."""
    hg = bench.Job("mean_teacher_hg_all_s0", ["adapt", "mean_teacher", "experiments/toy/mean_teacher_hg.yaml"])
    r18 = bench.Job("mean_teacher_r18_all_s0", ["adapt", "mean_teacher", "experiments/toy/mean_teacher_hg.yaml",
                                                "--set", "model.backbone=resnet18"])
    assert bench.run_minutes(hg, "demo") == pytest.approx(bench.MINUTES["mean_teacher_hg"])
    assert bench.run_minutes(r18, "demo") == pytest.approx(bench.BACKBONE_SCALE["resnet18"] * bench.run_minutes(hg, "demo"))
    assert bench.BACKBONE_SCALE["resnet18"] > 1
