"""Try a photo: the champion's probabilities, its refer decision and the Grad-CAM overlay for one
uploaded image, held in memory only (nothing uploaded is written anywhere).

The photo is decoded once, as serving decodes it (`images.model_input_and_image`: a large JPEG at a
DCT scale inside libjpeg, so a 12 MP photo costs a 1/64 decode); the answer is
`pipeline.inference.answer` and the map `pipeline.predict.explain` (the probabilities and the Grad-CAM of
the most probable class from one pass) / `blend`, the code `pipeline.predict` and evaluate run.
"""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from pipeline.images import UnusableImage, model_input_and_image
from pipeline.inference import Classifier, answer
from pipeline.predict import blend, explain

OVERLAY_SIDE = 480  # the overlay is sent inline (a data: URI), at most this wide or high


class Refused(ValueError):
    """The upload cannot be answered; the message is for the person who sent it."""


def check_size(size: int, max_bytes: int) -> None:
    if size == 0:
        raise Refused("the file is empty")
    if size > max_bytes:
        raise Refused(f"the file is {size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:g} MB")


def try_photo(classifier: Classifier, data: bytes, max_pixels: int) -> dict:
    """{'class', 'refer', 'refer_score', 'probabilities', 'overlay' (PNG as base64)}; Refused with a reason."""
    try:
        x, rgb = model_input_and_image(data, classifier.size, max_pixels)
    except (UnusableImage, OSError) as err:
        raise Refused(f"this file cannot be read as a photo: {err}") from None
    if classifier.keras_model is None:  # a TFLite model: probabilities only
        return answer(classifier, np.asarray(classifier.predict(x[None]))[0])
    probs, cam = explain(classifier.keras_model, x)  # the map is the most probable class's: result["class"]
    result = answer(classifier, probs)
    rgb.thumbnail((OVERLAY_SIDE, OVERLAY_SIDE), Image.Resampling.BILINEAR)  # in place: no copy of a 12 MP decode
    buffer = io.BytesIO()
    blend(rgb, cam).save(buffer, format="PNG", compress_level=1)
    return {**result, "overlay": base64.b64encode(buffer.getvalue()).decode()}


async def upload_of(request, limit: int) -> tuple[str, bytes]:
    """(csrf, file bytes) of the try-a-photo form, read in memory only (never spooled to disk) and
    refused as soon as the body passes the limit."""
    from python_multipart import create_form_parser

    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit + 64_000:  # the form's other fields and boundaries fit in far less
            raise Refused(f"the file is over the {limit / 1e6:g} MB limit")
    fields, files = {}, []
    headers = {"Content-Type": request.headers.get("content-type", "")}
    parser = create_form_parser(headers, lambda f: fields.update({f.field_name: f.value}), files.append,
                                config={"MAX_MEMORY_FILE_SIZE": len(body) + 1})
    try:
        parser.write(bytes(body))
        parser.finalize()
    except Exception:
        raise Refused("the upload was not a form with a photo in it") from None
    data = b"".join(f.file_object.getvalue() for f in files if f.field_name == b"photo")
    return (fields.get(b"csrf") or b"").decode(), data
