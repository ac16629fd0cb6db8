"""What refacing one image needs from a scheduler: memory, from the image's size."""

from __future__ import annotations

from math import prod

import nibabel as nib

# Peak RSS of a refacing process, measured by benchmarks/run_benchmark.py on T1w heads of
# 1.3, 13.6 and 37.7 million voxels (0.63, 1.57, 3.46 GB): a line through them.
BASE_GB = 0.55
GB_PER_MILLION_VOXELS = 0.08
# When the header cannot be read the node will fail anyway; ask for a 1 mm head's share.
FALLBACK_GB = 1.6


def image_peak_gb(in_file) -> float:
    """Estimated peak memory (GB) of the heaviest refacing step for ``in_file``.

    Reads the header only. Frames of a 4D image count as voxels: each step holds the
    whole series while it writes it back.
    """
    try:
        shape = nib.load(in_file).shape
    except Exception:  # noqa: BLE001 - the refacing node reports the real problem
        return FALLBACK_GB
    return round(BASE_GB + GB_PER_MILLION_VOXELS * prod(shape) / 1e6, 2)
