"""The spooled instances a study's analysis takes, chosen and decoded.

:func:`select_study_inputs` chooses them from the stored headers exactly as
assembly does (:mod:`hipfuse.node.series`; the node's own outputs are never
inputs), with the fingerprint that identifies them. :func:`read_study_inputs`
decodes them for the model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hipfuse.node.assembly import classify_study
from hipfuse.node.jobstore import JobStore, StoredInstance, input_fingerprint
from hipfuse.node.series import InputRole, select_inputs

if TYPE_CHECKING:
    from hipfuse.inference.pipeline import StudyInputs


@dataclass(frozen=True)
class SelectedInputs:
    """The spooled instances chosen as one study's model inputs."""

    fingerprint: str | None
    radiograph: StoredInstance | None = None
    ct_series_instance_uid: str | None = None
    ct_slices: tuple[StoredInstance, ...] = ()

    @property
    def instances(self) -> list[StoredInstance]:
        """Every input instance: the radiograph first, then the CT slices."""
        first = [self.radiograph] if self.radiograph is not None else []
        return [*first, *self.ct_slices]


def select_study_inputs(jobstore: JobStore, study_uid: str) -> SelectedInputs:
    """Select a study's inputs from its stored instances, as assembly does.

    A radiograph series with several images contributes every image to the
    fingerprint, but only its first received image is analysed.
    """
    # NOTE: the model takes one radiograph; the others of the series only
    # count towards the fingerprint.
    instances = jobstore.list_instances(study_uid)
    selected = select_inputs(classify_study(instances))
    if not selected:
        return SelectedInputs(fingerprint=None)
    by_uid = {instance.sop_instance_uid: instance for instance in instances}
    fingerprint = input_fingerprint(
        sop for chosen in selected.values() for sop in chosen.sop_instance_uids
    )
    radiograph = None
    if InputRole.RADIOGRAPH in selected:
        radiograph = by_uid[selected[InputRole.RADIOGRAPH].sop_instance_uids[0]]
    ct_series_uid = None
    ct_slices: tuple[StoredInstance, ...] = ()
    if InputRole.CT in selected:
        chosen = selected[InputRole.CT]
        ct_series_uid = chosen.series_instance_uid
        ct_slices = tuple(by_uid[sop] for sop in chosen.sop_instance_uids)
    return SelectedInputs(fingerprint, radiograph, ct_series_uid, ct_slices)


def read_study_inputs(selected: SelectedInputs) -> StudyInputs:
    """Decode the selected radiograph and CT series from the spool.

    Raises
    ------
    InputError
        From the radiograph or CT reader.
    """
    from hipfuse.inference.pipeline import StudyInputs
    from hipfuse.inference.readers.ct import read_ct_series
    from hipfuse.inference.readers.radiograph import read_radiograph

    started = time.perf_counter()
    radiograph = read_radiograph(selected.radiograph.path) if selected.radiograph else None
    ct = None
    if selected.ct_slices:
        ct = read_ct_series(
            [instance.path for instance in selected.ct_slices], selected.ct_series_instance_uid
        )
    # The worker adds the clinical text once it has gathered it.
    return StudyInputs(radiograph, ct, None, decode_s=time.perf_counter() - started)
