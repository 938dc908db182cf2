"""The one base class of the errors a user can fix.

Every stage raises a `StageError` subclass (ConfigError, ModelError, DataError, TrainingError,
...) for input it cannot use, with a message that names the file or field and what to do.
`tasks.py` turns exactly these into one line on stderr and the exit code below; any other
exception is a bug and keeps its traceback. StageError is a ValueError so that code which asks
for "bad value" keeps working.
"""

from __future__ import annotations


class StageError(ValueError):
    """Input a stage cannot use; the message says what to pass instead."""

    exit_code = 2
