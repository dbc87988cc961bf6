"""A form upload read as the key names it and written again as the upstream receives it (pure):
what the proxy writes reads back to the same key and the same bytes, whatever boundary, part
order of other names, or filename the client chose."""

from __future__ import annotations

from email.parser import BytesParser
from email.policy import HTTP

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core import forms
from proxy.errors import InvalidBody, InvalidHeader, ProxyError


def written(fields: list[tuple[str, str]], audio: bytes, boundary: str, name: str) -> bytes:
    out = b""
    for field, value in fields:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    out += (
        f"--{boundary}\r\nContent-Disposition: form-data; "
        f'name="file"; filename="{name}"\r\nContent-Type: audio/mpeg\r\n\r\n'
    ).encode()
    return out + audio + f"\r\n--{boundary}--\r\n".encode()


FIELDS = st.lists(
    st.tuples(
        st.sampled_from(["model", "language", "prompt", "response_format"]),
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    ),
    max_size=4,
    unique_by=lambda pair: pair[0],
)


@given(FIELDS, st.binary(max_size=300), st.sampled_from(["b1", "XyZ-9_q", "----x"]))
def test_what_the_proxy_writes_reads_back_to_the_same_key_and_bytes(
    fields: list[tuple[str, str]], audio: bytes, boundary: str
) -> None:
    raw = written(fields, audio, boundary, "Some Name.MP3")
    if f"--{boundary}".encode() in audio or any(f"--{boundary}" in v for _, v in fields):
        return  # the client's own form is ambiguous; nothing to compare
    form = forms.read(raw, f"multipart/form-data; boundary={boundary}")
    again = forms.read(form.body, form.content_type)
    assert again == form
    assert form.keyed["file"]["bytes"] == len(audio) and form.keyed["file"]["extension"] == ".mp3"
    for field, value in fields:
        assert form.keyed[field] == value
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + form.content_type.encode() + b"\r\n\r\n" + form.body
    )  # another reader reads the same parts
    parts = {p.get_param("name", header="content-disposition"): p for p in message.iter_parts()}
    assert parts["file"].get_payload(decode=True) == audio
    assert parts["file"].get_filename() == "upload.mp3"


def test_the_clients_boundary_and_filename_are_not_keyed() -> None:
    one = forms.read(
        written([("model", "m")], b"abc", "one", "a.mp3"), "multipart/form-data; boundary=one"
    )
    two = forms.read(
        written([("model", "m")], b"abc", "two", "b.MP3"), 'multipart/form-data; boundary="two"'
    )
    assert one == two


@pytest.mark.parametrize(
    "content_type", ["multipart/form-data", "application/json", "multipart/mixed; boundary=b1", ""]
)
def test_only_a_form_with_its_boundary_is_read(content_type: str) -> None:
    with pytest.raises(InvalidHeader):
        forms.read(written([], b"x", "b1", "a.mp3"), content_type)


def test_a_form_of_more_parts_than_any_upload_names_is_refused() -> None:
    fields = [(f"f{n}", "x") for n in range(forms.MAX_PARTS)]
    with pytest.raises(InvalidBody):
        forms.read(written(fields, b"x", "b1", "a.mp3"), "multipart/form-data; boundary=b1")


def test_a_number_no_json_can_hold_is_keyed_as_the_text_it_is() -> None:
    """Read as a float, `1e999` is infinite, which JSON writes as null: keyed as absent, its
    answer would be stored as the default `n`'s, while the upstream read something else."""
    sent = forms.read(
        written([("n", "1e999"), ("temperature", "0.50")], b"x", "b1", "a.png"),
        "multipart/form-data; boundary=b1",
    )
    assert sent.keyed["n"] == "1e999" and sent.keyed["temperature"] == 0.5


@given(st.binary(max_size=600), st.sampled_from(["b1", "x"]))
def test_any_bytes_are_a_form_that_reads_back_or_a_400(raw: bytes, boundary: str) -> None:
    """Whatever a client sends, the reader refuses it with one of the proxy's 400s or reads a
    form whose written bytes read back to the same form: never another exception (a 500)."""
    framed = f"--{boundary}\r\n".encode() + raw + f"\r\n--{boundary}--\r\n".encode()
    for body in (raw, framed):
        try:
            form = forms.read(body, f"multipart/form-data; boundary={boundary}")
        except ProxyError as exc:
            assert exc.status == 400
            continue
        assert forms.read(form.body, form.content_type) == form


HEADERS = st.sampled_from(
    [
        'Content-Disposition: form-data; name="model"',
        'Content-Disposition: form-data; name="file"; filename="a.mp3"',
        'Content-Disposition: form-data; name="file"; filename="a\\".mp3"',
        'Content-Disposition: form-data; name="n"',
        "Content-Disposition: form-data; name*=utf-8''model",
        "Content-Disposition: form-data; name=model; name=prompt",
        "Content-Disposition: attachment; name=x",
        "Content-Type: audio/mpeg",
        "Content-Type: text/plain; charset=latin-1",
        "Content-Transfer-Encoding: base64",
        "X-Other: 1",
        "Content-Disposition:",
    ]
)
PART = st.tuples(st.lists(HEADERS, max_size=3), st.binary(max_size=40))


@given(st.lists(PART, max_size=5))
def test_parts_with_any_headers_are_a_form_that_reads_back_or_a_400(
    parts: list[tuple[list[str], bytes]],
) -> None:
    raw = b"".join(
        b"--b1\r\n" + "\r\n".join(headers).encode() + b"\r\n\r\n" + data + b"\r\n"
        for headers, data in parts
    )
    try:
        form = forms.read(raw + b"--b1--\r\n", "multipart/form-data; boundary=b1")
    except ProxyError as exc:
        assert exc.status == 400
        return
    assert forms.read(form.body, form.content_type) == form
