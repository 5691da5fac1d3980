"""Command-line image sources -> image files: files, folders and glob patterns.

Patterns are expanded here as well as by the shell, so a quoted "photos/*.jpg" works the same as
an unquoted one (and on shells that do not expand). A folder contributes its image files (not
its subfolders'); a file named outright is taken whatever its suffix, and fails later, with its
name, if it is not an image.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import PipelineError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
_GLOB_CHARS = frozenset("*?[")


def expand_image_sources(sources: Sequence[str | Path]) -> list[Path]:
    """The image files `sources` name, in the order given, each once.

    Raises PipelineError naming the source for a missing path, a folder without images and a
    pattern that matches no image file.
    """
    if not sources:
        raise PipelineError("no images given: name image files, folders or patterns")
    found: list[Path] = []
    for source in sources:
        found += _expand_one(str(source))
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def _expand_one(source: str) -> list[Path]:
    path = Path(source)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.is_file() and _is_image_name(p))
        if not images:
            raise PipelineError(f"{path}: no image files in this folder ({_suffix_list()})")
        return images
    if path.exists():
        return [path]
    if _GLOB_CHARS & set(source):
        matches = sorted(Path(m) for m in glob.glob(source, recursive=True))
        images = [m for m in matches if m.is_file() and _is_image_name(m)]
        if not images:
            raise PipelineError(f"{source}: no image files match this pattern ({_suffix_list()})")
        return images
    raise PipelineError(f"{path}: no such file or folder")


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _suffix_list() -> str:
    return "looked for " + " ".join(sorted(IMAGE_SUFFIXES))
