"""Two-sample tests on embeddings: were the new images drawn from the reference images' distribution?

Both tests answer with a permutation p-value, (1 + #{permuted >= observed}) / (1 + permutations),
which is valid at any sample size. Images come in duplicate groups (near copies of one lesion):
relabelling single images would split a group between the two sides under the null, which makes
the permuted statistics less variable than the observed one and the test too eager. So labels are
dealt out a whole group at a time: a group's pattern of new/reference images moves to another group
of the same size (`group_permutations`), which keeps the number of new images fixed.

- `mmd_test`: the kernel two-sample test. Squared maximum mean discrepancy (unbiased) with a
  Gaussian kernel whose width is the median distance between pooled points; the kernel matrix is
  computed once and every permutation is a product with it. Its witness function says which new
  images lie where the reference is thin: the most atypical ones.
- `classifier_test`: the classifier two-sample test. Logistic regression tells new from reference;
  its AUC, cross-validated with whole duplicate groups in one fold, is near 0.5 when it cannot.
  All permutations are fitted at once (see `fit_logistic`), on the leading principal components of
  the pooled embeddings (found without the labels, so the same for every permutation).
"""
from __future__ import annotations

import numpy as np

COMPONENTS = 32    # principal components the classifier sees (fewer for small samples: N // 8)
FOLDS = 5          # cross-validation folds of the classifier test (whole duplicate groups)
L2 = 1.0           # ridge strength on standardized components (sklearn's C=1)
STEPS = 10         # bound-optimizer steps (every permutation gets the same procedure: the test stays exact)
CHUNK = 250        # permutations handled at once (bounds memory: N x CHUNK floats)


def p_value(observed: float, permuted: np.ndarray) -> float:
    """(1 + #{permuted >= observed}) / (1 + permutations): never 0, exact under exchangeability."""
    return float((1 + np.sum(permuted >= observed - 1e-12)) / (1 + len(permuted)))


def group_permutations(is_new: np.ndarray, groups: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(len, n) boolean: `is_new` re-dealt n times, each group's pattern given to a group of the same size."""
    is_new, out = np.asarray(is_new, bool), np.empty((len(is_new), n), bool)
    _, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for size in np.unique(sizes):
        members = order[starts[sizes == size][:, None] + np.arange(size)]    # (groups of this size, size)
        patterns = is_new[members]
        dealt = rng.permuted(np.tile(np.arange(len(members)), (n, 1)), axis=1)  # (n, groups)
        out[members[None], np.arange(n)[:, None, None]] = patterns[dealt]       # (n, groups, size)
    return out


def median_bandwidth(z: np.ndarray, rng: np.random.Generator, sample: int = 1000) -> float:
    """The median distance between distinct pooled points (of a sample of them): the kernel's width."""
    pick = z[rng.choice(len(z), min(sample, len(z)), replace=False)].astype(np.float64)
    d = squared_distances(pick, pick)[np.triu_indices(len(pick), 1)]
    d = d[d > 1e-12]
    return float(np.sqrt(np.median(d))) if len(d) else 1.0


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
    return np.maximum(sq, 0)


def _mmd_from_sums(sxx, sxy, syy, n: int, m: int):
    """Unbiased MMD^2 from kernel sums (the diagonal, all ones, taken out of the within-sample sums)."""
    return (sxx - n) / (n * (n - 1)) + (syy - m) / (m * (m - 1)) - 2 * sxy / (n * m)


def mmd_test(reference: np.ndarray, new: np.ndarray, groups: np.ndarray, permutations: int,
             rng: np.random.Generator) -> dict:
    """Kernel two-sample test; `groups` covers reference rows then new rows. Also each new image's witness
    score: mean kernel to the other new images minus mean kernel to the reference (high: atypical)."""
    z = np.concatenate([reference, new]).astype(np.float32)
    n, m = len(new), len(reference)
    width = median_bandwidth(z, rng)
    k = squared_distances(z, z)
    np.multiply(k, -1.0 / (2 * width * width), out=k)
    np.exp(k, out=k)
    np.fill_diagonal(k, 1.0)
    is_new = np.arange(len(z)) >= m
    row, total = k.sum(1, dtype=np.float64), float(k.sum(dtype=np.float64))

    def statistic(s: np.ndarray) -> np.ndarray:  # s: (N, b) 0/1 columns, 1 = new
        sxx = (s * (k @ s)).sum(0, dtype=np.float64)
        r = row @ s
        return _mmd_from_sums(sxx, r - sxx, total - 2 * r + sxx, n, m)

    observed = float(statistic(is_new[:, None].astype(np.float32))[0])
    permuted = np.concatenate([statistic(group_permutations(is_new, groups, b, rng).astype(np.float32))
                               for b in _chunks(permutations)])
    witness = (k[m:, m:].sum(1) - 1) / max(n - 1, 1) - k[m:, :m].mean(1)
    return {"statistic": observed, "p_value": p_value(observed, permuted), "bandwidth": width,
            "permutations": permutations, "witness": witness}


def _chunks(total: int):
    for start in range(0, total, CHUNK):
        yield min(CHUNK, total - start)


def principal_components(z: np.ndarray, k: int, rng: np.random.Generator, sample: int = 500) -> np.ndarray:
    """The pooled points on their first k principal axes (found on a sample of them, from its Gram matrix:
    500 x 500 whatever the embedding's size), scaled to unit variance."""
    centred = z - z.mean(0)
    pick = centred[rng.choice(len(z), min(sample, len(z)), replace=False)]
    values, vectors = np.linalg.eigh(pick @ pick.T)
    keep = np.flatnonzero(values > 1e-9 * max(values.max(), 1e-300))[::-1][:max(1, k)]
    if not len(keep):  # every point the same: one constant component
        return np.zeros((len(z), 1))
    scores = centred @ (pick.T @ vectors[:, keep])
    return scores / np.maximum(scores.std(0), 1e-12)


def fit_logistic(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """L2 logistic regression with balanced class weights, for every 0/1 column of y at once.

    x: (n, d) with an intercept column first; returns (d, columns). Each step maximizes Böhning's
    quadratic bound (the weighted Hessian is at most X'WX/4): a fixed matrix per column, so a step is
    two products and a batched solve, where a Newton step would need a new Hessian per column. With
    balanced weights the fitted probabilities stay near 1/2 under the null, where the bound is tight."""
    x, y = x.astype(np.float32), y.astype(np.float32)              # float32: half the time, ample here
    n, d = x.shape
    n1 = np.clip(y.sum(0), 1, n - 1)
    a1, a0 = n / (2 * n1), n / (2 * (n - n1))
    w = a0 + (a1 - a0) * y                                          # (n, B)
    outer = (x[:, :, None] * x[:, None, :]).reshape(n, d * d)      # rows' outer products
    gram = (a0[:, None] * (x.T @ x).reshape(1, -1) + (a1 - a0)[:, None] * (y.T @ outer)).reshape(-1, d, d)
    ridge = L2 * np.diag([0.0] + [1.0] * (d - 1)).astype(np.float32)
    step = np.linalg.inv(gram.astype(np.float64) / 4 + ridge).astype(np.float32)   # (B, d, d)
    beta = np.zeros((d, y.shape[1]), np.float32)
    for _ in range(STEPS):
        p = 1 / (1 + np.exp(-np.clip(x @ beta, -30, 30)))
        grad = ((w * (y - p)).T @ x).T - ridge @ beta    # this order: OpenBLAS is slow on x.T @ (n, B)
        beta += np.matmul(step, grad.T[:, :, None])[:, :, 0].T
    return beta


def average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks within each column, tied values sharing their mean rank (scipy's rankdata, vectorized)."""
    n = len(scores)
    order = np.argsort(scores, axis=0, kind="stable")
    ordered = np.take_along_axis(scores, order, 0)
    pos = np.arange(1, n + 1, dtype=np.float64)[:, None]
    starts = np.ones(ordered.shape, bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    ends = np.ones(ordered.shape, bool)
    ends[:-1] = starts[1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=0)
    last = np.minimum.accumulate(np.where(ends, pos, n + 1)[::-1], axis=0)[::-1]
    ranks = np.empty(ordered.shape)
    np.put_along_axis(ranks, order, (first + last) / 2, 0)
    return ranks


def column_auc(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ROC AUC of each column of scores against the 0/1 column of y (ties count half); NaN without both classes."""
    ranks = average_ranks(scores)
    n1 = y.sum(0)
    n0 = len(y) - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * y).sum(0) - n1 * (n1 + 1) / 2) / (n1 * n0)


def group_folds(groups: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """A fold number per row, whole groups together, drawn without the labels (the same for every permutation)."""
    _, inverse = np.unique(groups, return_inverse=True)
    return rng.permutation(inverse.max() + 1)[inverse] % folds


def cross_validated_auc(x: np.ndarray, y: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Mean over folds of the held-out AUC, per column of y (folds whose held-out part lacks a side skipped)."""
    x, total, counted = np.column_stack([np.ones(len(x)), x]), np.zeros(y.shape[1]), np.zeros(y.shape[1])
    for f in np.unique(fold):
        train, held = fold != f, fold == f
        auc = column_auc(x[held] @ fit_logistic(x[train], y[train]), y[held].astype(np.float64))
        total, counted = total + np.nan_to_num(auc), counted + np.isfinite(auc)
    return np.where(counted > 0, total / np.maximum(counted, 1), 0.5)  # no fold to judge by: chance


def classifier_test(reference: np.ndarray, new: np.ndarray, groups: np.ndarray, permutations: int,
                    rng: np.random.Generator) -> dict:
    """Classifier two-sample test: grouped cross-validated AUC of new vs reference, permutation p-value."""
    from threadpoolctl import threadpool_limits

    z = np.concatenate([reference, new]).astype(np.float64)
    is_new = np.arange(len(z)) >= len(reference)
    folds = min(FOLDS, len(np.unique(groups)))
    if folds < 2:  # one duplicate group: nothing to cross-validate
        return {"auc": 0.5, "p_value": 1.0, "permutations": permutations, "components": 0, "folds": folds}
    fold = group_folds(groups, folds, rng)
    with threadpool_limits(1, "blas"):  # small products: one BLAS thread was 2-10x faster on 2 busy cores
        x = principal_components(z, min(COMPONENTS, max(2, len(z) // 8)), rng)
        observed = float(cross_validated_auc(x, is_new[:, None], fold)[0])
        permuted = np.concatenate([cross_validated_auc(x, group_permutations(is_new, groups, b, rng), fold)
                                   for b in _chunks(permutations)])
    return {"auc": observed, "p_value": p_value(observed, permuted), "permutations": permutations,
            "components": int(x.shape[1]), "folds": int(len(np.unique(fold)))}


def combine(p_values: list[float]) -> float:
    """Bonferroni: the smallest p-value times the number of tests (at most 1)."""
    return float(min(1.0, len(p_values) * min(p_values)))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order."""
    order, m = np.argsort(p_values), len(p_values)
    adjusted, running = np.empty(m), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted.tolist()


def compare(reference: np.ndarray, new: np.ndarray, groups: np.ndarray, permutations: int,
            rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    """Both tests on one pair of samples (`groups`: reference rows, then new rows), combined by Bonferroni;
    and the witness score of each new row."""
    mmd = mmd_test(reference, new, groups, permutations, rng)
    clf = classifier_test(reference, new, groups, permutations, rng)
    result = {"new": int(len(new)), "reference": int(len(reference)),
              "p_value": combine([mmd["p_value"], clf["p_value"]]),
              "mmd": {k: v for k, v in mmd.items() if k != "witness"}, "classifier": clf}
    return result, mmd["witness"]
