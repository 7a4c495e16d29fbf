"""Actigraphy without a server: device-file readers, preprocessing to week windows, clinical metrics,
sleep scoring and FHIR R4 output.

Imports nothing from `serving` or `cache` (checked in the lint step). See docs/architecture.md.
"""
