"""Results out: every send is an outbox row first, then attempts over DICOM, FHIR or HL7."""
