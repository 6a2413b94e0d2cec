"""Reading the photos of one request: multipart fields named `file`, or one raw image as
the body, streamed with a size limit, each failure a 4xx with a one-line reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import PurePath

from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from pawnet.errors import one_line

RAW_TYPES = ("image/", "application/octet-stream")


class TooLarge(Exception):
    """The upload passed the size limit while it was being read."""


# Answered before the body is read to its end, so the connection cannot carry another
# request; saying so lets the client open a new one instead of writing into a closed one.
_BEFORE_THE_BODY = (400, 401, 408, 413, 415)


def fail(status: int, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
    if status in _BEFORE_THE_BODY:
        headers = {"Connection": "close", **(headers or {})}
    return HTTPException(status_code=status, detail=one_line(detail), headers=headers)


def busy(reason: str) -> HTTPException:
    """503 with Retry-After: the service cannot take this request now, but may soon."""
    return fail(503, f"busy: {reason}", {"Retry-After": "1"})


def upload_name(name: str | None, index: int) -> str:
    """The name to report for an upload: the client's file name, shown back, never opened."""
    base = PurePath((name or "").replace("\\", "/")).name.strip()
    return (base or f"file{index + 1}")[:200]


async def read_body(request: Request, max_bytes: int) -> AsyncIterator[bytes]:
    """The request body in chunks, stopping with TooLarge as soon as it passes the limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(int(declared))
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise TooLarge(received)
        yield chunk


async def _multipart(request: Request, max_bytes: int, max_files: int) -> list[tuple[str, bytes]]:
    parser = MultiPartParser(request.headers, read_body(request, max_bytes),
                             max_files=max_files, max_fields=max_files)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if str(exc).startswith("Too many"):
            raise fail(413, f"too many files or fields in one request; allowed: "
                            f"{max_files}. Try: several requests") from None
        raise fail(400, f"malformed multipart body ({exc})") from None
    try:
        unknown = sorted({k for k in form if k != "file"})
        if unknown:
            raise fail(400, f"unknown form field {unknown[0]!r}; allowed: file "
                            "(repeatable, one image each)")
        values = form.getlist("file")
        if not values:
            raise fail(400, "no files: send one or more multipart fields named file")
        uploads = []
        for i, value in enumerate(values):
            if not isinstance(value, UploadFile):
                raise fail(400, "the field 'file' must be a file upload, not text")
            uploads.append((upload_name(value.filename, i), await value.read()))
        return uploads
    finally:
        await form.close()


async def read_uploads(request: Request, max_bytes: int, max_files: int
                       ) -> list[tuple[str, bytes]]:
    """(name, bytes) of each photo in the request.

    Raises:
        HTTPException: 400, 413 or 415 with the reason.
        TooLarge: the body passed `max_bytes`.
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return await _multipart(request, max_bytes, max_files)
    if kind and not kind.startswith(RAW_TYPES):
        raise fail(415, f"unsupported content type {kind!r}; allowed: multipart/form-data "
                        "(fields named file), image/*, application/octet-stream. "
                        "Try: curl -F file=@photo.jpg")
    body = b"".join([chunk async for chunk in read_body(request, max_bytes)])
    if not body:
        raise fail(400, "empty request body: send one image as the body, "
                        "or multipart fields named file")
    return [("<bytes>", body)]
