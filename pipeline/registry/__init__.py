"""The MLflow Model Registry, as the pipeline uses it: one client, a lock, the history of decisions,
and the alias moves (compare-and-set) that change `@champion`.

MLflow keeps one row per alias and overwrites it on a move: no history, no lock, no undo. These
modules keep all three in the registry itself, so they live with the MLflow store (SQLite or
PostgreSQL) and outlast any checkout of the project. `python -m pipeline.champion` is their
command line.
"""
