"""`python scripts/mutation [...]` or `PYTHONPATH=scripts python -m mutation [...]`."""

import sys
from pathlib import Path

if not __package__:  # run as a directory: make the `mutation` package importable, by name only
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.path.insert(0, str(here.parent))

from mutation.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
