"""Errors caused by the user's input (data, checkpoints, options) rather than by a bug.

The CLI prints them as one line and exits with code 2; every message names the file or option and
the problem.
"""


class InputError(ValueError):
    """Bad input to the training side: dataset, checkpoint, option value."""
