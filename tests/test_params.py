import pytest
import yaml

from pipeline.params import Base, ParamsError, load_params, selectable_metrics
from tests.conftest import ROOT


def test_real_params_load_and_are_frozen():
    params = load_params(ROOT / "params.yaml")
    assert params.base.classes == ("normal", "precancer", "cancer")
    with pytest.raises(AttributeError):
        params.split.val = 0.5


def write(tmp_path, mutate):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_unknown_key_is_named(tmp_path):
    path = write(tmp_path, lambda p: p["dedup"].update(max_distnce=3))
    with pytest.raises(ParamsError, match=r"unknown key dedup\.max_distnce"):
        load_params(path)


def test_missing_key_is_named(tmp_path):
    path = write(tmp_path, lambda p: p["split"].pop("test"))
    with pytest.raises(ParamsError, match=r"missing key split\.test"):
        load_params(path)


def test_wrong_type_is_named(tmp_path):
    path = write(tmp_path, lambda p: p["validate"].update(min_width="big"))
    with pytest.raises(ParamsError, match=r"validate\.min_width: expected int"):
        load_params(path)


def test_unknown_section_is_named(tmp_path):
    path = write(tmp_path, lambda p: p.update(trian={}))
    with pytest.raises(ParamsError, match="unknown params section 'trian'"):
        load_params(path)


def test_missing_section_is_named(tmp_path):
    path = write(tmp_path, lambda p: p.pop("label_review"))
    with pytest.raises(ParamsError, match="missing section 'label_review'"):
        load_params(path)


# Allowed values and the rules between sections: one rejected value per rule, the message naming the key.
REJECTED = {
    "unknown hash": (lambda p: p["dedup"].update(hash="md5"), r"dedup\.hash is 'md5'; allowed: phash, dhash"),
    "hash too long": (lambda p: p["dedup"].update(hash_size=9), r"dedup\.hash_size is 9; allowed: 2\.\.8"),
    "hash too short": (lambda p: p["dedup"].update(hash_size=1), r"dedup\.hash_size is 1"),
    "no train split": (lambda p: p["split"].update(val=0.5, test=0.5), r"split\.val, split\.calibration and split\.test must be >= 0"),
    "negative split": (lambda p: p["split"].update(val=-0.1, test=0.3), r"split\.val, split\.calibration and split\.test must be >= 0"),
    "unknown select_by": (lambda p: p["evaluate"].update(select_by="f1"), r"evaluate\.select_by is 'f1'"),
    "select_by a class that is not positive": (lambda p: p["evaluate"].update(select_by="sensitivity_normal"),
                                               r"evaluate\.select_by is 'sensitivity_normal'"),
    "one fold": (lambda p: p["label_review"].update(folds=1), r"label_review\.folds is 1; allowed: 2 or more"),
    "unknown rule": (lambda p: p["register"].update(rule="best"), r"register\.rule is 'best'"),
    "unknown gate": (lambda p: p["register"].update(gate_on="upper_bound"), r"register\.gate_on is 'upper_bound'"),
    "non-inferiority without a stated error rate": (
        lambda p: (p["register"].update(rule="non_inferiority"), p["evaluate"].update(select_by="macro_f1")),
        r"non_inferiority has no test with a stated error rate for evaluate\.select_by macro_f1"),
    "positive class not a class": (lambda p: p["base"].update(positive_classes=["cancer", "melanoma"]),
                                   r"base\.positive_classes names 'melanoma', which is not in base\.classes"),
    "gate on a class that is not a class": (lambda p: p["register"].update(min_sensitivity={"melanoma": 0.5}),
                                            r"register\.min_sensitivity names 'melanoma'"),
    "one class": (lambda p: p["base"].update(classes=["cancer"], positive_classes=["cancer"]),
                  r"base\.classes needs at least two distinct names"),
    "unknown train_on": (lambda p: p["flow"].update(train_on="cloud"), r"flow\.train_on is 'cloud'"),
    "unknown head": (lambda p: p["train"]["architectures"]["MobileNetV2"].update(head="mlp"),
                     r"train\.architectures\.MobileNetV2\.head is 'mlp'; allowed: network, linear"),
    "probe without pretrained features": (
        lambda p: p["train"]["architectures"].update(probe={"base": "SmallCNN", "head": "linear", "weights": "none"}),
        r"train\.architectures\.probe: a linear probe needs pretrained features"),
    "no probe C": (lambda p: p["train"].update(probe_c=[]), r"train\.probe_c must list at least one"),
    "probe C not positive": (lambda p: p["train"].update(probe_c=[0, 1]), r"train\.probe_c must list"),
    "one probe fold": (lambda p: p["train"].update(probe_folds=1), r"train\.probe_folds is 1"),
    "an ensemble of one": (lambda p: p["ensemble"].update(top_k=1), r"ensemble\.top_k is 1; allowed: 0 \(no ensemble\)"),
    "a negative ensemble": (lambda p: p["ensemble"].update(top_k=-2), r"ensemble\.top_k is -2"),
    "two cv folds": (lambda p: p["cv"].update(folds=2), r"cv\.folds is 2; allowed: 3 or more"),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_a_value_outside_its_rule_is_rejected(tmp_path, case):
    mutate, message = REJECTED[case]
    with pytest.raises(ParamsError, match=message):
        load_params(write(tmp_path, mutate))


def test_non_inferiority_accepts_the_metrics_it_can_bound(tmp_path):
    for select_by in ("balanced_accuracy", "sensitivity_cancer"):
        path = write(tmp_path, lambda p: (p["register"].update(rule="non_inferiority"),
                                          p["evaluate"].update(select_by=select_by)))
        assert load_params(path).evaluate.select_by == select_by


def test_select_by_names_follow_the_classes():
    assert "sensitivity_cancer" in selectable_metrics(Base(0, ("non-cancer", "cancer"), ("cancer",)))
    assert "sensitivity_normal" not in selectable_metrics(Base(0, ("normal", "cancer"), ("cancer",)))
