"""``refacebids BIDS_DIR OUTPUT_DIR group --audit``: the re-identification audit of a run.

Every refaced image of OUTPUT_DIR is paired with its original in BIDS_DIR; each
original, rendered as a photograph, attacks the refaced images of the whole dataset
(:mod:`refacebids.audit.attack`), and the same photographs attack the originals, as a
baseline showing the recogniser works on these renders. Results go to
``OUTPUT_DIR/group_audit.tsv`` (one row per image) and ``OUTPUT_DIR/group_audit.json``
(the rates).
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.image import ImageError
from ..utils.bids import BIDSError, is_face_image, parse_name, sidecar_path
from ..workflows.outputs import write_group_audit
from .attack import chance_rate, own_ranks, rank1_rate
from .faces import GALLERY_VIEWS, pair_embeddings
from .recogniser import load_recogniser

LOGGER = logging.getLogger("refacebids")
RAW_URI = "bids:raw:"
TSV_COLUMNS = ("subject", "session", "modality", "file", "own_rank", "top1_is_own", "face_detected")


@dataclass(frozen=True)
class AuditPair:
    """A refaced image and the original it was made from.

    ``file`` is the refaced image relative to OUTPUT_DIR; ``session`` is ``"n/a"``
    without sessions; ``modality`` is the BIDS suffix.
    """

    original: Path
    refaced: Path
    file: str
    subject: str
    session: str
    modality: str


def find_pairs(bids_dir, output_dir) -> list[AuditPair]:
    """Refaced images of OUTPUT_DIR whose original is in BIDS_DIR, in file order.

    The derivatives layout names the original in each sidecar's ``Sources``
    (``bids:raw:<path>``); a release keeps the original's path.
    """
    bids_dir, output_dir = Path(bids_dir), Path(output_dir)
    derivatives = sorted(output_dir.glob("sub-*/**/*_desc-refaced_*.nii*"))
    if derivatives:
        found = ((path, _source_in_sidecar(path)) for path in derivatives)
    else:
        found = (
            (path, path.relative_to(output_dir).as_posix())
            for path in sorted(output_dir.glob("sub-*/**/*.nii*"))
            if is_face_image(path.relative_to(output_dir).as_posix())
        )
    pairs = []
    for refaced, source in found:
        original = bids_dir / source if source else None
        if original is None or not original.is_file():
            LOGGER.warning("audit: %s left out: its original %s is not in %s",
                           refaced.relative_to(output_dir), source or "(not named)", bids_dir)
            continue
        entities, suffix, _ = parse_name(original.name)
        pairs.append(AuditPair(original, refaced, refaced.relative_to(output_dir).as_posix(),
                               entities["sub"], entities.get("ses", "n/a"), suffix))
    return pairs


def run_group_audit(bids_dir, output_dir, *, nprocs: int = 1) -> dict:
    """Run the audit on every refaced image of ``output_dir``; write and return the rates.

    Raises
    ------
    refacebids.audit.recogniser.AuditUnavailable
        Without the optional packages (checked before any image is read).
    BIDSError
        When fewer than two refaced images have their original.
    """
    recogniser = load_recogniser()  # fails with the install hint before any rendering
    pairs = find_pairs(bids_dir, output_dir)
    if len(pairs) < 2:
        raise BIDSError(
            f"the audit needs at least 2 refaced images with their original in {bids_dir}; "
            f"found {len(pairs)} in {output_dir}"
        )
    LOGGER.info("audit: %d refaced image(s), %d process(es)", len(pairs), nprocs)
    start = time.perf_counter()
    embeddings = _embed_all(pairs, recogniser, nprocs)
    LOGGER.info("audit: embeddings in %.1f s (%.1f s per image)",
                time.perf_counter() - start, (time.perf_counter() - start) / len(pairs))
    rows, summary = audit_table(pairs, embeddings, recogniser.name)
    write_group_audit(output_dir, _tsv(rows), summary)
    LOGGER.info(
        "audit: rank-1 original vs refaced %.0f%% (chance %.0f%%), original vs original "
        "%.0f%%; faces detected on %.0f%% of refaced renders; %d image(s) flagged",
        100 * summary["rank1_original_vs_refaced"], 100 * summary["chance"],
        100 * summary["rank1_original_vs_original"], 100 * summary["detection_rate_refaced"],
        sum(row["top1_is_own"] for row in rows),
    )
    return summary


def audit_table(pairs, embeddings, recogniser_name: str) -> tuple[list[dict], dict]:
    """Per-image rows and dataset rates from the embeddings of :func:`pair_embeddings`.

    Returns
    -------
    rows : list of dict
        One per pair, keys :data:`TSV_COLUMNS`; ``own_rank`` is NaN for a probe in
        which no face was found (counted as not re-identified).
    summary : dict
        ``n_images``, ``chance``, ``rank1_original_vs_original``,
        ``rank1_original_vs_refaced``, ``detection_rate_refaced`` (share of refaced
        renders in which the detector found a face) and ``recogniser``.
    """
    identity = [pair.subject for pair in pairs]
    probes = np.array([e["probe"] for e in embeddings])
    ranks_original = own_ranks(probes, np.array([e["original"] for e in embeddings]),
                               identity, identity)
    ranks_refaced = own_ranks(probes, np.array([e["refaced"] for e in embeddings]),
                              identity, identity)
    detected = np.array([e["refaced_detected"] for e in embeddings])
    rows = [
        {
            "subject": pair.subject,
            "session": pair.session,
            "modality": pair.modality,
            "file": pair.file,
            "own_rank": rank,
            "top1_is_own": bool(rank == 1),
            "face_detected": bool(found.any()),
        }
        for pair, rank, found in zip(pairs, ranks_refaced, detected)
    ]
    summary = {
        "n_images": len(pairs),
        "chance": chance_rate(identity, identity),
        "rank1_original_vs_original": rank1_rate(ranks_original),
        "rank1_original_vs_refaced": rank1_rate(ranks_refaced),
        "detection_rate_refaced": float(detected.mean()),
        "recogniser": recogniser_name,
    }
    return rows, summary


def _embed_all(pairs, recogniser, nprocs: int) -> list[dict]:
    if nprocs == 1:
        return [_embed_logged(pair, recogniser) for pair in pairs]
    with ProcessPoolExecutor(max_workers=min(nprocs, len(pairs)),
                             initializer=_load_worker_recogniser) as pool:
        return list(pool.map(_embed_in_worker, pairs))


_WORKER_RECOGNISER = None


def _load_worker_recogniser() -> None:
    global _WORKER_RECOGNISER
    _WORKER_RECOGNISER = load_recogniser()


def _embed_in_worker(pair: AuditPair) -> dict:
    return _embed_logged(pair, _WORKER_RECOGNISER)


def _embed_logged(pair: AuditPair, recogniser) -> dict:
    try:
        embeddings = pair_embeddings(pair.original, pair.refaced, recogniser)
    except ImageError as exc:  # one line naming the file, like the participant level
        raise ImageError(f"{pair.file} (original {pair.original}): {exc}") from None
    LOGGER.info("audit: %s: faces on %d of %d refaced renders", pair.file,
                embeddings["refaced_detected"].sum(), len(GALLERY_VIEWS))
    return embeddings


def _source_in_sidecar(refaced: Path) -> str | None:
    sidecar = sidecar_path(refaced)
    try:
        sources = json.loads(sidecar.read_text()).get("Sources", [])
    except (OSError, ValueError):
        return None
    return next((s[len(RAW_URI):] for s in sources if s.startswith(RAW_URI)), None)


def _tsv(rows: list[dict]) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return "n/a" if np.isnan(value) else str(int(value))
        return str(value)

    lines = ["\t".join(TSV_COLUMNS)]
    lines += ["\t".join(cell(row[column]) for column in TSV_COLUMNS) for row in rows]
    return "\n".join(lines) + "\n"
