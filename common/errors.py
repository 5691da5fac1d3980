"""The one base of every error the user can act on (never a bug).

Each stage raises its own kind (train's InputError, deploy's DeployError, ...), all of them a
UserError, so the command line's boundary catches one type: it prints the message as one line
naming the file or option and the problem, and exits with code 2.
"""


class UserError(Exception):
    """Bad input, a missing file or package, or a request this machine cannot do."""
