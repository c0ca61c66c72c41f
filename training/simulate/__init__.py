"""Simulated hip cohorts: a pelvis phantom per patient rendered as CT and AP radiograph, with notes.

There is no public labelled cohort of hip osteoarthritis, osteonecrosis and
femoroacetabular impingement with radiograph, CT and text together, so the
demo model is trained, and the pipeline tested end to end, on a simulated one.
The pieces can be used alone:

- :func:`sample_patient_spec` and :func:`build_phantom`: anatomy and lesions as a volume;
- :func:`render_ct` and :func:`render_radiograph`: the two imaging views of that volume;
- :func:`write_ct_series` and :func:`write_dx`: DICOM files;
- :func:`compose_note`: the clinical note;
- :func:`simulate_cohort`: all of it, with a manifest.
"""

from hipfuse.training.simulate.cohort import (
    GENERATOR_VERSION,
    MANIFEST_COLUMNS,
    TRUTH_COLUMNS,
    patient_id_for,
    simulate_cohort,
    simulate_patient,
)
from hipfuse.training.simulate.ct import (
    CtAcquisition,
    hu_to_stored,
    render_ct,
    sample_ct_acquisition,
)
from hipfuse.training.simulate.dicom_writer import StudyInfo, derived_uid, write_ct_series, write_dx
from hipfuse.training.simulate.lesions import FaiType, HipLesion, sample_hip_lesion
from hipfuse.training.simulate.masks import ct_lesion_mask, write_ct_mask_nifti, write_mask_png
from hipfuse.training.simulate.phantom import (
    PatientSpec,
    Phantom,
    build_phantom,
    sample_patient_spec,
    simulation_grid,
)
from hipfuse.training.simulate.radiograph import (
    RadiographAcquisition,
    project_mask,
    render_radiograph,
    sample_radiograph_acquisition,
)
from hipfuse.training.simulate.text import NoteLanguage, compose_note, sample_note_facts

__all__ = [
    "GENERATOR_VERSION",
    "MANIFEST_COLUMNS",
    "TRUTH_COLUMNS",
    "CtAcquisition",
    "FaiType",
    "HipLesion",
    "NoteLanguage",
    "PatientSpec",
    "Phantom",
    "RadiographAcquisition",
    "StudyInfo",
    "build_phantom",
    "compose_note",
    "ct_lesion_mask",
    "derived_uid",
    "hu_to_stored",
    "patient_id_for",
    "project_mask",
    "render_ct",
    "render_radiograph",
    "sample_ct_acquisition",
    "sample_hip_lesion",
    "sample_note_facts",
    "sample_patient_spec",
    "sample_radiograph_acquisition",
    "simulate_cohort",
    "simulate_patient",
    "simulation_grid",
    "write_ct_mask_nifti",
    "write_ct_series",
    "write_dx",
    "write_mask_png",
]
