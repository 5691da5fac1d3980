"""Where a dataset's image file is: the one guard that keeps a COCO `file_name` inside its image
folder, for training's loader and the torch-free evaluator alike."""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath


def escapes(file_name: str) -> bool:
    """True for an absolute path, a drive or a '..' part, in POSIX or Windows spelling."""
    return any(
        pure.is_absolute() or bool(pure.anchor) or ".." in pure.parts
        for pure in (PurePosixPath(file_name), PureWindowsPath(file_name))
    )


def image_file(
    img_dir: Path, file_name: object, ann_file: Path, error: type[Exception] = ValueError
) -> Path:
    """img_dir / file_name, refusing (one `error` line naming `ann_file`) anything but a non-empty
    relative path that stays inside img_dir."""
    if not isinstance(file_name, str) or not file_name:
        raise error(f"{ann_file}: file_name {file_name!r} is not a non-empty string")
    if escapes(file_name):
        raise error(f"{ann_file}: file_name {file_name!r} escapes {img_dir}")
    return Path(img_dir) / file_name
