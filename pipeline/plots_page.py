"""`dvc plots show` pages that open offline: a local HTML template with Vega inlined.

DVC's default page loads vega, vega-lite and vega-embed from a CDN: offline (many hospital machines)
it is blank. DVC accepts a template of its own (`{plot_divs}` marks where the plots go). This module
writes one with the three libraries inlined, from the copies `pipeline.datadocs --install` already
fetched from npm for the Data Docs (the same packages, one major version each), and points this
checkout's DVC at it in .dvc/config.local (`plots.html_template`), so a plain `dvc plots show` writes a
page that needs no network. `make install` runs it; without it DVC keeps its CDN page.

    python -m pipeline.plots_page --install    # .vendor/dvc-plots.html, and DVC's config pointing at it
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from pipeline import datadocs, project

LIBRARIES = ("vega", "vega-lite", "vega-embed")  # load order: vega-lite and vega-embed need vega
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC plots</title>
{scripts}
    <style>table {{ border-spacing: 15px; }}</style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def library_files(vendor: Path | None = None) -> list[Path]:
    """The vendored vega, vega-lite and vega-embed builds, in load order; FileNotFoundError naming the first missing."""
    vendor = vendor or datadocs.vendor_dir()
    found = {package.rsplit("@", 1)[0]: vendor / datadocs.local_name(package) / inner
             for package, inner in datadocs.ASSETS.values()}
    files = [found[name] for name in LIBRARIES]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `python -m pipeline.datadocs --install` (make install)")
    return files


def template(vendor: Path | None = None) -> str:
    """The page: DVC's own layout, each library inline (`</script` escaped so it cannot end its tag early)."""
    scripts = []
    for path in library_files(vendor):
        code = path.read_text(encoding="utf-8").replace("</script", "<\\/script")
        for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}"):  # DVC fills these by plain replace
            if placeholder in code:
                raise ValueError(f"{path.name} contains {placeholder}, which DVC would replace")
        scripts.append(f"    <script>/* {path.parent.name} */\n{code}\n    </script>")
    return PAGE.format(scripts="\n".join(scripts))


def install(root: Path | None = None) -> Path:
    root = root or project.root()
    out = root / ".vendor" / "dvc-plots.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(template(), encoding="utf-8")
    if (root / ".dvc").is_dir():  # relative to .dvc/: the checkout can move
        subprocess.run([str(Path(sys.executable).parent / "dvc"), "config", "--local", "plots.html_template",
                        "../.vendor/dvc-plots.html"], cwd=root, check=True, capture_output=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--install", action="store_true", help="write the template and point DVC at it")
    args = parser.parse_args(argv)
    if args.install:
        try:
            out = install()
        except FileNotFoundError as err:
            raise SystemExit(f"plots_page: {err}") from None
        print(f"plots_page: {out} ({out.stat().st_size / 1e6:.1f} MB); `dvc plots show` pages now open offline")


if __name__ == "__main__":
    main()
