"""Text encodings of the line-based inputs (CSV/TSV, JSON lines, sequences).

The readers work on UTF-8 (Polars). :func:`decode_text` makes every text input UTF-8 without
losing a line or changing a line number:

* a file that is valid in its encoding and already UTF-8 is read in place (one streaming check);
* any other file is transcoded, block by block, into a UTF-8 copy in a temporary folder;
* a line that is not valid in the encoding is copied with the bad bytes written as ``\\xff`` escapes
  and reported (line number, byte offset of the first bad byte in the file, the bytes): the reader
  quarantines that row with the reason, so one bad byte costs one row, never the whole file.

Only encodings that write the ASCII punctuation the readers split on as ASCII bytes are accepted
(UTF-8, GBK/GB18030, Big5, Shift-JIS, Latin-1, cp1252, ...); UTF-16/32 are refused with a hint.

Compressed text inputs (gzip, bzip2, xz: public logs often ship as ``events.csv.gz``) are known by
their first bytes, whatever their name, and always go through the UTF-8 copy, decompressed as a
stream by the standard library; line numbers and byte offsets are those of the decompressed text.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import lzma
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from shopformer.data import schema as S
from shopformer.data.options import DataValidationError

UNDECODABLE = "_undecodable"  # the reason for a line that is not valid in the input's encoding
_BLOCK = 1 << 22  # bytes read at a time (cut at the last newline)
_ASCII_PROBE = "\n\r\t ,;|\"'{}[]:0123456789abcxyzABCXYZ_-."
Opener = Callable[[str], io.BufferedIOBase]
# (first bytes, name, the file class that reads it decompressed): what Python reads without another dependency
_COMPRESSIONS: tuple[tuple[bytes, str, Opener], ...] = (
    (b"\x1f\x8b", "gzip", gzip.GzipFile),
    (b"BZh", "bzip2", bz2.BZ2File),
    (b"\xfd7zXZ\x00", "xz", lzma.LZMAFile),
)
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz")  # dropped before the extension names the format


@dataclass(frozen=True)
class DecodedText:
    """Where to read a text input as UTF-8, and its undecodable lines (``row``, reason)."""

    path: str
    undecodable: pl.DataFrame

    def reason(self) -> pl.Expr:
        """Per line (by ``row``): the decoding error, or null."""
        if self.undecodable.height == 0:
            return pl.lit(None, pl.String)
        bad = self.undecodable
        return pl.col(S.ROW).replace_strict(bad[S.ROW], bad[UNDECODABLE], default=None, return_dtype=pl.String)


def check_encoding(name: str) -> str:
    """The codec's canonical name; a clear error for unknown or non-ASCII-compatible encodings."""
    try:
        info = codecs.lookup(name)
    except LookupError:
        raise DataValidationError(f"unknown encoding {name!r} (e.g. utf-8, gbk, gb18030, latin-1, cp1252)") from None
    try:
        compatible = _ASCII_PROBE.encode(info.name) == _ASCII_PROBE.encode("ascii")
    except UnicodeError:
        compatible = False
    if not compatible:
        raise DataValidationError(
            f"encoding {name!r} is not supported: line-based files need an ASCII-compatible encoding "
            "(utf-8, gbk, gb18030, big5, shift_jis, latin-1, cp1252, ...); convert UTF-16/32 files with iconv first"
        )
    return info.name


def compression(path: str) -> tuple[str, Opener] | None:
    """(name, opener) of a compressed file, known by its first bytes; None for a plain one."""
    with open(path, "rb") as f:
        head = f.read(6)
    return next(((name, fn) for magic, name, fn in _COMPRESSIONS if head.startswith(magic)), None)


def _blocks(f: io.BufferedIOBase) -> Iterator[tuple[int, bytes]]:
    """(byte offset, block) pairs; each block ends with a newline (or the end of the file)."""
    offset, carry = 0, b""
    while data := f.read(_BLOCK):
        data = carry + data
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            carry = data
            continue
        yield offset, data[:cut]
        offset, carry = offset + cut, data[cut:]
    if carry:
        yield offset, carry


def _lines(block: bytes) -> Iterator[bytes]:
    """The block's lines, each with its newline (a line split on ``\\n`` only, as Polars does)."""
    start = 0
    while start < len(block):
        end = block.find(b"\n", start)
        end = len(block) if end < 0 else end + 1
        yield block[start:end]
        start = end


def _is_valid(path: str, codec: str) -> bool:
    with open(path, "rb") as f:
        for _, block in _blocks(f):
            try:
                block.decode(codec)
            except UnicodeDecodeError:
                return False
    return True


def _reason(err: UnicodeDecodeError, offset: int, codec: str) -> str:
    bad = " ".join(f"0x{b:02x}" for b in err.object[err.start : err.end])
    hint = "pass --encoding, e.g. gbk or latin-1" if codec == "utf-8" else "check --encoding"
    return f"not valid {codec} text: byte(s) {bad} at byte offset {offset} ({hint})"


def _transcode(path: str, codec: str, out: Path, opener: Opener | None = None) -> pl.DataFrame:
    """Write ``path`` (read through ``opener``, a decompressor) as UTF-8 to ``out``; returns the undecodable
    lines (row, reason)."""
    rows: list[int] = []
    reasons: list[str] = []
    line_no = 1
    with opener(path) if opener else open(path, "rb") as src, open(out, "wb") as dst:
        for offset, block in _blocks(src):
            try:
                whole: str | None = block.decode(codec)
            except UnicodeDecodeError:
                whole = None
            if whole is not None:
                dst.write(block if codec == "utf-8" else whole.encode("utf-8"))
                line_no += block.count(b"\n")
                continue
            pos = offset
            for line in _lines(block):
                try:
                    text = line.decode(codec)
                except UnicodeDecodeError as err:
                    text = line.decode(codec, errors="backslashreplace")
                    rows.append(line_no)
                    reasons.append(_reason(err, pos + err.start, codec))
                dst.write(text.encode("utf-8"))
                pos += len(line)
                line_no += 1
    return pl.DataFrame({S.ROW: rows, UNDECODABLE: reasons}, schema={S.ROW: pl.Int64, UNDECODABLE: pl.String})


def decode_text(path: str, encoding: str, workdir: Path, name: str) -> DecodedText:
    """``path`` readable as UTF-8: in place when it already is valid, uncompressed UTF-8, else a
    (decompressed) copy in ``workdir``."""
    codec = check_encoding(encoding)
    none = pl.DataFrame(schema={S.ROW: pl.Int64, UNDECODABLE: pl.String})
    packed = compression(path)
    if packed is None and codec == "utf-8" and _is_valid(path, codec):
        return DecodedText(path, none)
    out = workdir / f"{name}.utf8"
    if packed is None:
        return DecodedText(str(out), _transcode(path, codec, out))
    try:
        return DecodedText(str(out), _transcode(path, codec, out, packed[1]))
    except (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile, OSError) as err:  # truncated or corrupt
        raise DataValidationError(f"{path}: cannot read it as {packed[0]}: {err}") from None
