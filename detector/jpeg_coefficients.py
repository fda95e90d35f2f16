"""The quantised DCT coefficients a JPEG file stores, read from the file itself (ITU-T T.81).

Decoding to pixels rounds samples, upsamples chroma and converts colour, so coefficients re-derived from the decoded
image come out one quantisation step off here and there (up to 9 % of them at quality 90, 4:2:0). The file's own
integers are exact. :func:`read_jpeg_coefficients` parses a sequential Huffman-coded JPEG (baseline or extended,
8-bit samples; interleaved or one scan per component; restart intervals; optimised tables) and decodes its entropy-
coded data into each component's integers; progressive, lossless, hierarchical and arithmetic-coded files are
refused with :class:`JpegFormatError`. :meth:`JpegCoefficients.flat` orders them as
:meth:`detector.jpeg.DifferentiableJpeg.coefficients` does, for :func:`detector.jpeg.consistency_residual`, and
:meth:`JpegCoefficients.mask` leaves out the encoder's dummy blocks (whole blocks outside the image, which the model
pads differently and which show nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .jpeg import ZIGZAG

__all__ = ["JpegCoefficients", "JpegFormatError", "read_jpeg_coefficients"]

_SEQUENTIAL_HUFFMAN = {0xC0: "baseline", 0xC1: "extended sequential"}
_REFUSED = {0xC2: "progressive", 0xC3: "lossless", 0xC5: "hierarchical", 0xC6: "hierarchical",
            0xC7: "hierarchical", 0xC9: "arithmetic-coded", 0xCA: "arithmetic-coded", 0xCB: "arithmetic-coded",
            0xCD: "hierarchical", 0xCE: "hierarchical", 0xCF: "hierarchical"}


class JpegFormatError(ValueError):
    """A JPEG this reader does not decode (progressive, arithmetic, 12-bit, ...) or a damaged one."""


@dataclass(frozen=True)
class JpegCoefficients:
    """A JPEG's stored integers.

    height, width   the image's size (frame header)
    sampling        per component, its (horizontal, vertical) sampling factors
    blocks          per component, [rows, cols, 8, 8] int32 quantised coefficients in natural order, over the
                    component's blocks padded to whole MCUs (as the encoder coded them)
    tables          per component, its [8, 8] quantisation table in natural order
    own_blocks      per component, the (rows, cols) of blocks that hold image samples; the others are the
                    encoder's dummy blocks (libjpeg: the DC of a neighbour, zero AC), which show nothing
    """

    height: int
    width: int
    sampling: Tuple[Tuple[int, int], ...]
    blocks: Tuple[np.ndarray, ...]
    tables: Tuple[np.ndarray, ...]
    own_blocks: Tuple[Tuple[int, int], ...]

    def mask(self) -> torch.Tensor:
        """[1, K] bool, in :meth:`flat`'s order: True for the coefficients of blocks that hold image samples."""
        parts = []
        for b, (rows, cols) in zip(self.blocks, self.own_blocks):
            m = np.zeros(b.shape, dtype=bool)
            m[:rows, :cols] = True
            parts.append(m.transpose(0, 2, 1, 3).reshape(-1))
        return torch.from_numpy(np.concatenate(parts))[None]

    def flat(self) -> torch.Tensor:
        """[1, K] float32: every block of component 0, then of 1 and 2, each component in the order of
        :meth:`detector.jpeg.DifferentiableJpeg.coefficients` (block row, frequency row, block column, frequency
        column)."""
        return torch.from_numpy(np.concatenate([
            b.transpose(0, 2, 1, 3).reshape(-1) for b in self.blocks]).astype(np.float32))[None]


class _Huffman:
    """A DHT table as {(code length, code): symbol} (canonical codes, T.81 Annex C)."""

    def __init__(self, counts: Sequence[int], symbols: Sequence[int]):
        self.codes: Dict[Tuple[int, int], int] = {}
        code, k = 0, 0
        for length in range(1, 17):
            for _ in range(counts[length - 1]):
                self.codes[(length, code)] = symbols[k]
                code += 1
                k += 1
            code <<= 1


class _Bits:
    """MSB-first bits of one entropy-coded segment (byte stuffing already removed)."""

    def __init__(self, data: bytes):
        self.bits = "".join(f"{b:08b}" for b in data)
        self.pos = 0

    def read(self, n: int) -> int:
        if self.pos + n > len(self.bits):
            raise JpegFormatError("entropy-coded data ends inside a block")
        v = int(self.bits[self.pos:self.pos + n], 2)
        self.pos += n
        return v

    def symbol(self, table: _Huffman) -> int:
        for length in range(1, 17):
            sym = table.codes.get((length, int(self.bits[self.pos:self.pos + length] or "0", 2)))
            if sym is not None and self.pos + length <= len(self.bits):
                self.pos += length
                return sym
        raise JpegFormatError("invalid Huffman code")

    def extend(self, size: int) -> int:
        if size == 0:
            return 0
        v = self.read(size)
        return v if v >= 1 << (size - 1) else v - (1 << size) + 1  # T.81 F.2.2.1 EXTEND


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _be16(data: bytes, i: int) -> int:
    return (data[i] << 8) | data[i + 1]


def _unstuff(data: bytes) -> bytes:
    return data.replace(b"\xff\x00", b"\xff")


def _entropy_segments(data: bytes, start: int) -> Tuple[List[bytes], int]:
    """The scan's entropy-coded data from ``start``, split at restart markers; and where the next marker is."""
    segments, seg_start, i = [], start, start
    while True:
        j = data.find(b"\xff", i)
        if j < 0 or j + 1 >= len(data):
            raise JpegFormatError("the file ends inside a scan")
        nxt = data[j + 1]
        if nxt == 0x00 or nxt == 0xFF:
            i = j + 1 if nxt == 0xFF else j + 2
            continue
        segments.append(_unstuff(data[seg_start:j]))
        if 0xD0 <= nxt <= 0xD7:  # RSTn
            seg_start = i = j + 2
            continue
        return segments, j


def read_jpeg_coefficients(data: bytes) -> JpegCoefficients:
    """Parse and entropy-decode a sequential Huffman JPEG (bytes of the whole file)."""
    try:
        return _read(data)
    except (IndexError, KeyError, ValueError, OverflowError) as exc:
        if isinstance(exc, JpegFormatError):
            raise
        raise JpegFormatError(f"a damaged JPEG ({type(exc).__name__}: {exc})") from None


def _read(data: bytes) -> JpegCoefficients:
    if data[:2] != b"\xff\xd8":
        raise JpegFormatError("not a JPEG file (no SOI marker)")
    qt: Dict[int, np.ndarray] = {}
    dc_tables: Dict[int, _Huffman] = {}
    ac_tables: Dict[int, _Huffman] = {}
    frame: Optional[dict] = None
    restart = 0
    blocks: List[np.ndarray] = []
    seen_scan = False
    i = 2
    while i < len(data):
        if data[i] != 0xFF:
            raise JpegFormatError(f"expected a marker at byte {i}")
        while i + 1 < len(data) and data[i + 1] == 0xFF:  # fill bytes
            i += 1
        if i + 1 >= len(data):
            break
        marker = data[i + 1]
        if marker == 0xD9:  # EOI
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            i += 2
            continue
        length = _be16(data, i + 2)
        seg = data[i + 4:i + 2 + length]
        if len(seg) != length - 2:
            raise JpegFormatError("a marker segment runs past the end of the file")
        if marker in _REFUSED:
            raise JpegFormatError(f"a {_REFUSED[marker]} JPEG: only sequential Huffman-coded files are read")
        if marker == 0xDB:  # DQT
            k = 0
            while k < len(seg):
                precision, tid = seg[k] >> 4, seg[k] & 15
                n = 128 if precision else 64
                vals = np.frombuffer(seg[k + 1:k + 1 + n], dtype=">u2" if precision else np.uint8).astype(np.int64)
                table = np.zeros(64, dtype=np.int64)
                table[ZIGZAG] = vals
                qt[tid] = table.reshape(8, 8)
                k += 1 + n
        elif marker == 0xC4:  # DHT
            k = 0
            while k < len(seg):
                tc, th = seg[k] >> 4, seg[k] & 15
                counts = list(seg[k + 1:k + 17])
                symbols = list(seg[k + 17:k + 17 + sum(counts)])
                (dc_tables if tc == 0 else ac_tables)[th] = _Huffman(counts, symbols)
                k += 17 + sum(counts)
        elif marker == 0xDD:  # DRI
            restart = _be16(seg, 0)
        elif marker in _SEQUENTIAL_HUFFMAN:
            if seg[0] != 8:
                raise JpegFormatError(f"{seg[0]}-bit samples: only 8-bit JPEGs are read")
            h, w, nc = _be16(seg, 1), _be16(seg, 3), seg[5]
            comps = [{"id": seg[6 + 3 * c], "h": seg[7 + 3 * c] >> 4, "v": seg[7 + 3 * c] & 15,
                      "tq": seg[8 + 3 * c]} for c in range(nc)]
            if h == 0:
                raise JpegFormatError("the height is defined by a DNL marker: not supported")
            hmax, vmax = max(c["h"] for c in comps), max(c["v"] for c in comps)
            mcux, mcuy = _ceil_div(w, 8 * hmax), _ceil_div(h, 8 * vmax)
            for c in comps:
                c["rows"], c["cols"] = mcuy * c["v"], mcux * c["h"]
                # a component's own size in blocks (what a scan of it alone codes)
                c["own_rows"] = _ceil_div(_ceil_div(h * c["v"], vmax), 8)
                c["own_cols"] = _ceil_div(_ceil_div(w * c["h"], hmax), 8)
            frame = {"h": h, "w": w, "comps": comps, "mcux": mcux, "mcuy": mcuy}
            blocks = [np.zeros((c["rows"], c["cols"], 8, 8), dtype=np.int32) for c in comps]
        elif marker == 0xDA:  # SOS
            if frame is None:
                raise JpegFormatError("a scan before the frame header")
            ns = seg[0]
            index = {c["id"]: n for n, c in enumerate(frame["comps"])}
            scan = []
            for s in range(ns):
                cid, tables = seg[1 + 2 * s], seg[2 + 2 * s]
                if cid not in index:
                    raise JpegFormatError(f"a scan of an unknown component {cid}")
                scan.append((index[cid], tables >> 4, tables & 15))
            ss, se = seg[1 + 2 * ns], seg[2 + 2 * ns]
            if (ss, se) != (0, 63):
                raise JpegFormatError("a spectral-selection scan: only sequential JPEGs are read")
            segments, i = _entropy_segments(data, i + 2 + length)
            _decode_scan(frame, scan, segments, restart, dc_tables, ac_tables, blocks)
            seen_scan = True
            continue
        i += 2 + length
    if frame is None or not seen_scan:
        raise JpegFormatError("no frame or no scan in the file")
    try:
        tables = tuple(qt[c["tq"]] for c in frame["comps"])
    except KeyError as e:
        raise JpegFormatError(f"quantisation table {e} is missing") from None
    return JpegCoefficients(height=frame["h"], width=frame["w"],
                            sampling=tuple((c["h"], c["v"]) for c in frame["comps"]), blocks=tuple(blocks),
                            tables=tables, own_blocks=tuple((c["own_rows"], c["own_cols"]) for c in frame["comps"]))


def _decode_scan(frame: dict, scan: list, segments: List[bytes], restart: int, dc_tables: Dict[int, _Huffman],
                 ac_tables: Dict[int, _Huffman], blocks: List[np.ndarray]) -> None:
    comps = frame["comps"]
    if len(scan) == 1:  # non-interleaved: the component's own blocks in raster order, one per "MCU"
        n, _, _ = scan[0]
        units = [[(n, r, c)] for r in range(comps[n]["own_rows"]) for c in range(comps[n]["own_cols"])]
    else:
        units = [[(n, my * comps[n]["v"] + v, mx * comps[n]["h"] + h) for n, _, _ in scan
                  for v in range(comps[n]["v"]) for h in range(comps[n]["h"])]
                 for my in range(frame["mcuy"]) for mx in range(frame["mcux"])]
    tables = {n: (dc_tables.get(td), ac_tables.get(ta)) for n, td, ta in scan}
    if any(dc is None or ac is None for dc, ac in tables.values()):
        raise JpegFormatError("a scan uses a Huffman table the file does not define")
    per_segment = restart or len(units)
    if _ceil_div(len(units), per_segment) > len(segments):
        raise JpegFormatError("the scan has fewer restart intervals than its blocks need")
    for s in range(_ceil_div(len(units), per_segment)):
        bits = _Bits(segments[s])
        pred = dict.fromkeys(tables, 0)
        for unit in units[s * per_segment:(s + 1) * per_segment]:
            for n, r, c in unit:
                dc, ac = tables[n]
                coef = np.zeros(64, dtype=np.int32)
                size = bits.symbol(dc)
                if size > 11:  # 8-bit samples: DC differences need at most 11 bits (T.81 F.1.2.1)
                    raise JpegFormatError(f"a DC difference of {size} bits")
                pred[n] += bits.extend(size)
                coef[0] = pred[n]
                k = 1
                while k < 64:
                    rs = bits.symbol(ac)
                    run, size = rs >> 4, rs & 15
                    if size == 0:
                        if run != 15:
                            break  # EOB
                        k += 16
                        continue
                    k += run
                    if k > 63:
                        raise JpegFormatError("a run of zeros past the end of a block")
                    coef[ZIGZAG[k]] = bits.extend(size)
                    k += 1
                blocks[n][r, c] = coef.reshape(8, 8)
