"""Prefect flows."""
from pipeline.telemetry import off as _telemetry_off

_telemetry_off()  # before any module imports Prefect or MLflow
