"""The DICOM node: SCP, spool, study assembly, jobs, SR/SC encoding and sending."""
