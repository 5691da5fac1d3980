"""Reading a COCO detection json: the one reader behind training's validating loader and the
torch-free evaluator, so a file either stage refuses is refused with the same line.

Training then checks every entry's fields (train/data/coco.py); the evaluator needs only the
lists and fills what COCOeval requires (deploy/evaluate.py). Each passes its own error class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_coco_json(
    path: Path, required: tuple[str, ...], error: type[Exception] = ValueError
) -> dict[str, Any]:
    """The parsed file, an object whose `required` keys are lists; anything else (missing,
    unreadable, not UTF-8, not JSON, another shape) is one `error` line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: annotation file not found")
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not valid JSON (not UTF-8 text)") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: not a COCO detection file (top level is not an object)")
    missing = [key for key in required if key not in data]
    if missing:
        raise error(f"{path}: not a COCO detection file (missing {', '.join(missing)})")
    for key in required:
        if not isinstance(data[key], list):
            raise error(f"{path}: '{key}' must be a list, got {type(data[key]).__name__}")
    return data
