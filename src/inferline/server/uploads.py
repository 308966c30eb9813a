"""A multipart/form-data upload streamed straight to disk: the file part is written as it arrives, never
held in memory, and the upload stops with a 413 as soon as it passes the size limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from inferline.server.errors import HTTPError

MAX_FIELD_BYTES = 4096
"""Form fields other than the file (purpose) are short; a longer one is not what this API takes."""


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    """The file part's filename; None when the form carried no file."""
    num_bytes: int = 0


class _FormWriter:
    """The parser's callbacks: headers of each part, then its data to the file or to a field's value."""

    def __init__(self, destination: Path, max_bytes: int) -> None:
        self.destination = destination
        self.max_bytes = max_bytes
        self.upload = Upload()
        self.on_part_begin()

    def on_part_begin(self) -> None:
        self.headers: dict[str, bytes] = {}
        self.header_field, self.header_value = b"", b""
        self.name = ""
        self.value = bytearray()
        self.sink: IO[bytes] | None = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.decode("latin-1").lower()] = self.header_value
        self.header_field, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, disposition = parse_options_header(self.headers.get("content-disposition"))
        self.name = disposition.get(b"name", b"").decode()
        if b"filename" in disposition and self.name == "file":
            self.upload.filename = disposition[b"filename"].decode(errors="replace")
            self.sink = self.destination.open("wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.sink is None:
            self.value += data[start:end]
            if len(self.value) > MAX_FIELD_BYTES:
                message = f"form field {self.name!r} is over {MAX_FIELD_BYTES} bytes"
                raise HTTPError(400, message, "invalid_request_error", self.name)
            return
        self.sink.write(data[start:end])
        self.upload.num_bytes += end - start
        if self.upload.num_bytes > self.max_bytes:
            message = (
                f"file is over the limit of {self.max_bytes} bytes (batch.max_file_bytes): split it into "
                "several batches"
            )
            raise HTTPError(413, message, "invalid_request_error", "file")

    def on_part_end(self) -> None:
        if self.sink is not None:
            self.sink.close()
            self.sink = None
        else:
            self.upload.fields[self.name] = self.value.decode(errors="replace")

    def callbacks(self) -> dict[str, object]:
        names = ("part_begin", "header_field", "header_value", "header_end", "headers_finished")
        return {f"on_{name}": getattr(self, f"on_{name}") for name in (*names, "part_data", "part_end")}


async def receive_upload(
    content_type: str | None, chunks: AsyncIterator[bytes], destination: Path, max_bytes: int
) -> Upload:
    """Parse the form from `chunks`, writing its file part to `destination`."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        message = "upload files as multipart/form-data with the fields file and purpose"
        raise HTTPError(400, message, "invalid_request_error", "file")
    writer = _FormWriter(destination, max_bytes)
    parser = MultipartParser(boundary, writer.callbacks())  # type: ignore[arg-type]  # a TypedDict there
    try:
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as error:
        message = f"the multipart form could not be read: {error}"
        raise HTTPError(400, message, "invalid_request_error", "file") from None
    finally:
        if writer.sink is not None:
            writer.sink.close()
    return writer.upload
