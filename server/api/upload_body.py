"""Reading an upload's multipart/form-data body: the part named `file` is streamed straight into an
`IncomingFile` (a private temp file, size-limited, hashed) as it arrives, so nothing is spooled or held
in memory first, and a part sent without a file name is a file all the same."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from server.uploads import IncomingFile, UploadRejected

FIELD = "file"
# The OpenAPI description of the body this reader accepts (the route declares it by hand because it
# reads the request itself).
REQUEST_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "required": [FIELD],
        "properties": {FIELD: {
            "type": "string", "format": "binary",
            "description": "weights (.pt/.pth/.th/.bin state dict, or .safetensors) or an .onnx model; without a "
                           "file name (or with one that has no suffix) the type is told from the contents",
        }},
    }}},
}


@dataclass
class _Parts:
    """The parser's callbacks: which part is being read and where its bytes go."""

    incoming: IncomingFile
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: bytes = b""
    value: bytes = b""
    in_file: bool = False
    found: bool = False
    filename: str | None = None

    def on_part_begin(self) -> None:
        self.headers, self.in_file = {}, False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.name.strip().lower()] = self.value.strip()
        self.name = self.value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        if options.get(b"name") == FIELD.encode():
            if self.found:
                raise UploadRejected("the body has more than one `file` part; upload one file per request")
            self.found = self.in_file = True
            raw = options.get(b"filename")
            self.filename = raw.decode("utf-8", "replace") if raw else None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.incoming.write(data[start:end])

    def on_part_end(self) -> None:
        self.in_file = False


async def receive_upload(request: Request, uploads_dir: Path, *, max_bytes: int) -> tuple[IncomingFile, str | None]:
    """The `file` part of a multipart/form-data request, on disk, and its file name (None if sent without).
    UploadRejected when the body is not such a request; UploadTooLarge past `max_bytes`."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise UploadRejected("send the file as multipart/form-data in a part named `file` "
                             "(curl -F file=@weights.pt ...)")
    incoming = IncomingFile(uploads_dir, max_bytes=max_bytes)
    parts = _Parts(incoming)
    parser = MultipartParser(boundary, {
        "on_part_begin": parts.on_part_begin, "on_part_data": parts.on_part_data, "on_part_end": parts.on_part_end,
        "on_header_field": parts.on_header_field, "on_header_value": parts.on_header_value,
        "on_header_end": parts.on_header_end, "on_headers_finished": parts.on_headers_finished,
    })
    try:
        async for chunk in request.stream():
            if chunk:
                # file writes off the event loop: other requests keep being answered during a big upload
                await run_in_threadpool(parser.write, chunk)
        parser.finalize()
    except MultipartParseError as exc:
        incoming.discard()
        raise UploadRejected(f"the body is not valid multipart/form-data ({exc}); send the file in a part named "
                             "`file`") from None
    except BaseException:
        incoming.discard()
        raise
    if not parts.found:
        incoming.discard()
        raise UploadRejected("the body has no part named `file`; send the file as multipart/form-data field `file`")
    return incoming, parts.filename
