"""Text in pictures: Pillow's built-in bitmap font, as a mask of inked pixels.

NumPy and Pillow only, for the writer thread and the report.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["text_mask"]


def text_mask(text: str) -> np.ndarray:
    """``text`` in Pillow's built-in font: an ``(H, W)`` ``bool`` array, ``True`` where inked
    (a read-only array: captions repeat, so each text is drawn once)."""
    return _drawn(text)


@lru_cache(maxsize=4096)
def _drawn(text: str) -> np.ndarray:
    from PIL import Image as PILImage, ImageDraw

    font = _font()
    right, bottom = (int(edge) for edge in font.getbbox(text)[2:])
    mask = PILImage.new("L", (max(right, 1), max(bottom, 1)))
    ImageDraw.Draw(mask).text((0, 0), text, fill=255, font=font)
    inked = np.asarray(mask) >= 128
    inked.flags.writeable = False
    return inked


@lru_cache(maxsize=1)
def _font() -> Any:
    # The built-in bitmap font: crisp at one size, so its pixels need no anti-aliasing
    # (Pillow 10.1 and later name it apart from the scalable default). Loading it takes
    # milliseconds, and a grid has a caption per tile.
    from PIL import ImageFont

    return getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)()
