"""privacy: nothing identifying leaves data/raw; re-read what was written and fail closed.

Everything written outside data/raw carries pixels and pseudonymous IDs (`image_id`: the first 12 hex
digits of the content's sha256), never an original's name, path or metadata. Outputs that may name
originals (the manifest, which re-identifies; the identifiers table validate writes) are marked
`desc: local-only ...` in dvc.yaml: never logged or committed, pushed only to the DVC remote, which
holds data/raw itself.

The check (`python -m pipeline.privacy`; also the end of `report`, before its page goes to MLflow)
re-reads every output dvc.yaml declares (and the pixel cache) and fails when
(a) an image file outside data/raw carries metadata: JPEG APPn (Exif, XMP, IPTC, MPF), comments or a
    second image (MPO frame, thumbnail); PNG eXIf/tEXt/iTXt/zTXt/tIME; TIFF tags beyond the image's
    own; any EXIF, XMP, IPTC or text block Pillow finds (HEIF, WebP, ...);
(b) an output that is not local-only holds an original file name or path, or an identifying value
    of the identifiers table (GPS, capture dates, serials, owner, XMP, IPTC and PNG text strings).
It names the file and the kind of identifier and the image's ID, never the value itself (the
message lands in logs).
"""
from __future__ import annotations

import argparse
import html
import io
import json
import re
import unicodedata
import warnings
import zipfile
from pathlib import Path

import pandas as pd
from PIL import Image, IptcImagePlugin

from pipeline import project

ID_LENGTH = 12
COLUMNS = ["sha256", "kind", "value"]
MIN_VALUE = 4  # shorter metadata strings ("N", "2.2") would match by chance

EXIF_IFD0 = {0x010E: "image description", 0x013B: "artist", 0x8298: "copyright", 0x0132: "date"}
EXIF_SUB = {0x9003: "capture date", 0x9004: "digitized date", 0xA420: "unique image ID", 0xA430: "owner name",
            0xA431: "body serial number", 0xA435: "lens serial number", 0x9286: "user comment",
            0xC62F: "camera serial number"}
GPS_COORDINATES = {2: "GPS latitude", 4: "GPS longitude"}  # as decimal degrees, 4 places (~10 m)
GPS_DATE = 29
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".mpo", ".png", ".tif", ".tiff", ".webp", ".heic", ".heif", ".bmp", ".gif"}
SIGNATURES = {b"Exif\x00\x00": "an EXIF block", b"http://ns.adobe.com/xap/1.0/": "an XMP packet",
              b"Photoshop 3.0\x00": "an IPTC (Photoshop) block"}
PNG_TEXT = {b"eXIf", b"tEXt", b"iTXt", b"zTXt", b"tIME"}
JPEG_KEPT = {0xE0: b"JFIF", 0xE2: b"ICC_PROFILE", 0xEE: b"Adobe"}  # decoding needs these; they name no one
TIFF_IMAGE_TAGS = {254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 274, 277, 278, 279, 280, 281, 282, 283,
                   284, 290, 291, 296, 317, 318, 319, 320, 322, 323, 324, 325, 338, 339, 340, 341, 530, 531, 532}
PIL_METADATA = ("exif", "xmp", "XML:com.adobe.xmp", "comment", "iptc", "photoshop")


class PrivacyLeak(RuntimeError):
    """Something identifying survived outside data/raw; the message names each file."""


def image_id(sha256: str) -> str:
    """The pseudonymous ID that names an image outside data/raw: derived from its content, not its name."""
    return sha256[:ID_LENGTH]


def _text(value) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else " " for ch in str(value).replace("\x00", ""))
    return " ".join(text.split())


def _degrees(value) -> str:
    d, m, s = (float(v) for v in value)
    return f"{d + m / 60 + s / 3600:.4f}"


def xmp_strings(packet) -> list[str]:
    """Text nodes and attribute values of an XMP packet, namespace addresses left out."""
    text = _text(packet) if isinstance(packet, bytes) else str(packet)
    values = re.findall(r">([^<>]+)<", text) + re.findall(r'=\s*"([^"]*)"', text)
    return [v.strip() for v in values if "://" not in v and len(v.strip()) >= MIN_VALUE]


def identifiers(path: Path) -> list[tuple[str, str]]:
    """(kind, value) of every identifying metadata value in an original's header: GPS, dates, serials,
    owner, XMP, IPTC and PNG text. Camera make and model are not here (the shift check keeps them)."""
    from pipeline.images import _register_formats

    _register_formats()
    found = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                exif = image.getexif()
                sub, gps = exif.get_ifd(0x8769), exif.get_ifd(0x8825)
                found += [(kind, _text(exif[tag])) for tag, kind in EXIF_IFD0.items() if tag in exif]
                found += [(kind, _text(sub[tag])) for tag, kind in EXIF_SUB.items() if tag in sub]
                found += [(kind, _degrees(gps[tag])) for tag, kind in GPS_COORDINATES.items() if tag in gps]
                if GPS_DATE in gps:
                    found.append(("GPS date", _text(gps[GPS_DATE])))
                xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
                found += [("XMP", v) for v in xmp_strings(xmp)] if xmp else []
                found += [("PNG text", _text(v)) for k, v in getattr(image, "text", {}).items() if "xmp" not in k]
                iptc = IptcImagePlugin.getiptcinfo(image) or {}
                for (record, _), value in iptc.items():
                    values = value if isinstance(value, list) else [value]
                    found += [("IPTC", _text(v)) for v in values if record == 2]
    except Exception:  # an unreadable header holds nothing Pillow (or any stage) can copy out
        return []
    dates = [(kind, v.split(" ")[0]) for kind, v in found if "date" in kind and " " in v]  # the day alone too
    return sorted({(k, v) for k, v in found + dates if len(v) >= MIN_VALUE})


def collect(raw_dir: Path, manifest: pd.DataFrame) -> pd.DataFrame:
    """The local-only identifiers table: one row per identifying value of each file validate listed."""
    rows = [{"sha256": sha, "kind": kind, "value": value}
            for path, sha in dict(zip(manifest.path, manifest.sha256)).items()
            for kind, value in identifiers(raw_dir / path)]
    return pd.DataFrame(rows, columns=COLUMNS).drop_duplicates()


# (a) metadata in images written outside data/raw

def jpeg_segments(data: bytes) -> list[str]:
    """Metadata segments of a JPEG before its image data, and any image beyond the first."""
    found, i = [], 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker in (0xFF, 0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 1 if marker == 0xFF else 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan: metadata comes before it
            break
        length = int.from_bytes(data[i + 2:i + 4], "big")
        payload = data[i + 4:i + 2 + length]
        if marker == 0xFE:
            found.append("a JPEG comment (COM)")
        elif 0xE0 <= marker <= 0xEF and not payload.startswith(JPEG_KEPT.get(marker, b"\xff")):
            found.append(f"a JPEG APP{marker - 0xE0} segment ({_text(payload[:12]) or 'binary'})")
        i += 2 + length
    if data.count(b"\xff\xd8\xff") > 1:  # never inside entropy-coded data: a second image (MPO frame, thumbnail)
        found.append("a second JPEG image (MPO frame or thumbnail)")
    return found


def png_chunks(data: bytes) -> list[str]:
    found, i = [], 8
    while i + 8 <= len(data):
        length, kind = int.from_bytes(data[i:i + 4], "big"), data[i + 4:i + 8]
        if kind in PNG_TEXT:
            found.append(f"a PNG {kind.decode()} chunk")
        i += 12 + length
    return found


def metadata_in_image(path: Path) -> list[str]:
    """What metadata an image file carries ([] when none)."""
    from pipeline.images import _register_formats

    data = path.read_bytes()
    found = [what for sig, what in SIGNATURES.items() if sig in data]
    if data.startswith(b"\xff\xd8"):
        found += jpeg_segments(data)
    elif data.startswith(b"\x89PNG\r\n\x1a\n"):
        found += png_chunks(data)
    _register_formats()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                found += [f"{key} in the header" for key in PIL_METADATA if image.info.get(key)]
                found += ["EXIF tags"] if len(image.getexif()) else []
                tags = set(getattr(image, "tag_v2", {}) or {}) - TIFF_IMAGE_TAGS
                found += [f"TIFF tags {sorted(tags)}"] if tags else []
    except Exception as err:
        found.append(f"an image Pillow cannot read ({type(err).__name__})")
    return list(dict.fromkeys(found))


def is_image(path: Path) -> bool:
    """An image file the pipeline wrote. Page assets (the Data Docs' bundled icons, under `static/`) are no
    one's photo: Great Expectations ships a GIF with a comment in it."""
    return path.suffix.lower() in IMAGE_SUFFIXES and "static" not in path.parts


# (b) names, paths and metadata values in what leaves

def _variants(text: str) -> set[bytes]:
    """How a string may appear in a file: UTF-8 (both Unicode normal forms), JSON-escaped, HTML-escaped."""
    out = set()
    for form in {unicodedata.normalize("NFC", text), unicodedata.normalize("NFD", text)}:
        out |= {form.encode(), json.dumps(form)[1:-1].encode(), html.escape(form).encode()}
    return out


def named_stem(stem: str) -> bool:
    """A stem worth searching on its own: long enough and carrying a number or several words ('referral
    2023-114', 'IMG_0231', 'Jane Doe'); single words ('truncated') also occur in ordinary text, so for
    them the whole file name ('truncated.jpg') is searched."""
    return len(stem) >= 6 and bool(re.search(r"[\d\s]", stem))


def needles(manifest: pd.DataFrame, table: pd.DataFrame) -> dict[bytes, str]:
    """Search bytes -> what they are ('file name of image 3fa2c1d0e9ab'), never the value itself."""
    out = {}
    for path, sha in zip(manifest.path, manifest.sha256):
        rel, what = Path(path), f"of image {image_id(sha)}"
        names = [(f"data/raw/{rel.as_posix()}", "path"), (rel.as_posix(), "path"), (rel.name, "file name")]
        names += [(rel.stem, "file name")] if named_stem(rel.stem) else []
        names += [(folder, "folder name") for folder in rel.parts[:-1] if named_stem(folder)]
        for text, kind in names:
            out.update(dict.fromkeys(_variants(text), f"the {kind} {what}"))
    for row in table.itertuples():
        out.update(dict.fromkeys(_variants(str(row.value)), f"the {row.kind} of image {image_id(row.sha256)}"))
    return out


DATA_URI = re.compile(rb"data:[\w/+.-]+;base64,[A-Za-z0-9+/=\s]+")  # embedded pictures: checked as images


def contents(path: Path) -> list[bytes]:
    """A file's name and bytes to search: a zip's members (model.keras) unpacked, embedded base64 pictures left out."""
    data, name = path.read_bytes(), path.name.encode()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
            return [name, data] + [archive.read(m) for m in members] + [m.encode() for m in members]
    return [name, DATA_URI.sub(b"", data) if b";base64," in data else data]


def found(needle: bytes, what: str, blob: bytes) -> bool:
    """A name counts where it starts a word: "21.png" is not found in "..._aug0_21.png" (an ID-named file)."""
    if needle not in blob:
        return False
    return "name" not in what or re.search(rb"(?<![\w-])" + re.escape(needle), blob) is not None


def automaton(search: dict[bytes, str]):
    """All needles in one Aho-Corasick automaton: a file is read once, not once per needle (a project's needles
    grow with its images, ~9 per image, and so do the files that leave). Bytes map 1:1 to latin-1 text."""
    import ahocorasick

    machine = ahocorasick.Automaton()
    for needle in search:
        machine.add_word(needle.decode("latin-1"), needle)
    machine.make_automaton()
    return machine


def present(machine, blob: bytes) -> set[bytes]:
    """Every needle occurring in blob, overlapping ones included."""
    return {needle for _, needle in machine.iter(blob.decode("latin-1"))}


def check(leaving: list[Path], images: list[Path], search: dict[bytes, str], root: Path) -> list[str]:
    """One line per finding: the file (relative to root) and what survived in it."""
    findings = []
    for path in images:
        findings += [f"{_rel(path, root)}: {what}" for what in metadata_in_image(path)]
    machine = automaton(search) if search else None
    for path in leaving if machine else []:
        blobs = contents(path)
        hits = {search[n] for n in set().union(*(present(machine, b) for b in blobs))
                if any(found(n, search[n], blob) for blob in blobs)}
        findings += [f"{_rel(path, root)}: {what}" for what in sorted(hits)]
    return findings


def _rel(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix() if path.resolve().is_relative_to(root.resolve()) else str(path)


def declared_outputs(root: Path) -> list[tuple[str, bool]]:
    """Every out, metric and plot dvc.yaml declares (foreach stages expanded), and whether it is local-only."""
    import yaml

    spec = yaml.safe_load((root / project.MARKER).read_text(encoding="utf-8")).get("stages", {})
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    out = []
    for stage in spec.values():
        keys = list(params["train"]["architectures"]) if "foreach" in stage else [None]
        body = stage.get("do", stage)
        for entry in [e for field in ("outs", "metrics", "plots") for e in body.get(field, [])]:
            name, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
            local = str((options or {}).get("desc", "")).startswith("local-only")
            out += [(name.replace("${key}", k) if k else name, local) for k in keys]
    return out


def project_files(root: Path, raw: Path) -> tuple[list[Path], list[Path]]:
    """(files that leave, image files outside data/raw) of a project: from dvc.yaml's outputs and the pixel cache."""
    from pipeline.pixels import cache_dir

    def files(name: str) -> list[Path]:
        path = root / name
        return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []

    declared = declared_outputs(root)
    leaving = [p for name, local in declared if not local for p in files(name)]
    images = [p for name, _ in declared for p in files(name) if is_image(p)]
    cache = cache_dir(raw)
    images += sorted(p for p in cache.rglob("*") if p.is_file() and is_image(p)) if cache.is_dir() else []
    return leaving, images


def run_check(root: Path, raw: Path, manifest: Path, table: Path) -> int:
    """The check on a project; raises PrivacyLeak naming every finding. Returns how many files it read."""
    listed = pd.read_csv(manifest, keep_default_na=False, dtype=str)
    if not table.is_file():  # fail closed: without it the check cannot know what to search for
        raise PrivacyLeak(f"privacy: {table} is missing: run validate (`dvc repro validate`) first")
    values = pd.read_csv(table, keep_default_na=False, dtype=str)
    leaving, images = project_files(root, raw)
    findings = check(leaving, images, needles(listed, values), root)
    if findings:
        raise PrivacyLeak(f"privacy: {len(findings)} identifiers survived outside {raw}:\n  - " + "\n  - ".join(findings))
    return len(set(leaving) | set(images))


def main(argv: list[str] | None = None) -> None:
    flags = project.stage_flags("validate")
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("raw", "manifest", "identifiers"):
        args.add_argument(f"--{name}", type=Path, default=project.relative(flags.get(name, "")))
    parsed = args.parse_args(argv)
    try:
        n = run_check(project.root(), parsed.raw, parsed.manifest, parsed.identifiers)
    except PrivacyLeak as err:
        raise SystemExit(str(err)) from None
    print(f"privacy: {n} files outside {parsed.raw} re-read: no metadata in images, no original name, path "
          f"or metadata value in anything that leaves")


if __name__ == "__main__":
    main()
