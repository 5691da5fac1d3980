"""Errors caused by the user's input (data, checkpoints, options) rather than by a bug.

The CLI prints them as one line and exits with code 2; every message names the file or option and
the problem.
"""

from common.errors import UserError


class InputError(UserError, ValueError):
    """Bad input to the training side: dataset, checkpoint, option value."""


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (the loss stayed non-finite, no image could be read); not a bug."""


class NonFiniteLossError(TrainingError):
    """Training produced non-finite losses for too many consecutive steps."""


class LossSettingError(UserError, ValueError):
    """A loss name, option or option value the loss registry does not accept."""
