"""The clinic's page: a small server-rendered web application for the people who are not engineers.

Pages: the review queue (label conflicts and suspected label errors), approvals with the champion's
history and rollback, and "try a photo" with the champion's decision and Grad-CAM. Every write goes
through the pipeline's own code (`pipeline.labels.record`, `pipeline.registry.aliases`), never a
second implementation; every asset is served from this package (no network).

    python -m clinic users add NAME --role viewer|clinician|admin   # password on standard input
    python -m clinic serve                                            # clinic.host:clinic.port (params.yaml)
"""
