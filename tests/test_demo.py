import numpy as np
from PIL import Image

from pipeline.demo import CLASSES, generate
from tests.conftest import tree_digest


def test_generator_is_deterministic(tmp_path):
    generate(tmp_path / "a", per_class=5, seed=7)
    generate(tmp_path / "b", per_class=5, seed=7)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")


def test_classes_are_separable_by_simple_features(demo_raw):
    """A CNN must be able to tell the classes apart: even colour statistics nearly do."""
    def features(path):
        pixels = np.asarray(Image.open(path).convert("RGB").resize((64, 64)), dtype=np.float32) / 255
        return np.concatenate([pixels.mean((0, 1)), pixels.std((0, 1)), [(pixels.min(2) > 0.85).mean(),
                               (pixels[..., 0] < 0.6).mean()]])

    data = {c: np.stack([features(p) for p in sorted((demo_raw / c).glob(f"{c}_*"))]) for c in CLASSES}
    centroids = {c: x[::2].mean(0) for c, x in data.items()}  # fit on even images, score on odd ones
    correct = total = 0
    for c, x in data.items():
        for f in x[1::2]:
            guess = min(centroids, key=lambda k: np.linalg.norm(f - centroids[k]))
            correct, total = correct + (guess == c), total + 1
    assert correct / total > 0.9
