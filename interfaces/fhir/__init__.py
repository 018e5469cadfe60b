"""FHIR R4 interface on the same core as HL7 v2: Patient, ServiceRequest (orders), Task (scheduled
procedure steps) and ImagingStudy (archive), with search, versioning and OperationOutcome errors.

Modules: routes (REST blueprint), registry (the served types), kinds (what a type is), patient,
service_request, task, imaging_study (translation), search (search.html), datatypes, errors (the one
error translation), capability (CapabilityStatement from the registry)."""
