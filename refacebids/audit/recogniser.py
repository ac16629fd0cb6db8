"""An open face recogniser: dlib's HOG detector, 5-point landmarks and ResNet embedding.

The network and landmark weights are read from the installed ``face_recognition_models``
package (``pip install 'refacebids[audit]'``); nothing is downloaded. Its package
``__init__`` needs ``pkg_resources``, which recent setuptools no longer ship, so the
weight files are located through the import system without executing it.

Weights used, as their author (Davis King, dlib-models) released them into the public
domain: ``dlib_face_recognition_resnet_model_v1.dat`` and
``shape_predictor_5_face_landmarks.dat``. The 68-point predictor in the same package is
not used: its training set (iBUG 300-W) excludes commercial use.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

INSTALL_HINT = "the re-identification audit needs its optional extra: pip install 'refacebids[audit]'"
NETWORK_FILE = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
#: The detector looks at the image upsampled once, so faces down to ~40 pixels are found.
UPSAMPLE = 1


class AuditUnavailable(RuntimeError):
    """The optional packages of the audit are not installed; the message says how to fix it."""


@dataclass
class Recogniser:
    """Detect a face in a grayscale image and map it to a 128-d embedding.

    Embeddings of the same person lie closer (Euclidean) than those of different
    people; dlib's own threshold for "same person" on photographs is 0.6.
    """

    detector: object
    landmarks: object
    network: object
    name: str

    def find_face(self, image: np.ndarray):
        """The most confident face box in ``image`` ((H, W) uint8), or None."""
        boxes, scores, _ = self.detector.run(image, UPSAMPLE, 0.0)
        if not boxes:
            return None
        return boxes[int(np.argmax(scores))]

    def embed(self, image: np.ndarray, box) -> np.ndarray:
        """(128,) float64 embedding of the face in ``box`` of ``image`` ((H, W) uint8).

        The landmarks align the face to a 150 x 150 chip before the network sees it.
        """
        rgb = np.ascontiguousarray(np.repeat(image[..., None], 3, axis=2))
        shape = self.landmarks(rgb, box)
        return np.asarray(self.network.compute_face_descriptor(rgb, shape), dtype=float)


def load_recogniser() -> Recogniser:
    """Load the detector and the weights shipped in ``face_recognition_models``.

    Raises
    ------
    AuditUnavailable
        When dlib or the weights package is not installed.
    """
    try:
        import dlib
    except ImportError:
        raise AuditUnavailable(INSTALL_HINT) from None
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise AuditUnavailable(INSTALL_HINT)
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    missing = [name for name in (NETWORK_FILE, LANDMARKS_FILE) if not (models / name).is_file()]
    if missing:
        raise AuditUnavailable(f"{models}: {', '.join(missing)} missing; {INSTALL_HINT}")
    name = (
        f"dlib {dlib.__version__} HOG face detector, 5-point landmarks and ResNet embedding "
        f"({NETWORK_FILE} from face_recognition_models {metadata.version('face_recognition_models')})"
    )
    return Recogniser(
        detector=dlib.get_frontal_face_detector(),
        landmarks=dlib.shape_predictor(str(models / LANDMARKS_FILE)),
        network=dlib.face_recognition_model_v1(str(models / NETWORK_FILE)),
        name=name,
    )
