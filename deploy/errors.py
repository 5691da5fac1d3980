"""Errors caused by the user's input or machine on the deployment side (never a bug).

The CLI prints them as one line and exits with code 2.
"""


class DeployError(RuntimeError):
    """A model file, dataset, runtime or device that cannot be used as asked."""
