"""What reading a form upload holds beside its body, in process (tracemalloc):

    python3 -m bench.uploads [--mib 1 16 25]

A transcription or an image edit is read whole (`--max-body`), keyed by its file's digest and
written again for the upstream (`proxy.core.forms`). For each upload size this prints the most
memory the read allocated at once and what it still holds after, each over the upload's size:
the body itself is held by the request anyway, so 1.0x held (the form written for the
upstream) is the least a rewrite can keep.
"""

from __future__ import annotations

import argparse
import os
import tracemalloc

from proxy.core import forms

BOUNDARY = "bench-upload-boundary"


def upload(size: int) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="talk.mp3"\r\n'
        "Content-Type: audio/mpeg\r\n\r\n"
    ).encode()
    return head + os.urandom(size) + f"\r\n--{BOUNDARY}--\r\n".encode()


def measured(raw: bytes) -> tuple[int, int]:
    """Bytes allocated at the peak of one read, and still held once it returned."""
    tracemalloc.start()
    try:
        form = forms.read(raw, f"multipart/form-data; boundary={BOUNDARY}")
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert form.keyed["file"]["bytes"] > 0
    return peak, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, nargs="+", default=[1, 16, 25])
    args = parser.parse_args()
    print(f"{'upload':>8} {'peak':>10} {'held':>10}")
    for mib in args.mib:
        raw = upload(mib * 1024 * 1024)
        peak, held = measured(raw)
        print(f"{mib:>5} MiB {peak / len(raw):>9.2f}x {held / len(raw):>9.2f}x")


if __name__ == "__main__":
    main()
