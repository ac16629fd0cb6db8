"""Face embeddings of an original image and its refaced version, from skin renders.

The *probe* renders stand in for a photograph of the participant: the original head
seen obliquely under other lights than the *gallery* renders, which are near-frontal
renders of what the attacker has (the refaced image; the original too, for the
baseline showing that the recogniser works on renders at all). Embeddings of several
renders of one image are averaged into one, as face-recognition systems do with
several photographs of a person.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..core.image import load_head_image
from ..reports.render import render_views, skin_threshold

#: (azimuth_deg, elevation_deg) of the camera and (azimuth_deg, elevation_deg) of the
#: light relative to it (see refacebids.reports.render).
GALLERY_VIEWS = (((0.0, 0.0), (25.0, 30.0)), ((0.0, 10.0), (-25.0, 30.0)))
PROBE_VIEWS = (((20.0, 5.0), (0.0, 45.0)), ((-20.0, 5.0), (35.0, 10.0)))
#: About 110 pixels across the face: above the 80 pixels dlib's detector needs without
#: upsampling, and the embedding network sees a 150-pixel chip whatever the size.
PIXEL_MM = 1.25
#: Gaussian smoothing (SD, mm) before rendering: image noise and slice terraces would
#: otherwise speckle the skin, which a photograph does not show.
SMOOTH_MM = 2.0
EMBEDDING_SIZE = 128


def photo(volume: np.ndarray, affine: np.ndarray, views) -> list[np.ndarray]:
    """Photograph-like grayscale renders of the smoothed skin, one per (camera, light).

    Parameters
    ----------
    volume : (I, J, K) or (I, J, K, T) array
        Scaled intensities.
    affine : (4, 4) array
        Voxel to RAS+ world (mm).
    views : sequence of ((azimuth, elevation), (light azimuth, light elevation))

    Returns
    -------
    list of (H, W) uint8 arrays, H = W about the field of view / :data:`PIXEL_MM`
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim == 4:
        volume = volume.mean(axis=3)
    zooms = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    volume = ndi.gaussian_filter(volume, SMOOTH_MM / zooms)
    iso = skin_threshold(volume[::2, ::2, ::2])  # once for all views, as render_views would
    images = []
    for camera, light in views:
        image = render_views(volume, affine, [camera], iso=iso, light=light, pixel_mm=PIXEL_MM)[0]
        images.append(np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8))
    return images


def pair_embeddings(original_file, refaced_file, recogniser) -> dict:
    """Probe and gallery embeddings of one original image and its refaced version.

    A refaced render in which the detector finds no face is still embedded, in the box
    found on the original's render of the same view (both share grid and camera): an
    attacker who finds no face automatically crops it by hand.

    Returns
    -------
    dict
        ``probe``, ``original``, ``refaced``: (128,) arrays, NaN where no render of
        the image had a face; ``refaced_detected``: (len(GALLERY_VIEWS),) bool,
        whether the detector found a face on each refaced render.
    """
    original, refaced = load_head_image(original_file), load_head_image(refaced_file)
    probe_images = photo(original.scaled(), original.affine, PROBE_VIEWS)
    original_images = photo(original.scaled(), original.affine, GALLERY_VIEWS)
    refaced_images = photo(refaced.scaled(), refaced.affine, GALLERY_VIEWS)

    probe = [_embed(recogniser, image, recogniser.find_face(image)) for image in probe_images]
    original_boxes = [recogniser.find_face(image) for image in original_images]
    gallery_original = [_embed(recogniser, image, box)
                        for image, box in zip(original_images, original_boxes)]
    refaced_boxes = [recogniser.find_face(image) for image in refaced_images]
    gallery_refaced = [
        _embed(recogniser, image, box if box is not None else fallback)
        for image, box, fallback in zip(refaced_images, refaced_boxes, original_boxes)
    ]
    return {
        "probe": _mean_embedding(probe),
        "original": _mean_embedding(gallery_original),
        "refaced": _mean_embedding(gallery_refaced),
        "refaced_detected": np.array([box is not None for box in refaced_boxes]),
    }


def _embed(recogniser, image: np.ndarray, box) -> np.ndarray | None:
    return None if box is None else recogniser.embed(image, box)


def _mean_embedding(embeddings) -> np.ndarray:
    found = [e for e in embeddings if e is not None]
    if not found:
        return np.full(EMBEDDING_SIZE, np.nan)
    return np.mean(found, axis=0)
