"""Training's flips of letterboxed images and their boxes (the letterbox itself: common/image.py,
the one implementation deployment uses too: content top-left, so flips mirror the content only).
"""

from __future__ import annotations

import torch


def hflip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """Mirror (K, 4) xyxy boxes inside a region [0, width): x -> width - x."""
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped


def hflip_content(image: torch.Tensor, content_width: int) -> torch.Tensor:
    """Mirror the letterboxed content (columns [0, content_width)) of a (C, S, S) image.

    Flipping the whole canvas would move the right-hand padding to the left and break the
    top-left convention, so only the content region is mirrored.
    """
    flipped = image.clone()
    flipped[:, :, :content_width] = image[:, :, :content_width].flip(-1)
    return flipped
