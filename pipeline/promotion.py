"""The promotion decision in words a clinician reads: the clinical gates at the operating point and the
paired rule against the champion. Pure: no registry access, no files (register does the I/O)."""
from __future__ import annotations

from pipeline import paired


def at_operating_point(classes_report: dict, op: dict) -> dict:
    """Each positive class's test sensitivity of the refer decision (what the clinic uses), in the shape of
    evaluate's per-class report; other classes keep their argmax sensitivity."""
    at_point = {c: {"sensitivity": r["value"], "sensitivity_ci": r["interval"], "groups": r["groups"]}
                for c, r in op["test"]["per_class"].items()}
    return {**classes_report, **at_point}


def operating_point_failures(op: dict, promote_below_target: bool, min_specificity: float = 0.0,
                             gate_on: str = "point") -> list[str]:
    """The refer decision itself: a threshold exists, its target is met (unless params allow less), and it
    does not buy its sensitivity by referring (nearly) everyone."""
    if op["threshold"] is None:
        return [f"no operating point: {op['reason']}"]
    failures = []
    if not op["target_met"] and not promote_below_target:
        failures.append(f"operating point below target (operating_point.promote_below_target is false): {op['reason']}")
    spec = op["test"]["specificity"]
    value = spec["value"] if gate_on == "point" or spec["value"] is None else spec["interval"][0]
    if value is None:
        failures.append("specificity at the operating point not measured (no negative image in the test split)")
    elif value < min_specificity:
        what = "estimate" if gate_on == "point" else "exact lower bound"
        failures.append(f"specificity at the operating point {what} {value:.3f} < {min_specificity} (it refers "
                        f"{op['test']['referred_share']:.0%} of the test images)")
    return failures


def gate_failures(classes_report: dict, min_sensitivity: dict[str, float], gate_on: str) -> list[str]:
    """Clinical gates on test sensitivity: the estimate (point) or its exact lower bound (lower_bound)."""
    failures = []
    for c, need in min_sensitivity.items():
        r = classes_report.get(c)
        if r is None or r["sensitivity"] is None:
            failures.append(f"sensitivity for {c} not measured (no {c} image in the test split)")
            continue
        value = r["sensitivity"] if gate_on == "point" else r["sensitivity_ci"][0]
        if value < need:
            what = "estimate" if gate_on == "point" else "exact lower bound"
            failures.append(f"sensitivity for {c} {what} {value:.3f} < {need} "
                            f"(estimate {r['sensitivity']:.3f}, interval {r['sensitivity_ci'][0]:.3f}-"
                            f"{r['sensitivity_ci'][1]:.3f}, {r['groups']} groups)")
    return failures


def promotion_decision(gates: list[str], champion: str | None, comparison: dict | None, newer_data: bool,
                       select_by: str, require_approval: bool, data_note: str = "") -> dict:
    """The decision in words a clinician reads; no registry access. `paired.describe` states the evidence; what
    follows from it is said here, from the alias chosen, so the sentence cannot contradict the decision.
    `newer_data`: trained on a later data version than the champion's (`data_note` says how that was decided)."""
    if gates:
        return {"alias": "challenger", "reason": "fails the clinical gates: " + "; ".join(gates)}
    if champion is None:
        out = {"alias": "champion", "reason": "passes the clinical gates and there was no champion"}
    elif comparison is None:
        out = {"alias": "champion", "reason": f"champion v{champion} predicts other classes; passes the clinical gates"}
    else:
        wins, reason = versus(champion, comparison, newer_data, select_by, data_note)
        if not wins:
            return {"alias": "challenger", "reason": f"{reason} Champion v{champion} stays."}
        # "earns", not "becomes": a sign-off or a shift hold (pipeline.shift.hold_for_shift) may follow and stay true
        out = {"alias": "champion", "reason": f"{reason} The new model earns @champion."}
    if require_approval:
        return {"alias": "awaiting_approval", "reason": out["reason"] + " Waiting for a clinician's approval."}
    return out


def versus(champion: str, comparison: dict, newer_data: bool, select_by: str, data_note: str) -> tuple[bool, str]:
    """(whether the new model wins, the evidence in words) against a champion compared on the same test images."""
    evidence, verdict = paired.describe(comparison, select_by), comparison["verdict"]
    if comparison["identical"]:  # no reason to change, whatever the verdict
        return False, f"same predictions as champion v{champion} on every test image: no reason to change. {evidence}"
    note = f" ({data_note})" if data_note else ""
    if verdict == "not_worse" and newer_data:
        return True, f"vs champion v{champion}: {evidence} Trained on newer data{note}."
    if verdict == "not_worse":
        return False, (f"vs champion v{champion}: {evidence} Non-inferiority only promotes a model trained on newer "
                       f"data; this one is not{note}.")
    return verdict == "better", f"vs champion v{champion}: {evidence}"
