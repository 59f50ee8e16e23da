"""What the service reads from a request and the shape of what it answers when it cannot.

The routes read their uploads themselves (see serving/service.py): a multipart body parsed with
a bound on its bytes and files, each file decoded into an upright RGB array within a pixel
budget per request; the static pages' paths checked (`static_file`). Every bad input raises
`ApiError`, which the app turns into a 4xx JSON `{"error", "detail", ...,
"model_version"}` (`error_response`).
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse
from PIL import Image, ImageOps
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")


class ApiError(Exception):
    """A request the service cannot answer; becomes a JSON `{"error", "detail", ...}`."""

    def __init__(self, status: int, error: str, detail: str, **extra: object) -> None:
        super().__init__(f"{error}: {detail}")
        self.status, self.error, self.detail, self.extra = status, error, detail, extra


def error_response(
    status: int,
    error: str,
    detail: str,
    model_version: int | None,
    headers: dict | None = None,
    **extra: object,
) -> JSONResponse:
    """The JSON answer to a request the service cannot answer, naming the served version."""
    body = {"error": error, "detail": detail, **extra, "model_version": model_version}
    return JSONResponse(body, status_code=status, headers=headers)


def multipart_body(field: str, max_items: int) -> dict:
    """OpenAPI of a multipart upload of image files in `field` (the routes read it themselves)."""
    binary = {"type": "string", "format": "binary"}
    files = {"type": "array", "items": binary, "minItems": 1, "maxItems": max_items}
    schema = {"type": "object", "required": [field], "properties": {field: files}}
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "upload too large", f"the request body exceeds {limit} bytes")


async def _bounded(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        yield chunk


async def read_files(request: Request, field: str, max_files: int, limit: int) -> list[bytes]:
    """The bytes of each multipart file in `field` (1 to `max_files`), at most `limit` in all."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        raise ApiError(
            415, "unsupported media type",
            f"expected multipart/form-data with a file field '{field}', "
            f"got {content_type or 'no content type'}",
        )  # fmt: skip
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    parser = MultiPartParser(
        request.headers, _bounded(request.stream(), limit), max_files=max_files, max_fields=8
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, "bad multipart body", exc.message) from None
    except ClientDisconnect:  # counted as nginx does, not as a failure of the service
        detail = "the client left before its upload arrived"
        raise ApiError(499, "client closed request", detail) from None
    try:
        uploads = form.getlist(field)
        if not uploads:
            fields = ", ".join(f"'{key}'" for key in form.keys()) or "none"
            raise ApiError(
                400, "missing field", f"expected a file field '{field}'; fields sent: {fields}"
            )
        if not all(isinstance(upload, UploadFile) for upload in uploads):
            raise ApiError(
                400, "not a file", f"field '{field}' must be a file upload, not a text value"
            )
        files = [await upload.read() for upload in uploads]
    finally:
        await form.close()
    for index, data in enumerate(files):
        if not data:
            raise ApiError(
                400, "empty file", f"file {index} in field '{field}' has no bytes", index=index
            )
    return files


class PixelBudget:
    """The decoded pixels one request may hold, all its images together; `take` refuses an image
    that would pass the limit before it is decoded."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self, width: int, height: int) -> None:
        if self.used + width * height > self.limit:
            raise ApiError(
                413, "request too large",
                f"its images hold more than {self.limit} decoded pixels together (width x "
                f"height: {self.used} before this {width}x{height} image); send fewer or smaller "
                "images (the service's limit is EMOFLOW_SERVE_MAX_REQUEST_PIXELS)",
                limit=self.limit,
            )  # fmt: skip
        self.used += width * height


def decode_image(data: bytes, max_pixels: int, budget: PixelBudget | None = None) -> np.ndarray:
    """Image bytes -> (H, W, 3) uint8 RGB, upright per its EXIF orientation; its pixels are
    counted against the request's `budget` before it is decoded."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            if image.width * image.height > max_pixels:
                raise ApiError(
                    413, "image too large",
                    f"{image.width}x{image.height} pixels; at most {max_pixels} are accepted",
                )  # fmt: skip
            if budget is not None:
                budget.take(image.width, image.height)
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # no copy of an upright one
            if image.mode.startswith("I"):  # 16-bit grey: Pillow's convert would clip to 255
                image = Image.fromarray((np.asarray(image) >> 8).clip(0, 255).astype(np.uint8))
            return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except ApiError:
        raise
    except Image.DecompressionBombError as exc:
        raise ApiError(413, "image too large", str(exc)) from None
    except Image.UnidentifiedImageError:
        raise ApiError(
            400, "not an image", f"the upload is not a {', '.join(IMAGE_FORMATS)} image"
        ) from None
    except Exception as exc:  # anything Pillow raises while decoding untrusted bytes
        raise ApiError(400, "unreadable image", f"{type(exc).__name__}: {exc}") from None


def decode_images(files: list[bytes], max_pixels: int, budget: PixelBudget) -> list[np.ndarray]:
    """Every image decoded, or the first bad one's error naming its index."""
    images = []
    for index, data in enumerate(files):
        try:
            images.append(decode_image(data, max_pixels, budget))
        except ApiError as exc:
            raise ApiError(
                exc.status, exc.error, f"image {index}: {exc.detail}", **exc.extra, index=index
            ) from None
    return images


def static_file(folder: Path, path: str, what: str) -> FileResponse:
    """The file `path` under `folder` (its index.html for an empty path), never outside it. A
    path that is not a plain relative name is a 400, an unknown one a 404; neither names a
    folder of this machine."""
    if "\x00" in path or "\\" in path or path.startswith("/") or ".." in path.split("/"):
        raise ApiError(
            400, "bad path",
            f"expected a relative {what} name without '..', '\\', NUL or a leading '/', "
            f"got {path!r}",
        )  # fmt: skip
    root = folder.resolve()
    try:
        target = (root / (path or "index.html")).resolve()
        found = target.is_relative_to(root) and target.is_file()
    except (OSError, ValueError):  # a name too long for the file system, say
        found = False
    if not found:
        raise ApiError(404, "not found", f"no {what} named {path!r}")
    return FileResponse(target)
