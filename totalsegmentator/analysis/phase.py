"""Contrast phase of a CT from organ/vessel intensities (``totalseg_get_phase``, formats.md §17).

The official tool feeds 20 median intensities into xgboost regressors trained on its own data. Those model files
are not part of this project, so we estimate the post-injection time (``pi_time``, seconds after the start of an
intravenous bolus) from physiology instead:

* every structure has an expected enhancement curve ``HU(t)``: a piecewise-linear curve through knots read off
  the typical time–attenuation curves for a body-weight-adapted bolus (~1.5–2 mL/kg of 300–370 mgI/mL at
  3–5 mL/s) described in K. T. Bae, "Intravenous contrast medium administration and scan timing at CT",
  Radiology 256 (2010) 32–61, and D. Fleischmann & A. Kamaya, "Optimal vascular and parenchymal contrast
  enhancement: the current state of the art", Radiol. Clin. North Am. 47 (2009) 13–26: blood ~40 HU before
  contrast arrives; right heart and pulmonary veins first (~8–12 s), aorta and arteries from ~12–16 s with an
  arterial peak of ~300 HU around the end of the injection (~30 s); splenic/portal vein from ~20 s, peaking
  ~180–200 HU at 55–70 s; pancreas peaking ~110 HU at ~40 s ("pancreatic phase"); liver from ~58 HU rising
  to ~110 HU at 70–90 s; infrarenal IVC and iliac veins last (return from kidneys and legs); brain, bowel,
  gallbladder and bladder hardly change within the first minutes.
* the scan's dose/kV/cardiac output change the height of the curves more than their timing, so the model fits
  ``HU_i = base_i + a * (curve_i(t) - base_i)`` with one amplitude ``a`` (0.5–2, log-normal prior) per scan;
* ``t`` and ``a`` are found by an exhaustive search over a grid (0–300 s in 0.5 s, 31 amplitudes) minimising a
  Huber loss of the residuals scaled by a per-structure spread (inter-patient variability), so a single
  structure that is off (oral contrast in the bowel, a bad segmentation) cannot dominate;
* ``pi_time_min``/``pi_time_max``/``stddev`` come from leave-one-structure-out refits (the spread of the
  estimates when each available structure is left out in turn, full fit included).

Structures with volume 0 (not in the field of view) are left out. Phase and probability follow the official
thresholds on ``pi_time``. This is an interpretable estimate, not a trained classifier: expect ±10 s.
"""
from __future__ import annotations

import json
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from ..errors import InputImageError, OptionError

TOTAL_FEATURES = ("liver", "pancreas", "urinary_bladder", "gallbladder", "heart", "aorta", "inferior_vena_cava",
                  "portal_vein_and_splenic_vein", "iliac_vena_left", "iliac_vena_right", "iliac_artery_left",
                  "iliac_artery_right", "pulmonary_vein", "brain", "colon", "small_bowel")
HEADNECK_FEATURES = ("internal_carotid_artery_right", "internal_carotid_artery_left",
                     "internal_jugular_vein_right", "internal_jugular_vein_left")
BRAIN_VOLUME_THRESHOLD_MM3 = 100.0

_AORTA = ((0, 42), (12, 42), (16, 120), (22, 260), (30, 320), (38, 310), (50, 240), (70, 180), (90, 160),
          (120, 145), (180, 125), (300, 105))


def _shift(knots: tuple, dt: float, scale: float = 1.0) -> tuple:
    """A curve delayed by ``dt`` seconds with its enhancement scaled (arteries further from the heart)."""
    base = knots[0][1]
    return ((0, base),) + tuple((t + dt, base + scale * (hu - base)) for t, hu in knots[1:])


# name -> (knots (t s, HU), spread sigma in HU)
DEFAULT_CURVES: dict[str, tuple[tuple, float]] = {
    "aorta": (_AORTA, 35.0),
    "iliac_artery_left": (_shift(_AORTA, 2, 0.95), 40.0),
    "iliac_artery_right": (_shift(_AORTA, 2, 0.95), 40.0),
    "internal_carotid_artery_right": (_shift(_AORTA, 3, 0.95), 45.0),
    "internal_carotid_artery_left": (_shift(_AORTA, 3, 0.95), 45.0),
    "pulmonary_vein": (((0, 42), (7, 42), (11, 150), (18, 300), (26, 310), (34, 270), (46, 220), (66, 175),
                        (90, 158), (120, 145), (180, 125), (300, 105)), 40.0),
    "heart": (((0, 40), (5, 40), (10, 110), (16, 190), (24, 230), (32, 220), (45, 190), (65, 155), (90, 140),
               (120, 130), (180, 115), (300, 100)), 35.0),
    "portal_vein_and_splenic_vein": (((0, 42), (18, 42), (24, 70), (32, 130), (42, 175), (55, 195), (70, 185),
                                      (90, 170), (120, 150), (180, 130), (300, 110)), 30.0),
    "inferior_vena_cava": (((0, 42), (22, 42), (30, 60), (40, 90), (55, 125), (70, 140), (90, 145), (120, 140),
                            (180, 125), (300, 110)), 30.0),
    "iliac_vena_left": (((0, 42), (40, 42), (55, 70), (70, 100), (90, 125), (120, 135), (180, 125),
                         (300, 110)), 30.0),
    "iliac_vena_right": (((0, 42), (40, 42), (55, 70), (70, 100), (90, 125), (120, 135), (180, 125),
                          (300, 110)), 30.0),
    "internal_jugular_vein_right": (((0, 42), (20, 42), (26, 120), (34, 220), (45, 220), (60, 185), (80, 160),
                                     (120, 140), (180, 125), (300, 105)), 45.0),
    "internal_jugular_vein_left": (((0, 42), (20, 42), (26, 120), (34, 220), (45, 220), (60, 185), (80, 160),
                                    (120, 140), (180, 125), (300, 105)), 45.0),
    "liver": (((0, 58), (20, 58), (30, 65), (40, 75), (55, 95), (70, 108), (90, 110), (120, 105), (180, 95),
               (300, 85)), 12.0),
    "pancreas": (((0, 42), (18, 42), (28, 80), (38, 115), (50, 112), (70, 100), (100, 90), (180, 80),
                  (300, 70)), 15.0),
    "brain": (((0, 33), (15, 33), (30, 38), (60, 40), (300, 38)), 6.0),
    "gallbladder": (((0, 12), (300, 12)), 15.0),
    "urinary_bladder": (((0, 12), (120, 12), (300, 40)), 15.0),
    "colon": (((0, 25), (20, 25), (70, 35), (300, 32)), 20.0),
    "small_bowel": (((0, 30), (20, 30), (45, 60), (70, 60), (300, 45)), 20.0),
}

TIME_GRID = np.arange(0.0, 300.0 + 1e-9, 0.5)
AMPLITUDE_GRID = np.geomspace(0.5, 2.0, 31)
AMPLITUDE_LOG_SD = 0.35
HUBER_DELTA = 2.0


@dataclass(frozen=True)
class _Curve:
    times: np.ndarray
    values: np.ndarray
    sigma: float

    @property
    def base(self) -> float:
        return float(self.values[0])


def pi_time_to_phase(pi_time: float) -> tuple[str, float]:
    """(phase, probability) from the post-injection time, with the official thresholds."""
    for limit, phase, prob in ((5, "native", 1.0), (10, "native", 0.7), (20, "arterial_early", 0.7),
                               (30, "arterial_early", 1.0), (50, "arterial_late", 1.0), (60, "arterial_late", 0.7),
                               (90, "portal_venous", 1.0), (100, "portal_venous", 0.7)):
        if pi_time < limit:
            return phase, prob
    return "portal_venous", 0.3


def load_curves(path: str | Path | None = None) -> dict[str, _Curve]:
    """The built-in curves, or a JSON table ``{name: {"knots": [[t, HU], ...], "sigma": s}}`` (``-m``)."""
    if path is None:
        table = {k: {"knots": knots, "sigma": sigma} for k, (knots, sigma) in DEFAULT_CURVES.items()}
    else:
        try:
            table = json.loads(Path(path).read_text())
            if not isinstance(table, dict):
                raise ValueError("not an object")
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise OptionError(f"-m expects a JSON curve table ({{name: {{knots, sigma}}}}); "
                              f"cannot use {path}: {e}") from None
    curves = {}
    for name, spec in table.items():
        knots = np.asarray(spec["knots"], dtype=float)
        if knots.ndim != 2 or knots.shape[1] != 2 or np.any(np.diff(knots[:, 0]) <= 0) or float(spec["sigma"]) <= 0:
            raise OptionError(f"invalid curve for {name!r}: knots must be increasing [t, HU] pairs, sigma > 0")
        curves[name] = _Curve(knots[:, 0], knots[:, 1], float(spec["sigma"]))
    return curves


def _huber(z: np.ndarray) -> np.ndarray:
    a = np.abs(z)
    return np.where(a <= HUBER_DELTA, 0.5 * z * z, HUBER_DELTA * (a - 0.5 * HUBER_DELTA))


def _cost_table(names: list[str], values: np.ndarray, curves: Mapping[str, _Curve]) -> np.ndarray:
    """Per-structure loss over the (time, amplitude) grid: shape (n_structures, n_times, n_amplitudes)."""
    out = np.empty((len(names), len(TIME_GRID), len(AMPLITUDE_GRID)))
    for i, name in enumerate(names):
        c = curves[name]
        enh = np.interp(TIME_GRID, c.times, c.values) - c.base
        pred = c.base + enh[:, None] * AMPLITUDE_GRID[None, :]
        out[i] = _huber((values[i] - pred) / c.sigma)
    return out


def _argmin_time(costs: np.ndarray, prior: np.ndarray) -> float:
    total = costs.sum(axis=0) + prior[None, :]
    ti, _ = np.unravel_index(np.argmin(total), total.shape)  # first minimum: earliest time on ties
    return float(TIME_GRID[ti])


def phase_from_intensities(features: Mapping[str, float | None], curves: Mapping[str, _Curve] | None = None
                           ) -> dict[str, Any]:
    """Estimate ``pi_time`` and the phase from median HU per structure (missing/None/NaN entries ignored).

    Returns ``{"pi_time", "phase", "probability", "pi_time_min", "pi_time_max", "stddev"}``.
    """
    curves = load_curves() if curves is None else curves
    names = [n for n, v in features.items()
             if n in curves and v is not None and np.isfinite(float(v))]
    if not names:
        raise InputImageError("no usable structure intensities for the phase estimate "
                              f"(need some of: {', '.join(TOTAL_FEATURES)})")
    values = np.array([float(features[n]) for n in names])
    costs = _cost_table(names, values, curves)
    prior = 0.5 * (np.log(AMPLITUDE_GRID) / AMPLITUDE_LOG_SD) ** 2
    pi_time = _argmin_time(costs, prior)
    estimates = [pi_time]
    if len(names) > 1:
        total = costs.sum(axis=0)
        estimates += [_argmin_time((total - costs[i])[None], prior) for i in range(len(names))]
    phase, probability = pi_time_to_phase(pi_time)
    return {
        "pi_time": round(pi_time, 2),
        "phase": phase,
        "probability": probability,
        "pi_time_min": round(min(estimates), 2),
        "pi_time_max": round(max(estimates), 2),
        "stddev": round(float(np.std(estimates)), 4),
    }


def features_from_statistics(stats: Mapping[str, Mapping[str, float]], names: tuple[str, ...] = TOTAL_FEATURES,
                             require: bool = True) -> dict[str, float | None]:
    """Median intensities from a statistics dict; classes with volume 0 (absent) become None."""
    missing = [n for n in names if n not in stats]
    if missing and require:
        raise InputImageError(f"statistics lack the classes {', '.join(missing)} needed for the phase estimate")
    out: dict[str, float | None] = {}
    for n in names:
        entry = stats.get(n)
        if entry is None:
            continue
        out[n] = float(entry["intensity"]) if float(entry.get("volume", 1.0)) > 0 else None
    return out


def _load_stats(existing_stats: str | Path | Mapping | None) -> dict | None:
    if existing_stats is None or isinstance(existing_stats, Mapping):
        return existing_stats
    try:
        return json.loads(Path(existing_stats).read_text())
    except (OSError, ValueError) as e:
        raise InputImageError(f"cannot read statistics file {existing_stats}: {e}") from None


def _segment_stats(image: Any, task: str, fast: bool, device: str, quiet: bool, debug: bool) -> dict:
    from ..python_api import totalsegmentator  # lazy: the pipeline is heavy and optional for tests

    kwargs = dict(ml=True, task=task, fast=fast, statistics=True, stats_aggregation="median",
                  statistics_exclude_masks_at_border=False, device=device, quiet=quiet, debug=debug)
    if fast:
        kwargs["save_lowres"] = True
    _, stats = totalsegmentator(image, None, **kwargs)
    return stats


def _as_input(ct_img: Any, f_type: str, tmp: Path) -> Any:
    """Bytes (web-service style) are written to a temp file named after ``f_type``; paths/images pass through."""
    if isinstance(ct_img, (bytes, bytearray)):
        suffix = {"niigz": ".nii.gz", "nii.gz": ".nii.gz", "nii": ".nii", "zip": ".zip", "dicom": ".zip"}.get(f_type)
        if suffix is None:
            raise OptionError(f"unknown input type {f_type!r} (niigz, nii or zip)")
        path = tmp / f"ct{suffix}"
        path.write_bytes(bytes(ct_img))
        return str(path)
    if isinstance(ct_img, (str, Path)):
        if not Path(ct_img).exists():
            raise InputImageError(f"input not found: {ct_img}")
        return str(ct_img)
    return ct_img


def get_ct_contrast_phase(ct_img: Any, f_type: str = "niigz", model_file: str | Path | None = None,
                          quiet: bool = False, device: str = "gpu", existing_stats: Any = None,
                          call_via_subprocess: bool = False, debug: bool = False) -> Iterator[dict[str, Any]]:
    """Generator of progress dicts ``{"id", "progress", "status"}``; the last one carries ``"result"``.

    ``existing_stats``: a statistics dict/JSON file of a ``total`` run (median intensities) to skip the
    segmentation. ``call_via_subprocess`` is accepted for compatibility; the Python API is always used.
    """
    job = uuid.uuid4().hex
    curves = load_curves(model_file)
    yield {"id": job, "progress": 2, "status": "starting"}
    with tempfile.TemporaryDirectory(prefix="totalseg_phase_") as tmp:
        stats = _load_stats(existing_stats)
        image = None
        if stats is None:
            image = _as_input(ct_img, f_type, Path(tmp))
            yield {"id": job, "progress": 10, "status": "segmenting organs (total, fast)"}
            stats = _segment_stats(image, "total", True, device, quiet, debug)
        features = features_from_statistics(stats)
        brain_volume = float(stats.get("brain", {}).get("volume", 0.0))
        if all(k in stats for k in HEADNECK_FEATURES):
            features.update(features_from_statistics(stats, HEADNECK_FEATURES))
        elif brain_volume > BRAIN_VOLUME_THRESHOLD_MM3 and ct_img is not None:
            image = image if image is not None else _as_input(ct_img, f_type, Path(tmp))
            yield {"id": job, "progress": 50, "status": "segmenting head/neck vessels"}
            hn = _segment_stats(image, "headneck_bones_vessels", False, device, quiet, debug)
            features.update(features_from_statistics(hn, HEADNECK_FEATURES))
    yield {"id": job, "progress": 85, "status": "estimating phase"}
    result = phase_from_intensities(features, curves)
    yield {"id": job, "progress": 100, "status": "done", "result": result}


def get_phase(ct_img: Any, **kwargs: Any) -> dict[str, Any]:
    """Run :func:`get_ct_contrast_phase` to the end and return its result dict."""
    result = None
    for step in get_ct_contrast_phase(ct_img, **kwargs):
        result = step.get("result", result)
    assert result is not None
    return result
