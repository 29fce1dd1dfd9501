"""Label names in a NIfTI header: the "CaretExtension" XML extension (ecode 0) of multilabel outputs.

Writing is byte-compatible with the official tool (formats.md §10); reading accepts any files written by it
or by us and, unlike the official reader, finds the label extension among other header extensions instead
of only looking at the first one.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Union

import nibabel as nib
import numpy as np
import xmltodict
from nibabel.nifti1 import Nifti1Extension

from ..errors import InputImageError

PathLike = Union[str, os.PathLike]
LabelMap = Union[Mapping[int, str], Iterable[str], None]

LABEL_EXTENSION_CODE = 0
_PALETTE = (
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
    (255, 128, 0), (255, 0, 128), (128, 255, 128), (0, 128, 255), (128, 128, 128), (185, 170, 155),
)
_HEAD = ('<?xml version="1.0" encoding="UTF-8"?> <CaretExtension>  '
         '<Date><![CDATA[2013-07-14T05:45:09]]></Date>   <VolumeInformation Index="0">   <LabelTable>\n')
_TAIL = ('\n  </LabelTable>  <StudyMetaDataLinkSet>  </StudyMetaDataLinkSet>  '
         '<VolumeType><![CDATA[Label]]></VolumeType>   </VolumeInformation></CaretExtension>\n' + " " * 14)


def normalize_label_map(label_map: LabelMap, data: np.ndarray | None = None) -> dict[int, str]:
    """``{id: name}`` from a dict (kept in its order), a list of names (ids 1..n) or None (``L<v>`` for each
    non-zero value present in ``data``)."""
    if label_map is None:
        if data is None:
            raise ValueError("label_map None needs the image data to list the values present")
        values = np.unique(np.asarray(data))
        return {int(v): f"L{int(v)}" for v in values if v != 0}
    if isinstance(label_map, Mapping):
        return {int(k): str(v) for k, v in label_map.items()}
    return {i: str(name) for i, name in enumerate(label_map, start=1)}


def _cdata(text: str) -> str:
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def label_extension_xml(label_map: Mapping[int, str]) -> bytes:
    """The exact extension content for ``{id: name}`` (UTF-8 bytes)."""
    lines = []
    for key, name in label_map.items():
        r, g, b = (c / 255 for c in _PALETTE[int(key) % len(_PALETTE)])
        lines.append(f'<Label Key="{int(key)}" Red="{r}" Green="{g}" Blue="{b}" Alpha="1">{_cdata(name)}</Label>\n')
    return (_HEAD + "".join(lines) + _TAIL).encode("utf-8")


def parse_label_extension(content: bytes) -> dict[int, str] | None:
    """``{id: name}`` from one extension's content, or None if it is not a CaretExtension label table."""
    try:
        doc = xmltodict.parse(content.rstrip(b"\x00").decode("utf-8"))
    except Exception:
        return None
    caret = doc.get("CaretExtension") if isinstance(doc, dict) else None
    if not isinstance(caret, dict):
        return None
    volume = caret.get("VolumeInformation")
    table = volume.get("LabelTable") if isinstance(volume, dict) else None
    if table is None:
        return {} if isinstance(volume, dict) else None
    labels = table.get("Label", []) if isinstance(table, dict) else []
    if isinstance(labels, dict):
        labels = [labels]
    out: dict[int, str] = {}
    for label in labels:
        try:
            out[int(label["@Key"])] = label.get("#text") or ""
        except (KeyError, TypeError, ValueError):
            return None
    return out


def _is_label_extension(ext: Nifti1Extension) -> bool:
    return ext.get_code() == LABEL_EXTENSION_CODE and parse_label_extension(ext.get_content()) is not None


def remove_label_extensions(header: nib.Nifti1Header) -> None:
    """Drop every CaretExtension label table from ``header`` (other extensions stay)."""
    exts = header.extensions
    exts[:] = [e for e in exts if not _is_label_extension(e)]


def add_label_map_to_nifti(img: nib.Nifti1Image, label_map: LabelMap) -> nib.Nifti1Image:
    """Append the label-name extension to ``img``'s header (in place) and return ``img``.

    ``label_map``: ``{id: name}``, a list of names (ids 1..n) or None (``L<value>`` for each non-zero value in
    the data). A label extension already in the header is replaced, so there is never more than one.
    """
    data = np.asanyarray(img.dataobj) if label_map is None else None
    mapping = normalize_label_map(label_map, data)
    remove_label_extensions(img.header)
    img.header.extensions.append(Nifti1Extension(LABEL_EXTENSION_CODE, label_extension_xml(mapping)))
    return img


def read_label_map(img: nib.Nifti1Image) -> dict[int, str] | None:
    """The label map stored in ``img``'s header, or None when it has no label extension.

    All extensions are searched (the last label table wins); the official reader only parses the first
    extension and therefore fails on files whose input header carried extensions of its own.
    """
    found = None
    for ext in getattr(img.header, "extensions", ()):
        if ext.get_code() != LABEL_EXTENSION_CODE:
            continue
        parsed = parse_label_extension(ext.get_content())
        if parsed is not None:
            found = parsed
    return found


def load_multilabel_nifti(path_or_img: PathLike | nib.Nifti1Image) -> tuple[nib.Nifti1Image, dict[int, str]]:
    """Load a multilabel segmentation and its ``{id: name}`` label map.

    Raises InputImageError when the file cannot be read or carries no label-name extension.
    """
    if isinstance(path_or_img, nib.spatialimages.SpatialImage):
        img, source = path_or_img, "the image"
    else:
        path = Path(path_or_img)
        if not path.is_file():
            raise InputImageError(f"multilabel file not found: {path}")
        try:
            img = nib.load(str(path))
        except Exception as exc:
            raise InputImageError(f"cannot read {path} as a NIfTI image: {' '.join(str(exc).split())}") from None
        source = str(path)
    label_map = read_label_map(img)
    if label_map is None:
        raise InputImageError(f"{source} has no label-name header extension (not a multilabel output "
                              "written with --ml?)")
    return img, label_map


def save_multilabel_nifti(img: nib.Nifti1Image, path: PathLike, label_map: LabelMap) -> Path:
    """Add the label extension to ``img`` and write it atomically to ``path``."""
    from .nifti import save_nifti_atomic

    return save_nifti_atomic(add_label_map_to_nifti(img, label_map), path)
