"""Hospital systems other than DICOM: HL7 v2 over MLLP and FHIR R4."""
