"""Folds of whole duplicate groups, stratified by class when every class can fill each fold.

One implementation for everything fitted and scored on the same images: label_review's out-of-fold
probabilities, the probe's choice of C (pipeline/probe.py) and the cross-validated estimate (pipeline/cv.py).
"""
from __future__ import annotations

import numpy as np

from pipeline.stage import StageError


def grouped_folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit, score) index pairs; every image scored once; a duplicate group lies wholly in one side."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    k = min(folds, len(np.unique(groups)))
    if k < 2:
        raise StageError("out-of-fold probabilities need at least 2 duplicate groups")
    if np.bincount(labels).max() < k:  # too few images per class to stratify: groups only
        return list(GroupKFold(n_splits=k).split(labels, labels, groups))
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels, groups))
