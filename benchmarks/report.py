"""Writing a benchmark's table into BENCHMARKS.md, between markers the script owns."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, name: str, text: str, heading: str) -> None:
    """Replaces the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` in
    ``path``; the first time, appends ``heading`` and the marked block at the end."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    body = path.read_text()
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in body:
        head, rest = body.split(start, 1)
        body = head + block + rest.split(end, 1)[1]
    else:
        body = body.rstrip() + f"\n\n{heading.rstrip()}\n\n" + block + "\n"
    path.write_text(body)
