"""The one base of every error the user can act on (never a bug).

Each stage raises its own kind (InputError for bad data, checkpoints and options, deploy's
DeployError, export's ExportError, ...), all of them a UserError, so the command line's boundary catches one type: it prints the message as one line
naming the file or option and the problem, and exits with code 2.
"""


class UserError(Exception):
    """Bad input, a missing file or package, or a request this machine cannot do."""


class InputError(UserError, ValueError):
    """Bad input: a dataset, checkpoint, option value or file the user gave."""
