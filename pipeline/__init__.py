"""The pipeline's stages and helpers."""
from pipeline.telemetry import off as _telemetry_off

_telemetry_off()  # before any module imports MLflow or Prefect
