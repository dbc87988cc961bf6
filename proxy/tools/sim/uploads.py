"""Form uploads as the simulator reads them: with the standard library's MIME parser, another
reader than the proxy's, so that what the proxy writes is checked by a second."""

from __future__ import annotations

from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP

from proxy.tools.sim.state import BadRequest


def read_form(raw: bytes, content_type: str) -> tuple[dict[str, str], dict[str, list[bytes]]]:
    """A form's text fields, and its files by the name of their part (in order)."""
    if not content_type.startswith("multipart/form-data"):
        raise BadRequest("The body must be multipart/form-data.")
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw
    )
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise BadRequest("The body is not a multipart form.")
    fields: dict[str, str] = {}
    files: dict[str, list[bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(data, bytes):
            raise BadRequest("Each part must be named form-data.")
        if part.get_filename() is not None:
            files.setdefault(name, []).append(data)
        else:
            fields[name] = data.decode()
    return fields, files
