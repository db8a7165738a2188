"""da_pose.errors.run_script: how a script reports what a user got wrong."""

from da_pose.errors import ConfigError, DataError, one_line, run_script


def test_project_errors_become_one_line_and_their_exit_code(capsys):
    def bad_config():
        raise ConfigError("unknown key 'x'\nvalid keys: a, b")

    def bad_data():
        raise DataError("annotations.json: truncated")

    assert run_script(bad_config) == 2
    assert capsys.readouterr().err == "error: unknown key 'x' valid keys: a, b\n"
    assert run_script(bad_data) == 1
    assert capsys.readouterr().err == "error: annotations.json: truncated\n"


def test_os_errors_name_the_path_and_results_pass_through(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "f.txt"
    assert run_script(lambda: missing.read_text()) == 1
    assert capsys.readouterr().err == f"error: {missing}: No such file or directory\n"
    assert run_script(lambda a, b: a + b, 2, 3) == 5
    assert capsys.readouterr().err == ""
    assert one_line(ValueError()) == "ValueError"
