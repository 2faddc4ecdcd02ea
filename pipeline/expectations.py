"""The Great Expectations suite over the manifest, with Data Docs in a fixed folder.

Three batches, each a plain column check (GE's row-level expectations hide their errors on
pandas, see shared/TRAPS.md): every file, the usable images, and images per class.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from pipeline.params import Base, Validate


def expectations(base: Base, params: Validate) -> dict[str, list]:
    """Batch name -> its expectations; each description is what a failure message says."""
    import great_expectations as gx

    e = gx.expectations
    share = 1.0 - params.max_excluded_share
    return {
        "files": [
            e.ExpectColumnValuesToBeInSet(column="status", value_set=["ok"], mostly=share,
                description=f"at most {params.max_excluded_share:.0%} of files may be excluded"),
            e.ExpectColumnValuesToBeUnique(column="path", description="every file is listed once"),
        ],
        "images": [
            e.ExpectColumnValuesToBeInSet(column="label", value_set=list(base.classes),
                description=f"usable images carry one of the classes {list(base.classes)}"),
            e.ExpectColumnValuesToBeInSet(column="format", value_set=list(params.formats),
                description=f"usable images are in an allowed format {list(params.formats)}"),
            e.ExpectColumnValuesToBeBetween(column="width", min_value=params.min_width,
                description=f"usable images are at least {params.min_width} px wide"),
            e.ExpectColumnValuesToBeBetween(column="height", min_value=params.min_height,
                description=f"usable images are at least {params.min_height} px high"),
            e.ExpectColumnValuesToMatchRegex(column="sha256", regex=r"^[0-9a-f]{64}$",
                description="every usable image has a sha256"),
        ],
        "classes": [
            e.ExpectColumnValuesToBeBetween(column="images", min_value=params.min_images_per_class,
                description=f"every class has at least {params.min_images_per_class} usable images"),
        ],
    }


def batches(manifest: pd.DataFrame, classes: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    ok = manifest[manifest.status == "ok"]
    counts = pd.DataFrame({"label": list(classes),
                           "images": [int((ok.label == c).sum()) for c in classes]})
    return {"files": manifest, "images": ok, "classes": counts}


def explain(result, frame: pd.DataFrame) -> str:
    """One line per broken expectation: its description and what was found."""
    config, found = result.expectation_config, result.result or {}
    examples = found.get("partial_unexpected_list") or []
    if config.kwargs.get("column") == "images":  # name the thin classes, not just their counts
        thin = frame[frame.images < config.kwargs["min_value"]]
        examples = [f"{r.label}: {r.images}" for r in thin.itertuples()]
    detail = f"{found.get('unexpected_percent', 0):.1f}% unexpected" if "unexpected_percent" in found else ""
    if examples:
        detail += f"{'; ' if detail else ''}e.g. {', '.join(map(str, examples[:5]))}"
    return f"{config.description} [{config.type}]" + (f": {detail}" if detail else "")


BATCHES = {"files": "every file in data/raw", "images": "the usable images", "classes": "usable images per class"}


def run_suite(manifest: pd.DataFrame, base: Base, params: Validate, docs_dir: Path, run_name: str) -> list[str]:
    """Run the suite, write Data Docs (offline-ready) to docs_dir, and return one message per broken
    expectation. Runs are named by the data version, batches by what they hold."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    from pipeline import datadocs
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    if docs_dir.exists():
        shutil.rmtree(docs_dir)
    context.add_data_docs_site(site_name="validation", site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    source = context.data_sources.add_pandas("manifest")
    frames, failures = batches(manifest, base.classes), []
    for name, checks in expectations(base, params).items():
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=checks))
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=name, validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["validation"])]))
        outcome = checkpoint.run(batch_parameters={"dataframe": frames[name]}, run_id=RunIdentifier(run_name=run_name))
        for validation in outcome.run_results.values():
            failures += [explain(r, frames[name]) for r in validation.results if not r.success]
    datadocs.localize(docs_dir, {f"{name}": f"{name}: {what} ({len(frames[name])} rows)"
                                 for name, what in BATCHES.items()})
    return failures
