"""The project's own error types.

Every error a user can cause (bad config, bad data, bad checkpoint, unreachable tracking store)
is one of these; the CLI prints its message on one line and exits with ``exit_code``.
"""


class DaPoseError(Exception):
    """Base class: a one-line message that says what was wrong and what was expected."""

    exit_code = 1


class ConfigError(DaPoseError):
    """Unknown key, wrong type or invalid value in a config, an override or a CLI option."""

    exit_code = 2


class DataError(DaPoseError):
    """A dataset file is missing, truncated, malformed or inconsistent."""


class CheckpointError(DaPoseError):
    """A checkpoint is missing, truncated, unsafe or does not fit the model."""


class TrackingError(DaPoseError):
    """The MLflow tracking store cannot be reached or used."""


class TrainingError(DaPoseError):
    """Training cannot go on (a NaN or infinite loss, say); the last good checkpoint is kept."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type name when it has none)."""
    return " ".join(str(exc).split("\n")) or type(exc).__name__


def run_script(main, *args) -> int:
    """Run a script's ``main(*args)`` the way the CLI runs a command: a project error or an
    OSError becomes one ``error:`` line on stderr and its exit code (2 for config, else 1)."""
    import sys

    try:
        return main(*args)
    except DaPoseError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
