"""Decode once: validate keeps each content's model inputs; later stages and data versions read them."""
import numpy as np
import pandas as pd
import pytest

from pipeline import pixels, streams
from pipeline.images import model_input
from pipeline.validate import Inputs, Outputs, model_sizes, run
from tests.conftest import noise_image, shrunk, train_settings

CLASSES = ("normal", "precancer", "cancer")


def make_raw(root, n=4, size=(640, 480)):
    for c, label in enumerate(CLASSES):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            noise_image(100 * c + i, size).save(root / label / f"{i}.jpg", quality=90)
    return root


def validate(tmp_path, raw, params):
    out = tmp_path / "out"
    run(params, Inputs(raw), Outputs(out / "manifest.csv", out / "docs", out / "summary.json"))
    return pd.read_csv(out / "manifest.csv", keep_default_na=False)


@pytest.fixture
def params(tmp_path):
    return shrunk(tmp_path, validate={"min_images_per_class": 2, "min_width": 32, "min_height": 32})


def test_validate_keeps_the_exact_model_input_of_every_configured_size(tmp_path, params):
    raw = make_raw(tmp_path / "raw")
    manifest = validate(tmp_path, raw, params)
    root, sizes = pixels.cache_dir(raw), model_sizes(params)
    assert sizes == (96, 224)  # SmallCNN; MobileNetV2 and label_review in the real params
    assert root.parent == tmp_path / "pixels"  # beside data/raw, never inside it
    for row in manifest.itertuples():
        for size in sizes:
            kept = np.load(root / str(size) / row.sha256[:2] / f"{row.sha256}.npy")
            np.testing.assert_array_equal(kept, model_input(raw / row.path, size))  # what serving computes
        assert min(pixels.preview(root, row.sha256, raw / row.path).size) == pixels.PREVIEW_SIDE
    assert not list(root.rglob("*.tmp"))


def test_sizes_that_need_another_dct_scale_than_the_preview_are_still_exact(tmp_path):
    """2600x2000 JPEG: the preview (>= 320) decodes at 1/4; 224 and 128 need 1/8, 400 shares 1/4."""
    noise_image(5, (2600, 2000)).save(tmp_path / "a.jpg", quality=90)
    root = tmp_path / "cache"
    info = pixels.store(root, "ab" * 32, tmp_path / "a.jpg", (128, 224, 400), 40_000_000)
    assert (info.format, info.width, info.height) == ("JPEG", 2600, 2000)
    for size in (128, 224, 400):
        np.testing.assert_array_equal(pixels.model_array(root, "ab" * 32, tmp_path / "nowhere.jpg", size),
                                      model_input(tmp_path / "a.jpg", size))
    assert pixels.preview(root, "ab" * 32, tmp_path / "nowhere.jpg").size == (416, 320)


def test_content_seen_before_is_never_decoded_again(tmp_path, params, monkeypatch):
    """A later data version (a file renamed, moved to another class, copied) costs no decode."""
    raw = make_raw(tmp_path / "raw")
    first = validate(tmp_path, raw, params)
    (raw / "normal" / "0.jpg").rename(raw / "normal" / "renamed.jpg")
    (raw / "cancer" / "copy.jpg").write_bytes((raw / "cancer" / "1.jpg").read_bytes())

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(pixels, "decode", no_decode)
    second = validate(tmp_path, raw, params)
    assert (second.status == "ok").all() and len(second) == len(first) + 1
    cols = ["sha256", "format", "mode", "width", "height"]
    assert second[cols].drop_duplicates().sort_values("sha256").reset_index(drop=True).equals(
        first[cols].sort_values("sha256").reset_index(drop=True))
    noise_image(999, (640, 480)).save(raw / "cancer" / "new.jpg", quality=90)
    with pytest.raises(AssertionError, match="decoded again"):  # a new content is decoded (once)
        validate(tmp_path, raw, params)


def test_a_lower_pixel_limit_still_applies_to_cached_content(tmp_path, params):
    raw = make_raw(tmp_path / "raw", n=2)
    validate(tmp_path, raw, params)
    (tmp_path / "p2").mkdir()
    lowered = shrunk(tmp_path / "p2", validate={"min_images_per_class": 0, "min_width": 32,
                                                "min_height": 32, "max_pixels": 1000, "max_excluded_share": 1})
    manifest = validate(tmp_path, raw, lowered)
    assert manifest.reason.str.contains("over the 1,000 limit").all()


def test_a_broken_cache_file_is_made_again_from_the_original(tmp_path):
    path, root = tmp_path / "a.jpg", tmp_path / "cache"
    noise_image(1, (300, 200)).save(path, quality=90)
    pixels.store(root, "abc", path, (64,), 40_000_000)
    target = root / "64" / "ab" / "abc.npy"
    target.write_bytes(target.read_bytes()[:50])  # a disk that filled up, a killed copy
    np.testing.assert_array_equal(pixels.model_array(root, "abc", path, 64), model_input(path, 64))
    np.testing.assert_array_equal(np.load(target), model_input(path, 64))
    np.testing.assert_array_equal(pixels.model_array(root, "", path, 96), model_input(path, 96))  # no sha: no cache
    assert not (root / "96").exists()


def test_row_file_reads_back_what_was_appended(tmp_path):
    rows = np.random.default_rng(0).normal(size=(300, 3, 4)).astype(np.float32)
    store = streams.RowFile(tmp_path / "rows", np.zeros(300))
    for start in range(0, 300, 128):
        store.append(rows[start:start + 128])
    assert len(store) == 300 and store.shape == (3, 4)
    idx = np.array([299, 0, 17, 128, 17])
    np.testing.assert_array_equal(store.read(idx), rows[idx])


def test_batches_cover_every_row_once_per_epoch_reshuffled_and_seeded():
    source = streams.InMemory(np.arange(50, dtype=np.float32)[:, None], np.arange(50))
    epochs = []
    for seed in (3, 3):
        data, seen = streams.batches(source, 8, seed), []
        for _ in range(2):
            seen.append(np.concatenate([data[i][1] for i in range(len(data))]))
            data.on_epoch_end()
        epochs.append(seen)
    assert all(sorted(e) == list(range(50)) for e in epochs[0])
    assert not np.array_equal(epochs[0][0], epochs[0][1])  # reshuffled
    assert all(np.array_equal(a, b) for a, b in zip(*epochs))  # the same seed, the same order


class Counting(streams.InMemory):
    """Records the largest read, to show nothing reads a whole split at once."""
    largest = 0

    def read(self, idx):
        Counting.largest = max(Counting.largest, len(idx))
        return super().read(idx)


def test_training_and_prediction_read_a_chunk_at_a_time(keras_home):
    import keras

    from pipeline.models import build_model
    from pipeline.tracking import History
    from pipeline.train import fit_cached

    rng = np.random.default_rng(0)
    n = 3 * streams.CHUNK
    data = {k: Counting(rng.uniform(0, 255, (n, 32, 32, 3)).astype(np.float32), np.arange(n) % 3)
            for k in ("train", "val")}
    params = train_settings(batch_size=16, head_epochs=1, finetune_epochs=1, finetune_layers=5)
    keras.utils.set_random_seed(1)
    parts = build_model("MobileNetV2", 3, "none", size=32, alpha=0.35, seed=1)
    fit_cached(parts, data, params, None, History())
    probs = streams.predict_rows(parts.model.predict_on_batch, data["val"])
    assert probs.shape == (n, 3)
    assert Counting.largest == streams.CHUNK
