"""pipeline.promotion: the clinical gates (at the operating point) and the promotion decision in every case."""
import pytest


def report(sensitivity, low=None, high=1.0, groups=5):
    return {"sensitivity": sensitivity, "sensitivity_ci": None if sensitivity is None else [low, high],
            "groups": groups}


def test_gates_on_the_estimate_or_its_exact_lower_bound():
    from pipeline.promotion import gate_failures

    classes = {"cancer": report(0.9, 0.55), "precancer": report(0.7, 0.35)}
    assert gate_failures(classes, {"cancer": 0.8, "precancer": 0.6}, "point") == []
    failures = gate_failures(classes, {"cancer": 0.8, "precancer": 0.6}, "lower_bound")
    assert [f.split(" exact")[0] for f in failures] == ["sensitivity for cancer", "sensitivity for precancer"]
    assert "exact lower bound 0.550 < 0.8 (estimate 0.900, interval 0.550-1.000, 5 groups)" in failures[0]
    assert gate_failures({"cancer": report(0.75, 0.5)}, {"cancer": 0.8}, "point") == [
        "sensitivity for cancer estimate 0.750 < 0.8 (estimate 0.750, interval 0.500-1.000, 5 groups)"]
    # a class with no test image fails as "not measured", never as a pass or a 0
    assert gate_failures({"cancer": report(None)}, {"cancer": 0.0}, "point") == [
        "sensitivity for cancer not measured (no cancer image in the test split)"]
    assert gate_failures({}, {"cancer": 0.0}, "point")[0].endswith("not measured (no cancer image in the test split)")


def comparison(verdict, identical=False, rule="superiority"):
    return {"verdict": verdict, "identical": identical, "one_sided_lower": 0.01 if verdict != "not_shown" else -0.2,
            "new": 0.8, "old": 0.7, "difference": 0.1, "confidence": 0.95,
            "rule": "non_inferiority" if verdict == "not_worse" else rule, "margin": 0.05}


def test_promotion_decision_in_every_case():
    from pipeline.promotion import promotion_decision as decide

    assert decide(["sensitivity for cancer x"], None, None, True, "balanced_accuracy", False) == {
        "alias": "challenger", "reason": "fails the clinical gates: sensitivity for cancer x"}
    assert decide([], None, None, True, "balanced_accuracy", False)["alias"] == "champion"
    other = decide([], "3", None, True, "balanced_accuracy", False)
    assert other["alias"] == "champion" and "champion v3 predicts other classes" in other["reason"]
    better = decide([], "3", comparison("better"), False, "balanced_accuracy", False)
    assert better["alias"] == "champion" and better["reason"].startswith("vs champion v3: balanced_accuracy 0.800")
    assert decide([], "3", comparison("not_shown"), True, "balanced_accuracy", False)["alias"] == "challenger"
    # non-inferiority promotes only a model trained on newer data
    assert decide([], "3", comparison("not_worse"), True, "balanced_accuracy", False)["alias"] == "champion"
    same_data = decide([], "3", comparison("not_worse"), False, "balanced_accuracy", False)
    assert same_data["alias"] == "challenger" and "only promotes a model trained on newer data" in same_data["reason"]
    # identical predictions never churn the champion, whatever the verdict
    tie = decide([], "3", comparison("better", identical=True), True, "balanced_accuracy", False)
    assert tie["alias"] == "challenger" and tie["reason"].startswith("same predictions as champion v3")
    # sign-off: a winner waits; a loser does not ask
    waiting = decide([], "3", comparison("better"), False, "balanced_accuracy", True)
    assert waiting["alias"] == "awaiting_approval" and waiting["reason"].endswith("Waiting for a clinician's approval.")
    assert decide(["gate"], None, None, True, "balanced_accuracy", True)["alias"] == "challenger"
    # under non-inferiority a model shown better is promoted as better, whatever its data
    shown_better = decide([], "3", comparison("better", rule="non_inferiority"), False, "balanced_accuracy", False)
    assert shown_better["alias"] == "champion" and "superiority at 95% confidence shown" in shown_better["reason"]
    newer = decide([], "3", comparison("not_worse"), True, "balanced_accuracy", False, "data version 1a2b3c4d")
    assert "Trained on newer data (data version 1a2b3c4d)." in newer["reason"]
    older = decide([], "3", comparison("not_worse"), False, "balanced_accuracy", False, "it is older")
    assert older["reason"].endswith("this one is not (it is older). Champion v3 stays.")


@pytest.mark.parametrize("rule, verdict", [("superiority", "better"), ("superiority", "not_shown"),
                                           ("non_inferiority", "better"), ("non_inferiority", "not_worse"),
                                           ("non_inferiority", "not_shown")])
@pytest.mark.parametrize("identical", [False, True])
@pytest.mark.parametrize("newer", [False, True])
@pytest.mark.parametrize("approval", [False, True])
def test_the_reason_never_contradicts_the_decision(rule, verdict, identical, newer, approval):
    from pipeline.promotion import promotion_decision as decide

    c = comparison(verdict, identical, rule)
    d = decide([], "3", c, newer, "balanced_accuracy", approval)
    promoted = d["alias"] != "challenger"
    assert promoted == (not identical and (verdict == "better" or (verdict == "not_worse" and newer)))
    assert d["alias"] == ("challenger" if not promoted else "awaiting_approval" if approval else "champion")
    assert ("Champion v3 stays." in d["reason"]) != promoted
    assert ("The new model earns @champion." in d["reason"]) == promoted
    assert "so the new model" not in d["reason"] and "so the champion stays" not in d["reason"]


def test_the_gates_read_the_sensitivity_at_the_operating_point():
    from pipeline.promotion import at_operating_point, gate_failures, operating_point_failures

    argmax = {"cancer": report(0.5, 0.2), "precancer": report(0.4, 0.1), "normal": report(0.9, 0.7)}
    op = {"threshold": 0.3, "target_met": False, "reason": "too few positive groups",
          "test": {"specificity": {"value": 0.2, "interval": [0.05, 0.45], "groups": 10}, "referred_share": 0.85,
                   "per_class": {"cancer": {"value": 0.95, "interval": [0.75, 1.0], "groups": 20},
                                 "precancer": {"value": 0.7, "interval": [0.45, 0.88], "groups": 12}}}}
    gated = at_operating_point(argmax, op)
    assert gated["cancer"]["sensitivity"] == 0.95 and gated["normal"] == argmax["normal"]
    assert gate_failures(gated, {"cancer": 0.8, "precancer": 0.6}, "point") == []  # the argmax would fail both
    assert len(gate_failures(argmax, {"cancer": 0.8, "precancer": 0.6}, "point")) == 2
    assert operating_point_failures(op, promote_below_target=True) == []
    assert operating_point_failures(op, promote_below_target=False) == [
        "operating point below target (operating_point.promote_below_target is false): too few positive groups"]
    assert operating_point_failures({**op, "threshold": None}, True) == ["no operating point: too few positive groups"]
    assert operating_point_failures(op, True, min_specificity=0.5) == [
        "specificity at the operating point estimate 0.200 < 0.5 (it refers 85% of the test images)"]
    assert operating_point_failures(op, True, 0.1, "lower_bound")[0].startswith(
        "specificity at the operating point exact lower bound 0.050 < 0.1")
