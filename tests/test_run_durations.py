"""scripts/bench/run_durations.py: configs from run names, durations from a real MLflow store."""

from mlflow.tracking import MlflowClient

from tests.conftest import fresh_store, load_script


def load():
    return load_script("scripts/bench/run_durations.py")


def test_config_drops_the_seed_and_the_shift():
    rd = load()
    assert rd.config_of("ccssl_hg_pose_s1") == "ccssl_hg"
    assert rd.config_of("pretrain_r18_s0") == "pretrain_r18"
    assert rd.config_of("oracle_hg_pose+shape_s2") == "oracle_hg"
    assert rd.config_of("ccssl_no_temporal_hg_all_s0") == "ccssl_no_temporal_hg"
    assert rd.config_of("source_only_ext_hg_s0") == "source_only_ext_hg"


def test_durations_and_the_implied_wall_time(tmp_path, mlflow_template, capsys):
    rd = load()
    uri = fresh_store(mlflow_template, tmp_path / "mlruns.db")
    client = MlflowClient(uri)
    exp = client.create_experiment("b")
    for name, seconds, status in (("ccssl_hg_all_s0", 300, "FINISHED"), ("ccssl_hg_pose_s1", 500, "FINISHED"),
                                  ("ccssl_hg_all_s2", 900, "FINISHED"), ("pretrain_hg_s0", 400, "FINISHED"),
                                  ("pretrain_hg_s1", 50, "FAILED")):
        run = client.create_run(exp, start_time=1_000_000, run_name=name)
        client.set_terminated(run.info.run_id, status, end_time=1_000_000 + 1000 * seconds)
    found = rd.durations("b", uri)  # the FAILED run is left out
    assert {k: sorted(v) for k, v in found.items()} == {"ccssl_hg": [300.0, 500.0, 900.0], "pretrain_hg": [400.0]}
    assert rd.main(["--experiment", "b", "--tracking-uri", uri, "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "| ccssl_hg | 3 | 300 | 500 | 900 |" in out and "| pretrain_hg | 1 | 400 | 400 | 400 |" in out
    # shortest: (3 x 300 + 400) / 2 s = 11 min; median: (3 x 500 + 400) / 2 s = 16 min
    assert "4 runs on 2 slots: 11 min at each config's shortest duration, 16 min at its median" in out
