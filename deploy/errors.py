"""Errors caused by the user's input or machine on the deployment side (never a bug).

The CLI prints them as one line and exits with code 2.
"""

from common.errors import UserError


class DeployError(UserError, RuntimeError):
    """A model file, dataset, runtime or device that cannot be used as asked."""
