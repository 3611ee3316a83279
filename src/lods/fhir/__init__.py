"""FHIR R4 results: pure resource builders, the database reads behind them, and `/fhir`."""
