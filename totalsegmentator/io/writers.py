"""Segmentation writers: one file per class, or one multilabel file with label names (formats.md §9, §10).

Output headers are copies of the reference (input) header: extensions, qform/sform codes and the rest are
kept, the data type becomes uint8 and scaling is unset. Every file is written atomically.

Per-class files at the default gzip level are encoded by :class:`MaskGzipEncoder` (run-length deflate, see the
end of this module): 117 masks of a 458x379x224 CT take 0.04-0.2 s instead of ~25 s with zlib, are smaller than
zlib's level 1, and decompress to exactly the bytes nibabel writes. Its loops run in C (``_maskcodec.c``, an
optional extension built at install when there is a compiler), else in numpy (the same bytes, ~3x slower).
"""
from __future__ import annotations

import bisect
import functools
import os
import struct
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Union

import nibabel as nib
import numpy as np

from ..atomic_files import atomic_path, write_bytes_atomic
from .label_header import LabelMap, add_label_map_to_nifti, remove_label_extensions
from .nifti import DEFAULT_COMPRESSLEVEL, nifti_bytes, nifti_header_bytes, save_nifti_atomic

try:  # the encoder's loops in C (an optional extension, see setup.py); without it numpy does the same work
    from . import _maskcodec
except ImportError:
    _maskcodec = None

PathLike = Union[str, os.PathLike]

# zlib path (compresslevel != 1): above this many voxels files are written one at a time (a mask per thread)
SINGLE_THREAD_VOXELS = 512 * 512 * 1000


def segmentation_image(seg_xyz: np.ndarray, ref_img: nib.Nifti1Image, affine: np.ndarray | None = None,
                       keep_label_extensions: bool = False) -> nib.Nifti1Image:
    """A uint8 image of ``seg_xyz`` with a copy of ``ref_img``'s header (codes kept) and ``affine``
    (default: the reference affine). Label-name extensions of the reference are dropped unless asked."""
    affine = np.asarray(ref_img.affine if affine is None else affine, dtype=np.float64)
    header = ref_img.header.copy() if isinstance(ref_img.header, nib.Nifti1Header) else None
    if header is not None and not keep_label_extensions:
        remove_label_extensions(header)
    img = nib.Nifti1Image(np.asarray(seg_xyz, dtype=np.uint8), affine, header=header)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(None, None)
    if header is not None and not np.allclose(affine, header.get_best_affine()):
        # nibabel would store a new affine with sform 'aligned' / qform 'unknown'; keep the input's codes
        qcode, scode = int(header["qform_code"]), int(header["sform_code"])
        if qcode or scode:
            img.set_sform(affine, code=scode)
            img.set_qform(affine, code=qcode)
    return img


def write_per_class(seg_xyz: np.ndarray, class_map: Mapping[int, str], ref_img: nib.Nifti1Image,
                    out_dir: PathLike, nr_threads: int = 6, compresslevel: int = DEFAULT_COMPRESSLEVEL,
                    affine: np.ndarray | None = None) -> list[Path]:
    """Write ``<out_dir>/<name>.nii.gz`` (uint8 0/1) for every class of ``class_map``, also empty ones.

    At ``compresslevel`` 1 (the default) all masks are encoded together by :class:`MaskGzipEncoder` (one pass
    over the label map, then work proportional to each class's runs, not to the volume); other levels compress
    every mask with zlib. Either way the decompressed files are exactly what nibabel writes for the mask.
    Files are written by ``nr_threads`` threads. Returns the paths in class-map order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seg = np.asarray(seg_xyz)
    template = segmentation_image(np.zeros((1, 1, 1), np.uint8), ref_img, affine)
    affine = template.affine
    header = template.header
    items = list(class_map.items())
    threads = max(1, min(int(nr_threads), len(items)))
    if compresslevel == 1 and seg.ndim == 3:
        head = nifti_header_bytes(nib.Nifti1Image(np.broadcast_to(np.uint8(0), seg.shape), affine, header=header))
        contents = MaskGzipEncoder(head, seg.shape).encode(seg, [label for label, _ in items],
                                                           min(threads, os.cpu_count() or 1))
        paths = [out_dir / f"{name}.nii.gz" for _, name in items]
        if threads == 1 or len(items) <= 1:
            return [write_bytes_atomic(c, p) for c, p in zip(contents, paths)]
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(write_bytes_atomic, contents, paths))

    present = None
    if seg.dtype == np.uint8:
        present = set(np.flatnonzero(np.bincount(seg.ravel(), minlength=256)).tolist())
    empty_file: list[bytes] = []  # all empty classes share one compressed file content

    def write_one(item: tuple[int, str]) -> Path:
        label, name = item
        path = out_dir / f"{name}.nii.gz"
        if present is not None and label not in present:
            if not empty_file:
                empty = nib.Nifti1Image(np.zeros(seg.shape, np.uint8), affine, header=header)
                empty_file.append(nifti_bytes(empty, gz=True, compresslevel=compresslevel))
            return write_bytes_atomic(empty_file[0], path)
        mask = (seg == label).view(np.uint8)
        return save_nifti_atomic(nib.Nifti1Image(mask, affine, header=header), path, compresslevel)

    if seg.size > SINGLE_THREAD_VOXELS:
        threads = 1
    if threads == 1 or len(items) <= 1:
        return [write_one(item) for item in items]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(write_one, items))


def write_multilabel(seg_xyz: np.ndarray, label_map: LabelMap, ref_img: nib.Nifti1Image, path: PathLike,
                     affine: np.ndarray | None = None,
                     compresslevel: int = DEFAULT_COMPRESSLEVEL) -> Path:
    """Write the multilabel uint8 volume with the label-name extension appended after the copied ones.

    Named as nibabel's save names and converts (the official tool's ``--ml`` output): a name without suffix gets
    ``.nii``; ``.mgz``/``.mgh`` make a FreeSurfer image (which has no room for the label names). Returns the path
    written."""
    path = multilabel_path(path)
    img = add_label_map_to_nifti(segmentation_image(seg_xyz, ref_img, affine), label_map)
    if not path.name.lower().endswith((".nii", ".nii.gz")):  # a format the options allow (.mgz): nibabel's save
        with atomic_path(path, suffix=path.suffix) as tmp:
            nib.save(img, tmp)
        return path
    return save_nifti_atomic(img, path, compresslevel)


def multilabel_path(path: PathLike) -> Path:
    """Where a ``--ml`` output named ``path`` is written: ``.nii`` added to a name without suffix (nibabel's rule)."""
    path = Path(path)
    return path if path.suffix else path.with_name(path.name + ".nii")


def write_multilabel_image(img: nib.Nifti1Image, path: PathLike,
                           compresslevel: int = DEFAULT_COMPRESSLEVEL) -> Path:
    """Write an already built multilabel image (e.g. from :func:`multilabel_image`) atomically."""
    return save_nifti_atomic(img, path, compresslevel)


def multilabel_image(seg_xyz: np.ndarray, label_map: LabelMap, ref_img: nib.Nifti1Image,
                     affine: np.ndarray | None = None) -> nib.Nifti1Image:
    """The in-memory multilabel image (what ``totalsegmentator()`` returns), label extension included."""
    return add_label_map_to_nifti(segmentation_image(seg_xyz, ref_img, affine), label_map)


def write_mask(mask_xyz: np.ndarray, affine: np.ndarray, path: PathLike,
               compresslevel: int = DEFAULT_COMPRESSLEVEL) -> Path:
    """Write a uint8 mask with a fresh header (derived masks such as ``body``/``skin``)."""
    img = nib.Nifti1Image(np.asarray(mask_xyz, dtype=np.uint8), np.asarray(affine, dtype=np.float64))
    return save_nifti_atomic(img, path, compresslevel)


# ---------------------------------------------------------------------------------------------------------------
# Fast gzip files of binary masks
#
# A per-class file is the NIfTI header followed by the mask (0/1 bytes in Fortran order). Compressing each mask
# with zlib costs time proportional to the volume for every class (117 classes of a 458x379x224 CT: ~4.5 GB to
# deflate). Instead each mask is written as run-length deflate (RFC 1951): the header as literals in a block with
# the fixed Huffman code, then the mask in one block with our own, constant Huffman code for the only symbols it
# needs (bytes 0 and 1, match lengths, distance 1), in which a match of 258 bytes costs 2 bits (zlib's level 9
# is not smaller for empty masks). Each run of equal bytes is one literal and matches of distance 1; a run of
# ones and the zero run after it are one token, from a table of the pairs (half the tokens to pack). The gzip
# CRC-32 comes from the runs of ones, by the linearity of CRCs: crc(mask) = crc(zeros) ^ XOR over ones at j of
# A^(n-1-j) t, with A the CRC state change of a zero byte and t = table[1], summed run by run (_RunsCrc). Both
# need only the runs of the class: one pass over the label map finds all runs, one stable sort of their labels
# groups them by class.

_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0, OS unknown
_LENGTH_BASE = (3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
                163, 195, 227, 258)
_LENGTH_EXTRA = (0,) * 8 + (1,) * 4 + (2,) * 4 + (3,) * 4 + (4,) * 4 + (5,) * 4 + (0,)
_MAX_MATCH = 258
_SLAB_VOXELS = 1 << 22  # voxels searched for runs at a time (bounds the temporary copies)
_PART_VOXELS = 1 << 20  # the C run search splits the label map into parts of at least this many, one per thread
_CRC_CHUNK_BITS = 16
_CRC_POLY = 0xEDB88320
_END_OF_BLOCK = 256
# code lengths of the mask block's literal/length code (a complete prefix code: the Kraft sum is 1)
_MASK_CODE_LENGTHS = {0: 3, 1: 3, 256: 6, 257: 6, 258: 6, **{s: 7 for s in range(259, 285)}, 285: 1}
# the code-length code that transmits them (complete too), and the order RFC 1951 sends its lengths in
_CL_CODE_LENGTHS = {18: 2, 7: 2, 3: 2, 6: 3, 1: 3}
_CL_ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)


def _reverse_bits(code: int, nbits: int) -> int:
    return int(format(code, f"0{nbits}b")[::-1], 2) if nbits else 0


def _canonical_codes(lengths: dict[int, int]) -> dict[int, tuple[int, int]]:
    """RFC 1951 canonical Huffman codes (bit-reversed for LSB-first packing) of symbol -> code length."""
    max_bits = max(lengths.values())
    count = [0] * (max_bits + 1)
    for n in lengths.values():
        count[n] += 1
    code, next_code = 0, [0] * (max_bits + 1)
    for bits in range(1, max_bits + 1):
        code = (code + count[bits - 1]) << 1 if bits > 1 else 0
        next_code[bits] = code
    out = {}
    for symbol in sorted(lengths):
        n = lengths[symbol]
        out[symbol] = (_reverse_bits(next_code[n], n), n)
        next_code[n] += 1
    return out


def _fixed_literal_code(value: int) -> tuple[int, int]:
    """Fixed-Huffman code of a literal byte (or 256, end of block), bit-reversed, and its length."""
    if value == _END_OF_BLOCK:
        return 0, 7
    code, nbits = (0x30 + value, 8) if value < 144 else (0x190 + value - 144, 9)
    return _reverse_bits(code, nbits), nbits


class _Bits:
    """A small LSB-first bit writer for the constant parts of the stream."""

    def __init__(self) -> None:
        self.value, self.nbits = 0, 0

    def put(self, value: int, nbits: int) -> "_Bits":
        self.value |= value << self.nbits
        self.nbits += nbits
        return self


def _mask_block_header() -> tuple[int, int]:
    """BFINAL=1, BTYPE=2 (dynamic) and the description of the mask block's codes, as (bits value, count)."""
    lengths = [_MASK_CODE_LENGTHS.get(s, 0) for s in range(286)] + [1]  # 286 lit/len codes, 1 distance code
    cl = _canonical_codes(_CL_CODE_LENGTHS)
    n_cl = max(_CL_ORDER.index(s) for s in _CL_CODE_LENGTHS) + 1
    out = _Bits().put(1, 1).put(2, 2).put(286 - 257, 5).put(0, 5).put(n_cl - 4, 4)
    for s in _CL_ORDER[:n_cl]:
        out.put(_CL_CODE_LENGTHS.get(s, 0), 3)
    i = 0
    while i < len(lengths):
        run = 1
        while lengths[i] == 0 and i + run < len(lengths) and lengths[i + run] == 0 and run < 138:
            run += 1
        if lengths[i] == 0 and run >= 11:
            out.put(*cl[18]).put(run - 11, 7)
            i += run
        else:
            out.put(*cl[lengths[i]])
            i += 1
    return out.value, out.nbits


def _match_code(codes: dict[int, tuple[int, int]], length: int) -> tuple[int, int]:
    """Code of a match of ``length`` (3..258) at distance 1 (the one distance code: a single 0 bit)."""
    i = bisect.bisect_right(_LENGTH_BASE, length) - 1
    value, nbits = codes[257 + i]
    return value | ((length - _LENGTH_BASE[i]) << nbits), nbits + _LENGTH_EXTRA[i] + 1


@functools.lru_cache(maxsize=1)
def _deflate_tables() -> dict:
    """Token tables of the mask block: 'heads' (a literal of byte v followed by the rest r < 258 of its run, as
    one match or up to two more literals) indexed by v * 258 + r; 'pairs', the head of a run of ones with rest
    r1 followed by the head of the zero run after it with rest r0 (r0 = 258: none), indexed by r1 * 259 + r0;
    the bit count of a full match (all its bits are 0); the block header and end; the fixed-code literals of
    the NIfTI header block."""
    codes = _canonical_codes(_MASK_CODE_LENGTHS)
    heads = []
    for v in (0, 1):
        for rest in range(_MAX_MATCH):
            value, nbits = codes[v]
            if rest >= 3:
                m_value, m_bits = _match_code(codes, rest)
                value, nbits = value | (m_value << nbits), nbits + m_bits
            else:
                for _ in range(rest):
                    value, nbits = value | (codes[v][0] << nbits), nbits + codes[v][1]
            heads.append((value, nbits))
    full_value, full_bits = _match_code(codes, _MAX_MATCH)
    assert full_value == 0, "a full match must be all zero bits"
    head_val = np.array([v for v, _ in heads], np.uint64)
    head_bits = np.array([b for _, b in heads], np.int64)
    zero_val = np.append(head_val[:_MAX_MATCH], np.uint64(0))  # index 258: no zero run
    zero_bits = np.append(head_bits[:_MAX_MATCH], 0)
    one_val, one_bits = head_val[_MAX_MATCH:, None], head_bits[_MAX_MATCH:, None]
    lit = [_fixed_literal_code(v) for v in range(257)]
    return {"head_val": head_val, "head_bits": head_bits, "zero_val": zero_val, "zero_bits": zero_bits,
            "full_bits": full_bits,
            "pair_val": (one_val | (zero_val[None, :] << one_bits.astype(np.uint64))).ravel(),
            "pair_bits": (one_bits + zero_bits[None, :]).ravel(),
            "block_header": _mask_block_header(), "end": codes[_END_OF_BLOCK],
            "lit_val": np.array([v for v, _ in lit], np.uint64), "lit_bits": np.array([b for _, b in lit], np.int64)}


def _split_full_matches(rest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reduce ``rest`` (run lengths - 1) in place below 258; returns the indices of the runs that had full
    258-byte matches and their counts. numpy's integer division has no vector instructions: dividing only the
    runs that reach a full match is ~3x cheaper than a divmod of all."""
    long_runs = np.flatnonzero(rest >= _MAX_MATCH)
    full = rest[long_runs] // _MAX_MATCH
    rest[long_runs] -= full * _MAX_MATCH
    return long_runs, full


def _mask_tokens(starts: np.ndarray, ends: np.ndarray, n: int
                 ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """Tokens (bit values, bit counts) of an ``n``-byte mask whose ones are the runs ``[starts[i], ends[i])``
    (ascending, separated by zeros), and the extra tokens that did not fit their pair (see :func:`_pack_bits`;
    None when there are none).

    Each run of equal bytes is a literal, then matches of distance 1 in any order (each copies the same byte):
    the literal and the rest below 258 first (the run's head), then the full 258-byte matches, whose codes are
    all 0 bits and only lengthen the token. Token 0 is the zero run before the first one; token i + 1 is run of
    ones i with the zero run after it, as one table entry. Where the run of ones has full matches, their zero
    bits lie between the two heads, so the zero run's head becomes an extra token.
    """
    t = _deflate_tables()
    fill_bits = t["full_bits"]
    k = starts.size
    val = np.empty(k + 1, dtype=np.uint64)
    bits = np.empty(k + 1, dtype=np.int64)
    lead = int(starts[0]) if k else n
    if lead:
        full, rest = divmod(lead - 1, _MAX_MATCH)
        val[0], bits[0] = t["head_val"][rest], t["head_bits"][rest] + full * fill_bits
    else:
        val[0], bits[0] = 0, 0
    if not k:
        return val, bits, None
    ones = np.subtract(ends, starts, dtype=np.int64)
    ones -= 1
    zeros = np.empty(k, dtype=np.int64)
    np.subtract(starts[1:], ends[:-1], out=zeros[:-1])
    zeros[-1] = n - int(ends[-1])
    zeros -= 1
    long_ones, full_ones = _split_full_matches(ones)
    long_zeros, full_zeros = _split_full_matches(zeros)
    if zeros[-1] < 0:
        zeros[-1] = _MAX_MATCH  # the mask ends with ones
    index = ones * (_MAX_MATCH + 1)
    index += zeros
    np.take(t["pair_val"], index, out=val[1:])
    np.take(t["pair_bits"], index, out=bits[1:])
    bits[long_zeros + 1] += full_zeros * fill_bits
    if not long_ones.size:
        return val, bits, None
    tokens = long_ones + 1
    one_rest = ones[long_ones] + _MAX_MATCH
    val[tokens] = t["head_val"][one_rest]
    offsets = t["head_bits"][one_rest] + full_ones * fill_bits
    bits[tokens] += full_ones * fill_bits
    return val, bits, (tokens, offsets, t["zero_val"][zeros[long_ones]])


def _group_starts(keys: np.ndarray) -> np.ndarray:
    """Indices where a group of equal consecutive ``keys`` (non-empty) begins, for ``ufunc.reduceat``."""
    first = np.empty(keys.size, dtype=bool)
    first[0] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    return np.flatnonzero(first)


def _pack_bits(val: np.ndarray, bits: np.ndarray, carry: tuple[int, int],
               extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> tuple[bytes, tuple[int, int]]:
    """Pack tokens LSB-first after ``carry`` (value, bit count < 8 of a started byte); returns the complete bytes
    and the new carry. A token may be longer than 64 bits as long as its set bits lie in its first 32.

    ``extra`` (token indices, ascending; bit offsets within those tokens; values with set bits in their first 16)
    adds bits to the tokens beyond their first 32."""
    if val.size == 0:
        return b"", carry
    pos = np.cumsum(bits)
    total = int(pos[-1]) + carry[1]
    pos -= bits
    pos += carry[1]  # the started byte's bits come first
    wide = np.zeros(total // 32 + 2, dtype=np.uint64)
    # each token shifted into the 64-bit pair of 32-bit words it starts in (it cannot reach a third word), the
    # tokens starting in one word OR-ed together, then each pair's high half added to the next word
    extra_words = extra_values = None
    if extra is not None and extra[0].size:
        at = pos[extra[0]] + extra[1]
        extra_words = at >> 5
        extra_values = extra[2] << (at.view(np.uint64) & np.uint64(31))
    word = pos >> 5
    shift = pos.view(np.uint64)  # pos is free now: its low 5 bits in place
    shift &= np.uint64(31)
    starts = _group_starts(word)
    wide[word[starts]] = np.bitwise_or.reduceat(val << shift, starts)
    if extra_words is not None:
        starts = _group_starts(extra_words)
        wide[extra_words[starts]] |= np.bitwise_or.reduceat(extra_values, starts)
    wide[0] |= np.uint64(carry[0])
    words = wide.astype(np.uint32)  # the low halves
    words[1:] |= (wide[:-1] >> np.uint64(32)).astype(np.uint32)
    data = words.astype("<u4", copy=False).view(np.uint8)
    full, rest = divmod(total, 8)
    return data[:full].tobytes(), (int(data[full]) if rest else 0, rest)


@functools.lru_cache(maxsize=1)
def _crc_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint64)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _CRC_POLY if c & 1 else c >> 1
        table[i] = c
    return table


_BIT_INDEX = np.arange(32, dtype=np.uint64)


def _op_apply(op: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Apply a GF(2)-linear map of 32-bit values (``op[b]`` = image of bit b) to every element of ``v``."""
    if v.size <= 1024:  # few values (squaring an operator): one pass over a values x bits table
        bits = (v[..., None] >> _BIT_INDEX) & np.uint64(1)
        return np.bitwise_xor.reduce(bits * op, axis=-1)
    out = np.zeros_like(v)
    for b in range(32):
        out ^= ((v >> np.uint64(b)) & np.uint64(1)) * op[b]
    return out


@functools.lru_cache(maxsize=1)
def _zero_byte_powers() -> list[np.ndarray]:
    """A^(2^k) for k = 0..63, A being the CRC-32 register change of one zero byte."""
    table = _crc_table()
    ops = [np.array([int(table[(1 << b) & 0xFF]) ^ ((1 << b) >> 8) for b in range(32)], dtype=np.uint64)]
    for _ in range(63):
        ops.append(_op_apply(ops[-1], ops[-1]))
    return ops


@functools.lru_cache(maxsize=1)
def _single_one_table() -> np.ndarray:
    """A^d table[1] for d < 2^16: the register contribution of a byte 1 followed by d bytes."""
    powers = _zero_byte_powers()
    out = np.zeros(1 << _CRC_CHUNK_BITS, dtype=np.uint64)
    out[0] = _crc_table()[1]
    for k in range(_CRC_CHUNK_BITS):
        out[1 << k:2 << k] = _op_apply(powers[k], out[:1 << k])
    return out


def _zero_extend(crc: int, n: int) -> int:
    """``zlib.crc32(bytes(n), crc)`` without the bytes."""
    state = np.array([crc ^ 0xFFFFFFFF], dtype=np.uint64)
    powers = _zero_byte_powers()
    for k in range(n.bit_length()):
        if n >> k & 1:
            state = _op_apply(powers[k], state)
    return int(state[0]) ^ 0xFFFFFFFF


class _RunsCrc:
    """The CRC-32 contribution of runs of ones ``[s, e)`` in an ``n``-byte message of zeros otherwise.

    A one at byte j contributes A^(n-1-j) t (see above), so a run contributes P(n-s) ^ P(n-e) with
    P(d) = XOR of A^k t over k < d; for d = q C + r (C = 2^16), P(d) = P(q C) ^ A^(q C) P(r). Tables of P(r) and
    P(q C) and the operators A^(q C) make the cost proportional to the runs, not to their voxels."""

    def __init__(self, n: int) -> None:
        self.n = n
        chunk = 1 << _CRC_CHUNK_BITS
        self.mask = chunk - 1
        partial = np.zeros(chunk + 1, dtype=np.uint64)
        partial[1:] = np.bitwise_xor.accumulate(_single_one_table())
        self.low = partial[:chunk]  # P(r) for r < C
        n_q = (n >> _CRC_CHUNK_BITS) + 1  # d runs from 0 to n
        ops = np.zeros((1, 32), dtype=np.uint64)
        ops[0] = [1 << b for b in range(32)]
        k = 0
        while ops.shape[0] < n_q:  # ops[q] = A^(q C), doubling the table each step
            ops = np.concatenate([ops, _op_apply(_zero_byte_powers()[_CRC_CHUNK_BITS + k], ops)])
            k += 1
        self.ops = ops[:n_q]
        self.bit_index = np.arange(32, dtype=np.uint64)
        # P((q+1) C) = P(q C) ^ A^(q C) P(C)
        full_bits = (partial[chunk] >> self.bit_index) & np.uint64(1)
        steps = np.bitwise_xor.reduce(self.ops * full_bits[None, :], axis=1)
        self.at_chunks = np.concatenate([[np.uint64(0)], np.bitwise_xor.accumulate(steps)])[:n_q]

    def __call__(self, starts: np.ndarray, ends: np.ndarray) -> int:
        """XOR of the contributions of the runs ``[starts[i], ends[i])`` (ascending, not touching)."""
        if starts.size == 0:
            return 0
        return self._sum_p(starts) ^ self._sum_p(ends)

    def compiled(self, starts: np.ndarray, ends: np.ndarray) -> int:
        """:meth:`__call__` in C (int64 arrays; the extension must be built)."""
        return _maskcodec.runs_crc(starts, ends, self.n, self.low, self.ops, self.at_chunks)

    def _sum_p(self, x: np.ndarray) -> int:
        """XOR of P(n - x[i]) over ``x`` (ascending, at most n)."""
        # d = n - x falls; its chunks q = d >> 16 are contiguous groups, found by bisection of the chunk edges
        chunk = 1 << _CRC_CHUNK_BITS
        q_first, q_last = (self.n - int(x[0])) >> _CRC_CHUNK_BITS, (self.n - int(x[-1])) >> _CRC_CHUNK_BITS
        group_q = np.arange(q_first, q_last - 1, -1, dtype=np.int64)
        firsts = np.searchsorted(x, self.n - (group_q + 1) * chunk, side="right")
        sizes = np.diff(firsts, append=x.size)
        keep = sizes > 0
        firsts, group_q, sizes = firsts[keep], group_q[keep], sizes[keep]
        # d mod 2^16 by 16-bit wrap-around, in one pass
        low_d = np.subtract(np.uint16(self.n & self.mask), x, dtype=np.uint16, casting="unsafe")
        grouped = np.bitwise_xor.reduceat(self.low[low_d], firsts)
        bits = (grouped[:, None] >> self.bit_index) & np.uint64(1)
        total = np.bitwise_xor.reduce((bits * self.ops[group_q]).ravel())
        # P(q C) once per element of a group: it cancels in pairs, so a group adds it when its size is odd
        return int(total ^ np.bitwise_xor.reduce(self.at_chunks[group_q[(sizes & 1).astype(bool)]]))


def _mask_body(carry: tuple[int, int], starts: np.ndarray, ends: np.ndarray, n: int) -> bytes:
    """numpy: the deflate bytes of the mask whose ones are the runs ``[starts[i], ends[i])``, after ``carry``
    (the started byte) and through the end of the block, padded to a byte."""
    val, bits, extra = _mask_tokens(starts, ends, n)
    data, carry = _pack_bits(val, bits, carry, extra)
    end_value, end_bits = _deflate_tables()["end"]
    end, (value, nbits) = _pack_bits(np.array([end_value], np.uint64), np.array([end_bits], np.int64), carry)
    return b"".join([data, end, bytes([value]) if nbits else b""])


def _compiled_mask_body(carry: tuple[int, int], starts: np.ndarray, ends: np.ndarray, n: int) -> bytes:
    """:func:`_mask_body` with the tokens packed in C."""
    t = _deflate_tables()
    return _maskcodec.encode_mask(starts, ends, n, carry[0], carry[1], t["head_val"], t["head_bits"],
                                  t["pair_val"], t["pair_bits"], t["zero_val"], t["zero_bits"], t["full_bits"],
                                  *t["end"])


def _mask_member(start: tuple[bytes, tuple[int, int]], body: bytes, crc: int, size: int) -> bytes:
    """The gzip member of one mask: ``start`` (the deflate bytes before the mask), the mask's ``body`` (from the
    started byte through the end of the block) and the trailer (CRC-32, size)."""
    return b"".join([_GZIP_HEADER, start[0], body, struct.pack("<II", crc, size & 0xFFFFFFFF)])


class MaskGzipEncoder:
    """gzip file contents (``.nii.gz``) of the binary masks ``seg == label`` after a fixed NIfTI header.

    The decompressed content is ``header`` followed by the mask bytes in Fortran order, exactly as nibabel
    writes a uint8 mask; the compressed form is run-length deflate, written in time proportional to the runs of
    a class, not to the volume (117 compact organ masks of a 458x379x224 CT: 0.04 s and 5 MB on 2 cores with the
    C loops, 0.14 s with numpy's, where zlib level 1 / 6 need ~12 s / 22 s; the noisy masks of random weights:
    0.13-0.18 s and 18.8 MB, numpy 0.45-0.54 s, zlib level 1: 33 MB; ``benchmarks/mask_writer.py``).
    """

    def __init__(self, header: bytes, shape: tuple[int, ...]) -> None:
        self.header = header
        self.shape = tuple(int(s) for s in shape)
        self.n = int(np.prod(self.shape))
        t = _deflate_tables()
        # block 1 (BFINAL=0, BTYPE=01 fixed codes): the header bytes as literals, end of block; block 2 starts
        symbols = np.concatenate([np.frombuffer(header, dtype=np.uint8), [_END_OF_BLOCK]]).astype(np.int64)
        value, nbits = t["block_header"]
        pieces = [(value >> k) & 0xFFFF for k in range(0, nbits, 16)]  # tokens of at most 16 bits
        piece_bits = [min(16, nbits - k) for k in range(0, nbits, 16)]
        self._start = _pack_bits(
            np.concatenate([[2], t["lit_val"][symbols], pieces]).astype(np.uint64),
            np.concatenate([[3], t["lit_bits"][symbols], piece_bits]).astype(np.int64), (0, 0))
        self._crc_zeros = _zero_extend(zlib.crc32(header), self.n)
        self._size = len(header) + self.n

    def encode(self, seg: np.ndarray, labels: list[int], threads: int = 1) -> list[bytes]:
        """File contents for each label of ``labels`` (in that order), using up to ``threads`` threads.

        One pass over the label map finds the runs of equal labels in file order, grouped by label (in C when
        the extension is built, else by a stable sort of their labels), and each file is made from its label's
        runs."""
        seg = np.asarray(seg)
        if seg.shape != self.shape:
            raise ValueError(f"label map shape {seg.shape} differs from the header's {self.shape}")
        distinct = list(dict.fromkeys(int(v) for v in labels))
        codes, code_of = _compact_codes(seg, distinct)
        compiled = _maskcodec is not None and codes.dtype == np.uint8
        no_runs = np.zeros(0, dtype=np.int64)
        carry = self._start[1]
        empty = _mask_member(self._start, _mask_body(carry, no_runs, no_runs, self.n), self._crc_zeros, self._size)
        pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None
        run = pool.map if pool is not None else map
        try:
            runs_of = self._compiled_runs(codes, threads, run) if compiled else self._sorted_runs(codes, run)
            crc = _RunsCrc(self.n)
            runs_crc, body = (crc.compiled, _compiled_mask_body) if compiled else (crc, _mask_body)

            def file_of(label: int) -> bytes:
                code = code_of[label]
                starts, ends = runs_of(code) if code is not None else (no_runs, no_runs)
                if not starts.size:
                    return empty
                return _mask_member(self._start, body(carry, starts, ends, self.n),
                                    self._crc_zeros ^ runs_crc(starts, ends), self._size)

            contents = dict(zip(distinct, run(file_of, distinct)))
        finally:
            if pool is not None:
                pool.shutdown()
        return [contents[int(v)] for v in labels]

    def _sorted_runs(self, codes: np.ndarray, run) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
        """numpy: the runs of the label map slab by slab in file order, grouped by one stable sort of their
        codes; returns a function of a code to its runs' starts and ends."""
        plane = self.shape[0] * self.shape[1]
        step = max(1, _SLAB_VOXELS // max(plane, 1))

        def slab_runs(z0: int) -> tuple[np.ndarray, np.ndarray]:
            """File position and code of every run that begins in the slab starting at plane z0."""
            flat = np.asfortranarray(codes[:, :, z0:z0 + step]).ravel(order="F")
            begins = np.flatnonzero(flat[1:] != flat[:-1]) + 1
            if z0 == 0 or flat[0] != codes[-1, -1, z0 - 1]:
                begins = np.concatenate([np.zeros(1, dtype=begins.dtype), begins])
            return begins + z0 * plane, flat[begins]

        pieces = list(run(slab_runs, range(0, self.shape[2], step)))
        starts = np.concatenate([p[0] for p in pieces])
        run_codes = np.concatenate([p[1] for p in pieces])
        del pieces
        ends = np.append(starts[1:], self.n)
        by_code = np.argsort(run_codes, kind="stable")  # each code's runs stay in file order
        n_codes = 1 << (8 * codes.itemsize)  # uint8 or uint16
        bounds = np.concatenate([[0], np.cumsum(np.bincount(run_codes, minlength=n_codes))])

        def runs_of(code: int) -> tuple[np.ndarray, np.ndarray]:
            mine = by_code[bounds[code]:bounds[code + 1]]
            return starts[mine], ends[mine]
        return runs_of

    def _compiled_runs(self, codes: np.ndarray, threads: int, run) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
        """C: the runs of a uint8 label map, counted and then stored grouped by label, the file split into one
        part per thread at run boundaries; returns a function of a code to its runs' starts and ends."""
        flat = _fortran_bytes(codes, run)
        parts = max(1, min(threads, self.n // _PART_VOXELS))
        edges = sorted({0, self.n, *(_maskcodec.next_boundary(flat, self.n * t // parts) for t in range(1, parts))})
        spans = list(zip(edges[:-1], edges[1:]))
        counts = np.zeros((len(spans), 256), dtype=np.int64)
        list(run(lambda i: _maskcodec.count_runs(flat, *spans[i], counts[i]), range(len(spans))))
        bounds = np.concatenate([[0], np.cumsum(counts.sum(axis=0))])
        cursors = bounds[:-1] + np.cumsum(counts, axis=0) - counts  # where each part's runs of a code go
        starts = np.empty(int(bounds[-1]), dtype=np.int64)
        ends = np.empty_like(starts)
        list(run(lambda i: _maskcodec.fill_runs(flat, *spans[i], cursors[i], starts, ends), range(len(spans))))

        def runs_of(code: int) -> tuple[np.ndarray, np.ndarray]:
            return starts[bounds[code]:bounds[code + 1]], ends[bounds[code]:bounds[code + 1]]
        return runs_of


def _fortran_bytes(codes: np.ndarray, run) -> np.ndarray:
    """The uint8 label map as one flat array in file (Fortran) order; a copy only when it is not already."""
    if codes.flags.f_contiguous:
        return codes.ravel(order="F")
    out = np.empty(codes.shape, dtype=np.uint8, order="F")
    step = max(1, _SLAB_VOXELS // max(codes.shape[0] * codes.shape[1], 1))

    def copy(z0: int) -> None:
        out[:, :, z0:z0 + step] = codes[:, :, z0:z0 + step]
    list(run(copy, range(0, codes.shape[2], step)))
    return out.ravel(order="F")


def _compact_codes(seg: np.ndarray, labels: list[int]) -> tuple[np.ndarray, dict[int, int | None]]:
    """An unsigned integer array to sort and the code of each label in it (None: never present).

    uint8 label maps are used as they are; other types get codes 1..len(labels) (0 for everything else)."""
    if seg.dtype == np.uint8:
        return seg, {label: label if 0 <= label <= 255 else None for label in labels}
    codes = np.zeros(seg.shape, dtype=np.uint8 if len(labels) < 255 else np.uint16)
    for i, label in enumerate(labels, start=1):
        codes[seg == label] = i
    return codes, {label: i for i, label in enumerate(labels, start=1)}
