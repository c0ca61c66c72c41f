"""FHIR R4 client that gathers a patient's notes, reports, conditions and medications."""
