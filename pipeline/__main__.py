"""`python -m pipeline` (and `torchrun -m pipeline`): the same CLI as the `pipeline` command.

`python -m` puts the current folder first on sys.path, so a `train.py`, `export.py` or
`deploy.py` there would be imported instead of this project's packages of those names. The
folder is dropped from sys.path unless it is the one holding this package (a source checkout
run from its root), before anything else is imported.
"""

import os
import sys
from pathlib import Path


def _drop_current_folder_from_path() -> None:
    if not sys.path or sys.path[0] not in ("", os.getcwd()):
        return
    here = Path(sys.path[0] or os.getcwd()).resolve()
    if here != Path(__file__).resolve().parent.parent:
        del sys.path[0]


_drop_current_folder_from_path()

from pipeline.cli import main  # noqa: E402

main()
