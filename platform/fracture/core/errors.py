"""What a job reports to its user instead of a traceback.

`UserError` is every error a user can fix (a config value, a data folder, a weights file, a
checkpoint, an MLflow store): `cli.user_errors` prints it as one `error:` line and exits 2, even
when Ray or Tune raised it wrapped in their own errors. Each module keeps its own subclass
(config.ConfigError, checkpoint.CheckpointError, ...) so callers can catch what they expect;
DataError, which every data stage raises, lives here.

`StudyIncomplete` is not a fault: the study stopped early (Ctrl-C, SIGTERM) and Tune saved it;
the message says how to continue it and the job exits 130, as after Ctrl-C.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message says what and how, in one line."""


class StudyIncomplete(Exception):
    """The study was saved before every trial ended; the message names the command that continues it."""


class CapacityError(UserError):
    """The cluster did not get room for a trial in time (its autoscaler could not launch the nodes)."""


class DataError(UserError, ValueError):
    """The data cannot be used as given; the message is one human-readable line."""
