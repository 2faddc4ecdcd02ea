"""Data Docs that open with no network: the page assets come from npm at install time, not at view time.

Great Expectations' pages load bootstrap, jQuery, bootstrap-table, vega and font-awesome from
public CDNs; offline (many hospital machines) the index lists nothing and pages are unstyled.
`python -m pipeline.datadocs --install` (run by `make install`) fetches the exact package
versions the pages ask for with `npm pack` into .vendor/datadocs/ (outside pipeline/, which is
logged with every model; $DATADOCS_ASSETS points elsewhere); after each build, validate copies
them beside the pages and points every page at the local copies. Without them validate still
writes the pages, which then load the assets from the CDNs (plain pages offline), and says so.
"""
from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path



def vendor_dir() -> Path:
    """Where the page assets are kept: $DATADOCS_ASSETS, else .vendor/datadocs/ in this checkout
    (read at each call, so a scratch copy of the project or a test can point elsewhere)."""
    return Path(os.environ.get("DATADOCS_ASSETS") or Path(__file__).resolve().parents[1] / ".vendor" / "datadocs")


# CDN address the pages use -> (npm package@version, file inside the package). One row per asset.
ASSETS = {
    "https://code.jquery.com/jquery-3.7.1.min.js": ("jquery@3.7.1", "dist/jquery.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js":
        ("popper.js@1.12.9", "dist/umd/popper.min.js"),
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css":
        ("bootstrap@4.3.1", "dist/css/bootstrap.min.css"),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js":
        ("bootstrap@4.3.1", "dist/js/bootstrap.min.js"),
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css":
        ("@forevolve/bootstrap-dark@1.1.0", "dist/css/bootstrap-prefers-dark.css"),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css":
        ("bootstrap-table@1.19.1", "dist/bootstrap-table.min.css"),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js":
        ("bootstrap-table@1.19.1", "dist/bootstrap-table.min.js"),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
        ("bootstrap-table@1.19.1", "dist/extensions/filter-control/bootstrap-table-filter-control.min.js"),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        ("bootstrap-table@1.19.1", "dist/extensions/filter-control/bootstrap-table-filter-control.css"),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        ("bootstrap-table@1.19.1", "dist/extensions/filter-control/bootstrap-table-filter-control.min.css"),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        ("bootstrap-datepicker@1.9.0", "dist/css/bootstrap-datepicker.min.css"),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        ("bootstrap-datepicker@1.9.0", "dist/js/bootstrap-datepicker.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css":
        ("@fortawesome/fontawesome-free@6.6.0", "css/all.min.css"),
    "https://cdn.jsdelivr.net/npm/vega@5": ("vega@5.33.1", "build/vega.min.js"),
    "https://cdn.jsdelivr.net/npm/vega-lite@5": ("vega-lite@5.23.0", "build/vega-lite.min.js"),
    "https://cdn.jsdelivr.net/npm/vega-embed@6": ("vega-embed@6.29.0", "build/vega-embed.min.js"),
}
EXTRA_FOLDERS = {"@fortawesome/fontawesome-free@6.6.0": ["webfonts"]}  # all.min.css loads ../webfonts/
# GE's logo lives on S3; the same picture ships in the docs' own static folder
LOGO = re.compile(r"https://great-expectations-web-assets\.s3\.us-east-2\.amazonaws\.com/[a-z_-]+\.png(\?[^\"']*)?")


def local_name(package: str) -> str:
    return package.lstrip("@").replace("/", "-")


def install(dest: Path | None = None) -> Path:
    """Fetch each package once with `npm pack` and keep the files the pages need."""
    dest = dest or vendor_dir()
    wanted: dict[str, set[str]] = {}
    for package, inner in ASSETS.values():
        wanted.setdefault(package, set()).add(inner)
    if not shutil.which("npm"):
        raise SystemExit("datadocs: npm is needed at install time (Debian: apt-get install npm)")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(["npm", "pack", "--silent", "--fetch-retries=4", *wanted], cwd=tmp,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"datadocs: npm pack failed:\n{done.stderr[-2000:]}")
        for package in wanted:
            tgz = local_name(package).replace("@", "-") + ".tgz"  # npm pack's own file name
            folders = tuple(f"package/{f}/" for f in EXTRA_FOLDERS.get(package, []))
            with tarfile.open(Path(tmp) / tgz) as archive:
                for member in archive.getmembers():
                    inner = member.name.removeprefix("package/")
                    if member.isfile() and (inner in wanted[package] or member.name.startswith(folders)):
                        target = dest / local_name(package) / inner
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(archive.extractfile(member).read())
    return dest


def installed(vendor: Path | None = None) -> bool:
    vendor = vendor or vendor_dir()
    return all((vendor / local_name(p) / inner).is_file() for p, inner in ASSETS.values()) and \
        all(any((vendor / local_name(p) / folder).glob("*")) for p, folders in EXTRA_FOLDERS.items() for folder in folders)


def localize(docs_dir: Path, assets: dict[str, str] | None = None, vendor: Path | None = None) -> int:
    """Copy the assets beside the pages and point every page at them; name each validation page's
    data asset (GE prints "Data asset: None" for in-memory frames). Returns the pages rewritten.
    Assets not installed: the pages keep their CDN addresses (`installed()` tells the caller)."""
    vendor = vendor or vendor_dir()
    local = ASSETS if installed(vendor) else {}  # CDN address -> local copy
    if local:
        shutil.copytree(vendor, docs_dir / "static" / "vendor", dirs_exist_ok=True)
    pages = sorted(docs_dir.rglob("*.html"))
    for page in pages:
        up = "../" * (len(page.relative_to(docs_dir).parts) - 1)
        text = page.read_text()
        for url, (package, inner) in local.items():
            text = re.sub(re.escape(url) + r"(?=[\"'])", f"{up}static/vendor/{local_name(package)}/{inner}", text)
        text = LOGO.sub(f"{up}static/images/logo-long.png", text)
        parts = page.relative_to(docs_dir).parts
        if parts[0] == "validations" and parts[1] in (assets or {}):
            text = text.replace("Data asset: None", f"Data asset: {html.escape(assets[parts[1]])}")
        page.write_text(text)
    return len(pages)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--install", action="store_true", help="fetch the page assets from npm")
    parser.add_argument("--dest", type=Path, help="default: $DATADOCS_ASSETS, else .vendor/datadocs/")
    args = parser.parse_args(argv)
    args.dest = args.dest or vendor_dir()
    if args.install:
        if installed(args.dest):
            print(f"datadocs: page assets already in {args.dest}")
        else:
            install(args.dest)
            print(f"datadocs: page assets installed in {args.dest}")


if __name__ == "__main__":
    main()
