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
