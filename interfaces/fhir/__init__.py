"""FHIR R4 interface. So far: the CapabilityStatement, which states exactly what exists."""
