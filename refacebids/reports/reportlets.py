"""Report figures: slices and 3D renders of a head before and after refacing.

Figures are composed with numpy and written with Pillow as palette or grayscale PNGs,
which keeps them small and fast (no matplotlib figure machinery).
"""

from __future__ import annotations

from functools import partial

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from refacebids.core.warp import CHEEKS_TEMPLES, EARS, FACE, FOREHEAD, TEETH_JAW, WRAP_AIR
from refacebids.reports.render import render_views, skin_threshold
from refacebids.utils.atomic import atomic_open
from refacebids.utils.threads import in_parallel

PANEL_PX = 256
REPLACED_RGB = (255, 64, 32)  # replaced (refaced) voxels, or their face part: orange-red
PROTECTED_RGB = (40, 200, 255)  # protected brain: cyan
#: Parts of the replaced region outlined apart when the labels are given:
#: (legend, refacing labels, outline colour).
REPLACED_PARTS = (
    ("face", (FOREHEAD, FACE, CHEEKS_TEMPLES), REPLACED_RGB),
    ("ears", (EARS,), (255, 225, 0)),
    ("teeth, jaw", (TEETH_JAW,), (235, 70, 235)),
    ("wrap band", (WRAP_AIR,), (70, 230, 70)),
)
# Palette: indices below GRAY_LEVELS are gray, then one per replaced part, then protected.
GRAY_LEVELS = 256 - len(REPLACED_PARTS) - 1
PROTECTED_INDEX = 255


def slices_before_after(
    orig: np.ndarray,
    refaced: np.ndarray,
    affine: np.ndarray,
    mask_replaced: np.ndarray,
    mask_protected: np.ndarray,
    out_png,
    labels: np.ndarray | None = None,
) -> None:
    """Sagittal, axial and coronal slices through the face, before (top) and after (bottom).

    The slices cross at the centroid of the replaced region; the replaced region is
    outlined in orange-red, or, when ``labels`` are given, each of its parts in its
    colour (face, ears, teeth and jaw, wrap band: :data:`REPLACED_PARTS`), and the
    protected region in cyan. Slices are shown in RAS orientation whatever the storage
    order: sagittal with anterior to the right, axial and coronal with the subject's
    right on the right of the screen (neurological convention), superior / anterior up.

    Parameters
    ----------
    orig, refaced : (I, J, K) array
        Scaled intensities on the image grid.
    affine : (4, 4) array
        Voxel to RAS+ world (mm).
    mask_replaced, mask_protected : (I, J, K) bool array
        Voxels replaced by refacing; voxels refacing must not touch.
    out_png : path-like
        Written atomically.
    labels : (I, J, K) uint8 array, optional
        Refacing labels on the image grid (:mod:`refacebids.core.warp`).
    """
    # flips and transposes to the nearest RAS orientation are views: nothing is copied
    ornt = nib.orientations.io_orientation(affine)
    # Index of each replaced voxel's outline colour (0: not replaced).
    parts = np.asarray(mask_replaced, bool).astype(np.uint8)
    if labels is not None:
        # One lookup over the volume; a replaced voxel of no part counts as face.
        part_of_label = np.ones(256, np.uint8)
        for index, (_, part_labels, _) in enumerate(REPLACED_PARTS, start=1):
            part_of_label[list(part_labels)] = index
        parts *= part_of_label[np.asarray(labels, np.uint8)]
    orig_ras, refaced_ras, replaced_ras, protected_ras = (
        nib.orientations.apply_orientation(np.asarray(a), ornt)
        for a in (orig, refaced, parts, mask_protected)
    )
    zooms = np.empty(3)
    zooms[ornt[:, 0].astype(int)] = np.linalg.norm(affine[:3, :3], axis=0)  # in RAS axis order

    # every other voxel is enough to place the slices and set the window
    coarse_replaced = np.argwhere(replaced_ras[::2, ::2, ::2])
    if coarse_replaced.size:
        centre = np.minimum(np.round(coarse_replaced.mean(axis=0) * 2).astype(int), np.array(orig_ras.shape) - 1)
    else:
        centre = np.array(orig_ras.shape) // 2
    low, high = _display_window(orig_ras[::2, ::2, ::2])

    def cut(volume, plane):
        # Each plane as (rows top-to-bottom, columns left-to-right) and the mm size of its pixels.
        x, y, z = centre
        if plane == "sagittal":
            return volume[x, :, ::-1].T, (zooms[2], zooms[1])
        if plane == "axial":
            return volume[:, ::-1, z].T, (zooms[1], zooms[0])
        return volume[:, y, ::-1].T, (zooms[2], zooms[0])

    rows = []
    for values in (orig_ras, refaced_ras):
        panels = []
        for plane in ("sagittal", "axial", "coronal"):
            image, pixel_mm = cut(values, plane)
            gray = np.clip((np.asarray(image, np.float32) - low) / (high - low), 0, 1) * (GRAY_LEVELS - 1)
            indexed = gray.astype(np.uint8)
            indexed[_outline(cut(protected_ras, plane)[0].astype(bool))] = PROTECTED_INDEX
            replaced_slice = cut(replaced_ras, plane)[0]
            for index in range(1, len(REPLACED_PARTS) + 1):
                indexed[_outline(replaced_slice == index)] = GRAY_LEVELS + index - 1
            panels.append(_fit_panel(indexed, pixel_mm))
        rows.append(np.hstack(panels))
    indexed_figure = np.ascontiguousarray(np.vstack(rows))
    canvas = Image.frombytes("P", indexed_figure.shape[::-1], indexed_figure.tobytes())
    palette = np.repeat(np.linspace(0, 255, GRAY_LEVELS).astype(np.uint8)[:, None], 3, axis=1)
    outlines = [rgb for _, _, rgb in REPLACED_PARTS] + [PROTECTED_RGB]
    palette = np.vstack([palette, outlines]).astype(np.uint8)
    canvas.putpalette(palette.ravel().tolist())
    white = GRAY_LEVELS - 1
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), "before", fill=white)
    draw.text((4, PANEL_PX + 4), "after", fill=white)
    for panel in (1, 2):  # axial and coronal
        draw.text((panel * PANEL_PX + 4, PANEL_PX - 14), "L", fill=white)
        draw.text(((panel + 1) * PANEL_PX - 12, PANEL_PX - 14), "R", fill=white)
    legend = ([name for name, _, _ in REPLACED_PARTS] if labels is not None else ["replaced"])
    for line, name in enumerate(legend):
        draw.text((3 * PANEL_PX - 66, 4 + 12 * line), name, fill=GRAY_LEVELS + line)
    draw.text((3 * PANEL_PX - 66, 4 + 12 * len(legend)), "protected", fill=PROTECTED_INDEX)
    _save_png(canvas, out_png)


def renders_before_after(orig: np.ndarray, refaced: np.ndarray, affine: np.ndarray, out_png,
                         threads: int = 1) -> None:
    """Front, left and right renders of the skin before (top row) and after (bottom row).

    Both rows use the original's skin threshold, so a change of intensity alone does
    not show as a change of shape.

    Parameters
    ----------
    orig, refaced : (I, J, K) array
        Scaled intensities on the image grid.
    affine : (4, 4) array
        Voxel to RAS+ world (mm).
    out_png : path-like
        Written atomically.
    threads : int
        The two rows are rendered on as many threads at once.
    """
    iso = skin_threshold(np.asarray(orig, dtype=np.float32)[::2, ::2, ::2])
    views = ("front", "left", "right")
    rows = in_parallel(threads, *(
        partial(render_views, values, affine, views, iso=iso, size=PANEL_PX) for values in (orig, refaced)))
    rows = [np.hstack(row) for row in rows]
    canvas = Image.fromarray((np.vstack(rows) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), "before", fill=255)
    draw.text((4, PANEL_PX + 4), "after", fill=255)
    _save_png(canvas, out_png)


def _display_window(volume: np.ndarray) -> tuple[float, float]:
    """Intensity range shown from black to white: robust percentiles of the non-background."""
    foreground = volume[volume > volume.min()]
    if foreground.size == 0:
        return float(volume.min()), float(volume.min()) + 1.0
    low, high = np.percentile(foreground[:: max(1, foreground.size // 1_000_000)], [0.5, 99.5])
    return float(low), float(max(high, low + 1e-6))


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of a 2D mask that touch its outside."""
    return mask & ~ndi.binary_erosion(mask, border_value=1)


def _fit_panel(indexed: np.ndarray, pixel_mm) -> np.ndarray:
    """Place a slice, scaled to square mm with nearest neighbour, centred in a square panel.

    Nearest neighbour keeps the palette indices (outlines) intact.
    """
    height_mm, width_mm = indexed.shape[0] * pixel_mm[0], indexed.shape[1] * pixel_mm[1]
    scale = PANEL_PX / max(height_mm, width_mm)
    height = max(1, min(PANEL_PX, round(height_mm * scale)))
    width = max(1, min(PANEL_PX, round(width_mm * scale)))
    resized = np.asarray(Image.fromarray(indexed).resize((width, height), Image.Resampling.NEAREST))
    panel = np.zeros((PANEL_PX, PANEL_PX), np.uint8)
    top, left = (PANEL_PX - height) // 2, (PANEL_PX - width) // 2
    panel[top : top + height, left : left + width] = resized
    return panel


def _save_png(image: Image.Image, out_png) -> None:
    """Write a PNG atomically (temporary file in the same folder, then rename)."""
    with atomic_open(out_png, "wb") as fobj:
        image.save(fobj, format="PNG", compress_level=9)
