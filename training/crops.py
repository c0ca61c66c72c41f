"""Per-hip crops and text embeddings of a cohort, computed once and cached on disk.

Each radiograph and CT of the cohort is read and searched for hips exactly as
:func:`hipfuse.inference.pipeline.analyze_study` does at the node (same
readers, same region finders, the bundle's crop sizes), and the crop of every
laterality found is saved as ``.npy``. Crops are stored before intensity
normalisation (radiograph ``[0, 1]``, CT in HU), so one cache serves every
normalisation setting.

Cache layout, under ``cache_dir``::

    radiograph/<key>/R.npy, L.npy, result.json
    ct/<key>/R.npy, L.npy, result.json
    text/<key>.npy or <key>.json (empty note)

``<key>`` is a SHA-256 of the crop geometry (or text model fingerprint), the
input's resolved path, and the size and modification time of its files, so a
changed input or setting is recomputed and an unchanged one is reused.
``result.json`` is written last: an entry without it is incomplete and redone.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from hipfuse.config.logging import configure_logging, current_logging
from hipfuse.inference.types import INPUT_MODALITIES, InputModality, Laterality
from hipfuse.training.cohort import Cohort, HipRecord

if TYPE_CHECKING:
    from hipfuse.inference.model.config import PreprocessingConfig
    from hipfuse.inference.model.text import TextEncoder

log = structlog.get_logger(__name__)

# Bump when the readers or region finders change what a crop contains, so old
# cache entries are not reused.
CROP_CACHE_VERSION = 1
RESULT_FILE_NAME = "result.json"


class MaskReason(StrEnum):
    """Reason a hip has no input of a modality (stable codes for the crop report)."""

    NO_INPUT = "no_input"  # empty path in the manifest
    UNREADABLE = "unreadable"  # the reader raised InputError
    NOT_FOUND = "hip_not_found"  # the region finder did not find this side
    EMPTY_TEXT = "empty_text"  # the note has no tokens


@dataclass(frozen=True)
class HipCrops:
    """Cached inputs of one hip; ``None`` where the modality is masked."""

    hip_id: str
    radiograph: Path | None
    ct: Path | None
    text: Path | None

    @property
    def mask(self) -> tuple[bool, bool, bool]:
        """Presence of each modality in ``INPUT_MODALITIES`` order."""
        return (self.radiograph is not None, self.ct is not None, self.text is not None)


@dataclass
class CropReport:
    """Counts of masked modalities, for the log and the bundle's training summary.

    ``masked[modality][reason]`` counts hips; ``hip_ids[modality][reason]``
    lists them (hip ids are research identifiers, not patient data).
    """

    n_hips: int = 0
    masked: dict[str, Counter] = field(
        default_factory=lambda: {m.value: Counter() for m in INPUT_MODALITIES}
    )
    hip_ids: dict[str, dict[str, list[str]]] = field(
        default_factory=lambda: {m.value: {} for m in INPUT_MODALITIES}
    )

    def add(self, modality: InputModality, reason: MaskReason, hip_id: str) -> None:
        """Record that ``hip_id`` has ``modality`` masked for ``reason``."""
        self.masked[modality.value][reason] += 1
        self.hip_ids[modality.value].setdefault(reason, []).append(hip_id)

    def not_found_count(self) -> int:
        """Count hips with an image in which their region was not found."""
        return sum(
            self.masked[m.value][MaskReason.NOT_FOUND]
            for m in (InputModality.RADIOGRAPH, InputModality.CT)
        )

    def summary(self) -> dict[str, Any]:
        """Return a JSON-ready summary (counts only)."""
        return {
            "n_hips": self.n_hips,
            "masked": {
                modality: {str(reason): count for reason, count in sorted(counts.items())}
                for modality, counts in self.masked.items()
                if counts
            },
        }


@dataclass
class CropSet:
    """Cached crops of a cohort, keyed by hip id, with the report of what was masked."""

    hips: dict[str, HipCrops]
    report: CropReport

    def __getitem__(self, hip_id: str) -> HipCrops:
        return self.hips[hip_id]


def prepare_crops(
    cohort: Cohort,
    preprocessing: PreprocessingConfig,
    cache_dir: Path | str,
    text_encoder: TextEncoder | None,
    *,
    workers: int = 1,
    progress: bool = True,
) -> CropSet:
    """Crop every hip of ``cohort`` and embed every note, reusing cached results.

    Parameters
    ----------
    preprocessing
        The bundle's preprocessing; only the crop geometry matters here.
    cache_dir
        Folder of the cache (created if needed); safe to share between runs.
    text_encoder
        Frozen encoder for the notes. ``None`` masks text for every hip.
    workers
        Processes that read images in parallel; 1 reads in this process.
    progress
        Show tqdm progress bars.

    Returns
    -------
    CropSet
        Paths of the cached arrays per hip. A hip whose side was not found in an
        image, or whose image could not be read, has that modality masked; the
        report counts them.
    """
    cache = Path(cache_dir)
    radiograph_geometry = {
        "crop_px": preprocessing.radiograph.crop_px,
        "crop_mm": preprocessing.radiograph.crop_mm,
    }
    ct_geometry = {
        "crop_shape": list(preprocessing.ct.crop_shape),
        "spacing_mm": list(preprocessing.ct.spacing_mm),
    }
    radiograph_entries = _cache_images(
        InputModality.RADIOGRAPH,
        {hip.radiograph_path for hip in cohort.hips if hip.radiograph_path is not None},
        radiograph_geometry,
        cache / "radiograph",
        workers,
        progress,
    )
    ct_entries = _cache_images(
        InputModality.CT,
        {hip.ct_path for hip in cohort.hips if hip.ct_path is not None},
        ct_geometry,
        cache / "ct",
        workers,
        progress,
    )
    text_entries: dict[Path, Path | MaskReason] = {}
    if text_encoder is not None:
        text_entries = _cache_texts(
            {hip.text_path for hip in cohort.hips if hip.text_path is not None},
            text_encoder,
            cache / "text",
            progress,
        )

    report = CropReport(n_hips=len(cohort))
    hips = {}
    for hip in cohort.hips:
        radiograph = _image_crop(hip, InputModality.RADIOGRAPH, radiograph_entries, report)
        ct = _image_crop(hip, InputModality.CT, ct_entries, report)
        text = None
        if hip.text_path is None or text_encoder is None:
            report.add(InputModality.TEXT, MaskReason.NO_INPUT, hip.hip_id)
        elif isinstance(text_entries[hip.text_path], MaskReason):
            report.add(InputModality.TEXT, text_entries[hip.text_path], hip.hip_id)
        else:
            text = text_entries[hip.text_path]
        hips[hip.hip_id] = HipCrops(hip.hip_id, radiograph, ct, text)

    _drop_hips_without_input(hips, report)
    log.info(
        "cohort_cropped",
        manifest=str(cohort.manifest_path),
        n_hips=len(cohort),
        hips_not_found=report.not_found_count(),
        **{f"masked_{m}": sum(c.values()) for m, c in report.masked.items()},
    )
    if report.not_found_count():
        log.warning(
            "cohort_hips_not_found",
            count=report.not_found_count(),
            radiograph=report.hip_ids["radiograph"].get(MaskReason.NOT_FOUND, []),
            ct=report.hip_ids["ct"].get(MaskReason.NOT_FOUND, []),
        )
    return CropSet(hips, report)


def _drop_hips_without_input(hips: dict[str, HipCrops], report: CropReport) -> None:
    """Remove hips left with no modality at all; they cannot be trained or evaluated."""
    for hip_id in [hip_id for hip_id, crops in hips.items() if not any(crops.mask)]:
        del hips[hip_id]
        report.masked.setdefault("all", Counter())["no_usable_input"] += 1
        log.warning("hip_without_usable_input", hip_id=hip_id)


def _image_crop(
    hip: HipRecord,
    modality: InputModality,
    entries: dict[Path, dict[str, Any]],
    report: CropReport,
) -> Path | None:
    source = hip.radiograph_path if modality is InputModality.RADIOGRAPH else hip.ct_path
    if source is None:
        report.add(modality, MaskReason.NO_INPUT, hip.hip_id)
        return None
    entry = entries[source]
    if "error" in entry:
        report.add(modality, MaskReason.UNREADABLE, hip.hip_id)
        return None
    crop = entry["crops"].get(hip.laterality.value)
    if crop is None:
        report.add(modality, MaskReason.NOT_FOUND, hip.hip_id)
    return crop


def input_signature(path: Path) -> list[tuple[str, int, int]]:
    """Return ``(relative name, size, mtime ns)`` of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return [(p.relative_to(path).as_posix(), *_stat(p)) for p in files]
    return [(path.name, *_stat(path))]


def _stat(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def cache_key(kind: str, settings: dict[str, Any], path: Path) -> str:
    """Return the cache key of one input under the given settings."""
    payload = {
        "version": CROP_CACHE_VERSION,
        "kind": kind,
        "settings": settings,
        "path": str(Path(path).resolve()),
        "files": input_signature(path),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def _cache_images(
    modality: InputModality,
    sources: Iterable[Path],
    geometry: dict[str, Any],
    cache: Path,
    workers: int,
    progress: bool,
) -> dict[Path, dict[str, Any]]:
    """Return, per source image, its cached result (crop paths per side, or an error)."""
    entries: dict[Path, dict[str, Any]] = {}
    pending: list[tuple[Path, Path]] = []
    for source in sorted(sources):
        entry_dir = cache / cache_key(modality.value, geometry, source)
        loaded = _read_entry(entry_dir)
        if loaded is None:
            pending.append((source, entry_dir))
        else:
            entries[source] = loaded
    log.info(
        "crop_cache_checked",
        modality=modality.value,
        cached=len(entries),
        to_compute=len(pending),
    )
    if not pending:
        return entries

    from tqdm.auto import tqdm

    jobs = [
        (modality.value, str(source), str(entry_dir), geometry) for source, entry_dir in pending
    ]
    bar = tqdm(
        total=len(jobs), desc=f"cropping {modality.value}", unit="image", disable=not progress
    )
    with bar:
        if workers > 1:
            # Spawned, not forked: the parent may already run torch's thread pools,
            # which a forked child would inherit in an undefined state.
            context = multiprocessing.get_context("spawn")
            # A spawned child starts with structlog's defaults (console lines on
            # stdout), so it is configured as this process is.
            with ProcessPoolExecutor(
                max_workers=workers,
                mp_context=context,
                initializer=configure_logging,
                initargs=current_logging(),
            ) as pool:
                for (source, entry_dir), _ in zip(
                    pending, pool.map(_crop_one_image, jobs), strict=True
                ):
                    entries[source] = _read_entry(entry_dir)
                    bar.update()
        else:
            for (source, entry_dir), job in zip(pending, jobs, strict=True):
                _crop_one_image(job)
                entries[source] = _read_entry(entry_dir)
                bar.update()
    return entries


def _read_entry(entry_dir: Path) -> dict[str, Any] | None:
    result_path = entry_dir / RESULT_FILE_NAME
    if not result_path.is_file():
        return None
    result = json.loads(result_path.read_text(encoding="utf-8"))
    result["crops"] = {side: entry_dir / f"{side}.npy" for side in result.get("found", [])}
    return result


def _crop_one_image(job: tuple[str, str, str, dict[str, Any]]) -> None:
    """Read one image, find both hips and write the cache entry (runs in a worker)."""
    from hipfuse.inference.pipeline import read_inputs
    from hipfuse.inference.readers.ct import reorient_to_canonical
    from hipfuse.inference.regions.ct import find_ct_hips
    from hipfuse.inference.regions.radiograph import find_radiograph_hips
    from hipfuse.inference.types import InputError

    modality, source, entry_dir_text, geometry = job
    entry_dir = Path(entry_dir_text)
    entry_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"source": source}
    try:
        # The same calls, in the same order, as analyze_study makes at the node.
        if modality == InputModality.RADIOGRAPH.value:
            radiograph = read_inputs(radiograph_path=Path(source)).radiograph
            search = find_radiograph_hips(radiograph, geometry["crop_px"], geometry["crop_mm"])
        else:
            volume = read_inputs(ct_path=Path(source)).ct
            search = find_ct_hips(
                reorient_to_canonical(volume),
                tuple(geometry["crop_shape"]),
                tuple(geometry["spacing_mm"]),
            )
    except InputError as error:
        result.update(error=error.code, message=str(error), found=[])
        if error.code == "hip_not_found":
            # Neither side was found: both hips get this modality masked as not found.
            result.pop("error")
            result["missing"] = {side.value: str(error) for side in Laterality}
        log.warning("crop_failed", modality=modality, code=error.code, source=source)
    else:
        for side, region in search.regions.items():
            _save_npy(entry_dir / f"{side.value}.npy", np.asarray(region.crop, dtype=np.float32))
        result["found"] = sorted(side.value for side in search.regions)
        result["missing"] = {side.value: reason for side, reason in search.missing.items()}
        result["warnings"] = sorted(
            {str(getattr(w.code, "value", w.code)) for w in search.warnings}
        )
    _write_json_atomic(entry_dir / RESULT_FILE_NAME, result)


def _cache_texts(
    sources: Iterable[Path], encoder: TextEncoder, cache: Path, progress: bool
) -> dict[Path, Path | MaskReason]:
    """Return, per note, its cached embedding or the reason it has none."""
    from hipfuse.inference.readers.text import read_clinical_text
    from hipfuse.inference.types import InputError

    settings = {
        "fingerprint": encoder.fingerprint(),
        "chunk_tokens": encoder.chunk_tokens,
        "stride_tokens": encoder.stride_tokens,
    }
    cache.mkdir(parents=True, exist_ok=True)
    entries: dict[Path, Path | MaskReason] = {}
    pending = []
    for source in sorted(sources):
        key = cache_key("text", settings, source)
        vector_path, empty_path = cache / f"{key}.npy", cache / f"{key}.json"
        if vector_path.is_file():
            entries[source] = vector_path
        elif empty_path.is_file():
            entries[source] = MaskReason.EMPTY_TEXT
        else:
            pending.append((source, vector_path, empty_path))
    log.info("text_cache_checked", cached=len(entries), to_compute=len(pending))
    if not pending:
        return entries

    from tqdm.auto import tqdm

    for source, vector_path, empty_path in tqdm(
        pending, desc="encoding text", unit="note", disable=not progress
    ):
        try:
            note = read_clinical_text(source)
        except InputError as error:
            # Not cached: the file may be fixed before the next run.
            log.warning("text_read_failed", code=error.code, source=str(source))
            entries[source] = MaskReason.UNREADABLE
            continue
        embedding = encoder.encode(note.text)
        if embedding is None:
            _write_json_atomic(empty_path, {"empty": True})
            entries[source] = MaskReason.EMPTY_TEXT
        else:
            _save_npy(vector_path, embedding.vector.numpy().astype(np.float32))
            entries[source] = vector_path
    return entries


def _save_npy(path: Path, array: np.ndarray) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npy", dir=path.parent)
    with os.fdopen(handle, "wb") as stream:
        np.save(stream, array)
    os.replace(temporary, path)


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".json", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(payload, stream, indent=1, sort_keys=True)
    os.replace(temporary, path)
