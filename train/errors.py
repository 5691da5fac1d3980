"""Errors of training the user can act on, rather than bugs (bad input: common.errors.InputError).

The CLI prints them as one line and exits with code 2; every message names the file or option and
the problem.
"""

from common.errors import UserError


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (the loss stayed non-finite, no image could be read); not a bug."""


class NonFiniteLossError(TrainingError):
    """Training produced non-finite losses for too many consecutive steps."""


class LossSettingError(UserError, ValueError):
    """A loss name, option or option value the loss registry does not accept."""
