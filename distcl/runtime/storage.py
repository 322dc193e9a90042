"""Run storage: a local folder or an s3:// / gs:// URI, read and written through pyarrow's
filesystems, as Ray Train itself reads them (checkpoints, run records, sweep records)."""

from __future__ import annotations

from pathlib import Path


def filesystem(path: str):
    """(pyarrow filesystem, base path) for a local folder or an s3:// / gs:// URI, as Ray uses."""
    import pyarrow.fs

    if "://" not in path:
        path = str(Path(path).resolve())
    return pyarrow.fs.FileSystem.from_uri(path)


def storage_root(path: str) -> str:
    """A local folder as an absolute path; an s3:// / gs:// URI exactly as given (a `Path`
    would turn `s3://bucket/x` into `CWD/s3:/bucket/x`)."""
    return path.rstrip("/") if "://" in path else str(Path(path).resolve())


def read_text(path: str) -> str:
    """A file's text from a local path or a storage URI (through pyarrow, as Ray does)."""
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def write_text(path: str, text: str) -> None:
    """Write `text` to a local path or a storage URI, creating the folder."""
    fs, p = filesystem(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(text.encode())
