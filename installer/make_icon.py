"""Draw the seg_studio icon (resources/icons/seg-studio.png) with Pillow: no design tool, no download.

A scan's cross-section (grey body, two darker lungs) with a coloured mask over one lung and its
outline: what the app does, readable at 48 px. Run: ``python installer/make_icon.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SIZE = 1024  # drawn large, then downsampled: smooth edges without anti-aliasing support in ImageDraw
OUT_SIZES = (256,)


def draw(size: int = SIZE) -> Image.Image:
    s = size / 256
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle([8 * s, 8 * s, 248 * s, 248 * s], radius=44 * s, fill=(24, 34, 52, 255))
    # body cross-section, lungs, spine: a chest scan in the same greys as the synthetic sample
    d.ellipse([30 * s, 52 * s, 226 * s, 212 * s], fill=(150, 150, 156, 255))
    d.ellipse([52 * s, 70 * s, 122 * s, 190 * s], fill=(70, 72, 80, 255))
    d.ellipse([134 * s, 70 * s, 204 * s, 190 * s], fill=(70, 72, 80, 255))
    d.ellipse([112 * s, 168 * s, 144 * s, 200 * s], fill=(205, 205, 210, 255))
    # the mask: a translucent fill and a bright outline on the right lung (image left)
    mask = Image.new("RGBA", img.size, (0, 0, 0, 0))
    m = ImageDraw.Draw(mask)
    m.ellipse(
        [52 * s, 70 * s, 122 * s, 190 * s],
        fill=(66, 135, 245, 150),
        outline=(120, 190, 255, 255),
        width=int(7 * s),
    )
    img = Image.alpha_composite(img, mask)
    # a painted correction stroke on the other lung, as the paint tool leaves it
    d = ImageDraw.Draw(img)
    d.line(
        [(150 * s, 96 * s), (172 * s, 130 * s), (186 * s, 168 * s)],
        fill=(80, 200, 120, 255),
        width=int(12 * s),
        joint="curve",
    )
    return img.filter(ImageFilter.SMOOTH)


def main(out_dir: str | None = None) -> int:
    folder = Path(out_dir) if out_dir else Path(__file__).resolve().parents[1] / "resources" / "icons"
    folder.mkdir(parents=True, exist_ok=True)
    big = draw()
    for n in OUT_SIZES:
        path = folder / "seg-studio.png" if n == 256 else folder / f"seg-studio-{n}.png"
        big.resize((n, n), Image.Resampling.LANCZOS).save(path, optimize=True)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
