"""Phone photos as a hospital folder holds them: GPS, capture dates, a serial number, XMP, IPTC, an
EXIF thumbnail and PHI-looking file names, in JPEG, MPO, HEIC, PNG (eXIf chunk) and TIFF.
`plant(raw)` writes them into `raw/<class>/` and returns the values no file outside raw may hold."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

GPS = {1: "N", 2: (40.0, 25.0, 12.5), 3: "W", 4: (3.0, 42.0, 7.25)}  # 40.4201 N, 3.7020 W
CAPTURED = "2023:05:14 10:22:31"
SERIAL = "SN-77881299"
OWNER = "Maria Example-Owner"
XMP_CREATOR = "Dr Hidden Planted-Person"
IPTC_CAPTION = "Patient Jane Q Sample MRN 004417"
PNG_COMMENT = "ward 7 bed 12 Jane Roe"
NAMES = {  # file -> class; the JPEG is also filed under a second class: a label conflict, quarantined
    "referral 2023-114 Jane Doe.jpg": "cancer",
    "MRN 00412 Smith.mpo": "precancer",
    "patient 7781 scan.heic": "normal",
    "chart 2024-02-01 Roe.png": "cancer",
    "visit 2023-11-30 Poe.tiff": "precancer",
}
CONFLICT_COPY = ("normal", "referral 2023-114 Jane Doe (copy).jpg")


def exif(thumbnail: bytes | None = None) -> bytes:
    """An EXIF block with the camera, a capture date, serial, owner and GPS; and an IFD1 JPEG thumbnail."""
    block = Image.Exif()
    block[0x010F], block[0x0110], block[0x0132] = "Planted", "Planted PhoneCam 9", CAPTURED
    block.get_ifd(0x8769).update({0x9003: CAPTURED, 0xA431: SERIAL, 0xA430: OWNER})
    block.get_ifd(0x8825).update(GPS)
    data = block.tobytes()  # b"Exif\0\0" + a little-endian TIFF structure; IFD0 first, at offset 8
    if thumbnail is None:
        return data
    tiff = bytearray(data[6:])
    entries = int.from_bytes(tiff[8:10], "little")
    next_ifd = 10 + 12 * entries  # IFD0's pointer to the next IFD: IFD1, appended at the end
    ifd1 = len(tiff)
    tiff[next_ifd:next_ifd + 4] = ifd1.to_bytes(4, "little")
    start = ifd1 + 2 + 2 * 12 + 4
    tiff += (2).to_bytes(2, "little")
    for tag, value in ((0x0201, start), (0x0202, len(thumbnail))):  # JPEGInterchangeFormat(Length), LONG
        tiff += tag.to_bytes(2, "little") + (4).to_bytes(2, "little") + (1).to_bytes(4, "little") + value.to_bytes(4, "little")
    tiff += bytes(4) + thumbnail
    return b"Exif\x00\x00" + bytes(tiff)


def xmp() -> bytes:
    return (b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
            b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
            b'xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:creator><rdf:Seq><rdf:li>'
            + XMP_CREATOR.encode() + b"</rdf:li></rdf:Seq></dc:creator></rdf:Description></rdf:RDF></x:xmpmeta>"
            b'<?xpacket end="w"?>')


def iptc_segment() -> bytes:
    """A JPEG APP13 segment: Photoshop 3.0 image resource 0x0404 holding an IPTC caption (2:120)."""
    value = IPTC_CAPTION.encode()
    record = b"\x1c\x02\x78" + len(value).to_bytes(2, "big") + value
    resource = b"8BIM\x04\x04\x00\x00" + len(record).to_bytes(4, "big") + record + b"\x00" * (len(record) % 2)
    payload = b"Photoshop 3.0\x00" + resource
    return b"\xff\xed" + (len(payload) + 2).to_bytes(2, "big") + payload


def photo(seed: int, size=(160, 120)) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    return Image.fromarray(base).resize(size, Image.Resampling.BILINEAR)


def thumbnail_jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.resize((32, 24)).save(out, format="JPEG", quality=60)
    return out.getvalue()


def plant(raw: Path, seed: int = 70) -> dict[str, list]:
    """The planted files in raw/<class>/. Returns {'values': metadata strings, 'names': file names and stems,
    'thumbnails': the EXIF thumbnails' bytes}: none of them may appear outside raw (identifiers.csv aside)."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    thumbs, files = [], {}
    for i, (name, label) in enumerate(NAMES.items()):
        image, target = photo(seed + i), raw / label / name
        target.parent.mkdir(parents=True, exist_ok=True)
        thumb = thumbnail_jpeg(image)
        suffix = target.suffix
        if suffix == ".jpg":
            out = io.BytesIO()
            image.save(out, format="JPEG", quality=90, exif=exif(thumb), xmp=xmp())
            data = out.getvalue()
            target.write_bytes(data[:2] + iptc_segment() + data[2:])  # IPTC right after SOI
            thumbs.append(thumb)
        elif suffix == ".mpo":  # a phone's two-frame JPEG, EXIF (and thumbnail) on the first frame
            image.save(target, format="MPO", save_all=True, append_images=[photo(seed + 50)], exif=exif(thumb), xmp=xmp())
            thumbs.append(thumb)
        elif suffix == ".heic":
            image.save(target, format="HEIF", exif=exif(), xmp=xmp(), quality=90)
        elif suffix == ".png":
            info = PngInfo()
            info.add_text("Comment", PNG_COMMENT)
            image.save(target, format="PNG", exif=exif(), pnginfo=info)  # the EXIF goes in an eXIf chunk
        else:
            tags = Image.Exif()
            tags.update({0x010E: PNG_COMMENT, 0x0132: CAPTURED, 0x013B: OWNER, 700: xmp()})
            image.save(target, format="TIFF", tiffinfo=tags)
        files[name] = target
    copy = raw / CONFLICT_COPY[0] / CONFLICT_COPY[1]
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(files["referral 2023-114 Jane Doe.jpg"], copy)
    names = [n for n in list(NAMES) + [CONFLICT_COPY[1]]] + [Path(n).stem for n in list(NAMES) + [CONFLICT_COPY[1]]]
    values = [CAPTURED, CAPTURED.split()[0], SERIAL, OWNER, XMP_CREATOR, IPTC_CAPTION, PNG_COMMENT, "40.4201", "3.7020"]
    return {"values": values, "names": names, "thumbnails": thumbs}
