"""``TotalSegmentator``: the main command line, with the official flags, aliases and defaults.

The command parses the flags, checks every option combination (``Options.validated()``) and only then imports
the segmentation pipeline, so a wrong command line fails fast with one line and exit code 2.
"""
from __future__ import annotations

import argparse
import sys
import zipfile
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from .. import __version__
from ..options import COMPILE_MODES, OUTPUT_TYPE_ALIASES, OUTPUT_TYPES, PRECISIONS, Options, is_nifti_path
from ..registry import TASKS, format_classes_table, format_tasks_table, get_task
from ._common import EXIT_OK, OneLineParser, absolute_path, last_run_of_process, print_warning, run_command, task_name

PROG = "TotalSegmentator"
# CLI-only: the DICOM Modality tag switches between the CT and MR variants of the main task.
MODALITY_SWITCH: dict[tuple[str, str], str] = {("total", "MR"): "total_mr", ("total_mr", "CT"): "total"}
MAX_DICOM_PROBES = 50  # files tried when looking for a readable DICOM header


def _output_types(value: str) -> list[str]:
    """One ``-ot`` value, possibly comma separated, as canonical names."""
    out = []
    for piece in value.split(","):
        name = piece.strip().lower()
        if not name:
            continue
        name = OUTPUT_TYPE_ALIASES.get(name, name)
        if name not in OUTPUT_TYPES:
            raise argparse.ArgumentTypeError(
                f"invalid output type '{piece.strip()}' (choose from {', '.join(OUTPUT_TYPES)}, or dicom)")
        out.append(name)
    if not out:
        raise argparse.ArgumentTypeError(f"empty output type (choose from {', '.join(OUTPUT_TYPES)})")
    return out


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a number") from None
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a volume in mm3 greater than 0, not {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every official flag (names, aliases, defaults, metavars, choices)."""
    p = OneLineParser(
        prog=PROG,
        description="Segment 104 anatomical structures in CT images (and many more with other tasks: "
                    "see --list-tasks).",
        epilog="Academic license for the licensed tasks: https://backend.totalsegmentator.com/license-academic/",
    )
    p.add_argument("-i", metavar="filepath", dest="input", type=absolute_path, default=None,
                   help="input image: a NIfTI file (.nii/.nii.gz), a folder of DICOM slices or a .zip of them")
    p.add_argument("-o", metavar="directory", dest="output", type=absolute_path, default=None,
                   help="output folder (one file per class), or the output file with --ml or DICOM output")
    p.add_argument("-ot", "--output_type", type=_output_types, nargs="+", default=None,
                   help="output format(s): nifti (default), dicom_rtstruct (alias dicom), dicom_seg; "
                        "several formats may be given, also comma separated")
    p.add_argument("-ml", "--ml", action="store_true", default=False,
                   help="write one multilabel NIfTI file instead of one file per class")
    p.add_argument("-nr", "--nr_thr_resamp", type=int, default=1,
                   help="number of workers for resampling (default: 1)")
    p.add_argument("-ro", "--resampling_order", type=int, default=1, choices=range(0, 6),
                   help="spline order (0-5) for resampling the input image to the model spacing (default: 1)")
    p.add_argument("-ns", "--nr_thr_saving", type=int, default=6,
                   help="number of workers for writing the per-class files (default: 6)")
    p.add_argument("-f", "--fast", action="store_true", default=False,
                   help="use the faster, lower resolution (3 mm) model")
    p.add_argument("-ff", "--fastest", action="store_true", default=False,
                   help="use the fastest, lowest resolution (6 mm) model")
    p.add_argument("-sl", "--save_lowres", action="store_true", default=False,
                   help="with --fast/--fastest: keep the result at model resolution (no upsampling)")
    p.add_argument("-t", "--nora_tag", type=str, default="None",
                   help="nora project tag (accepted for compatibility; nora tagging is not supported)")
    p.add_argument("-p", "--preview", action="store_true", default=False,
                   help="write a PNG preview of the segmentation")
    p.add_argument("-ta", "--task", type=task_name, choices=TASKS, metavar="task", default="total",
                   help="task to run (default: total); see --list-tasks")
    p.add_argument("-ms", "--model_size", choices=["big", "small"], default="big",
                   help="model size for task total_v3 (default: big)")
    p.add_argument("-rs", "--roi_subset", type=str, nargs="+", default=None,
                   help="only segment these classes (tasks total*, e.g. -rs liver spleen); faster")
    p.add_argument("-rsr", "--roi_subset_robust", type=str, nargs="+", default=None,
                   help="like --roi_subset but crops with the more robust 3 mm rough model")
    p.add_argument("-rc", "--robust_crop", action="store_true", default=False,
                   help="crop with the 3 mm instead of the 6 mm rough model")
    p.add_argument("--higher_order_resampling_LEGACY", "--high_order_resampling_LEGACY",
                   dest="higher_order_resampling_LEGACY", action="store_true", default=False,
                   help="upsample the result with per-label linear interpolation instead of nearest neighbour")
    p.add_argument("-ho", "--higher_order_resampling", "--high_order_resampling",
                   dest="higher_order_resampling", action="store_true", default=False,
                   help="let nnU-Net resample (memory-light cropped logits export); disables --save_lowres")
    p.add_argument("-s", "--statistics", nargs="?", const=True, default=False, type=absolute_path,
                   metavar="filepath",
                   help="write volume and mean intensity per class to statistics.json (or to the given path)")
    p.add_argument("-r", "--radiomics", action="store_true", default=False,
                   help="write radiomics features per class (needs pyradiomics)")
    p.add_argument("-rp", "--report", type=absolute_path, default=None, metavar="filepath",
                   help="write a JSON report of the run to this file")
    p.add_argument("-sii", "--stats_include_incomplete", action="store_true", default=False,
                   help="also compute statistics for classes touching the image border")
    p.add_argument("-sa", "--stats_aggregation", choices=["mean", "median"], default="mean",
                   help="how intensities inside a mask are aggregated (default: mean)")
    p.add_argument("-sx", "--statistics_extra", action="store_true", default=False,
                   help="add voxel count, intensity std/min/max, centroid and bounding box to the statistics")
    p.add_argument("-cp", "--crop_path", type=absolute_path, default=None,
                   help="legacy crop mask location (no effect)")
    p.add_argument("-bs", "--body_seg", action="store_true", default=False,
                   help="crop the image to the body first (faster on images with much air)")
    p.add_argument("-fs", "--force_split", action="store_true", default=False,
                   help="process the image in three overlapping chunks (less memory)")
    p.add_argument("-ss", "--skip_saving", action="store_true", default=False,
                   help="do not write segmentation files (e.g. when only statistics are wanted)")
    p.add_argument("-ndm", "--no_derived_masks", action="store_true", default=False,
                   help="do not write the derived body.nii.gz and skin.nii.gz for task body")
    p.add_argument("-v1o", "--v1_order", action="store_true", default=False,
                   help="task total: use the label order of TotalSegmentator v1")
    p.add_argument("-rmb", "--remove_small_blobs", nargs="?", const=200.0, default=False, type=_positive_float,
                   metavar="mm3", help="remove connected components smaller than this volume (default 200 mm3)")
    p.add_argument("-d", "--device", type=str, default="gpu",
                   help="device: gpu, cpu, mps or gpu:N (default: gpu; falls back to cpu without CUDA)")
    p.add_argument("-q", "--quiet", action="store_true", default=False, help="print nothing but errors")
    p.add_argument("-sp", "--save_probabilities", type=absolute_path, default=None,
                   help="also save the model probabilities (.npz and .pkl) to this path")
    p.add_argument("-v", "--verbose", action="store_true", default=False,
                   help="more output, including tracebacks of errors")
    p.add_argument("--debug", action="store_true", default=False,
                   help="print input, task and dataset when the prediction fails")
    p.add_argument("-l", "--license_number", type=str, default=None,
                   help="store this license number (needed for licensed tasks)")
    p.add_argument("--test", type=int, choices=[0, 1, 3], default=0, metavar="0|1|3",
                   help="internal test mode; do not use")
    p.add_argument("-lt", "--list-tasks", dest="list_tasks", action="store_true", default=False,
                   help="list all tasks and exit")
    p.add_argument("-lc", "--list-classes", dest="list_classes", nargs="?", const="total", default=None,
                   type=task_name, metavar="task", help="list the classes of a task (default: total) and exit")
    p.add_argument("--series_uid", type=str, default=None,
                   help="DICOM folder with several series: the SeriesInstanceUID to segment (extension)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="network precision (extension): auto (default; float32 on the CPU, float16 autocast on "
                        "CUDA), fp32, exact (nnU-Net's own arithmetic, bit for bit), fp16 or bf16; default from "
                        "$TOTALSEG_PRECISION")
    p.add_argument("--compile", choices=COMPILE_MODES, default=None,
                   help="torch.compile the networks (extension): auto (default; on the CPU when a model runs on "
                        "many tiles), on or off; default from $TOTALSEG_COMPILE")
    p.add_argument("--version", action="version", version=__version__)
    return p


def _candidate_files(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
        return
    files = sorted(f for f in path.rglob("*") if f.is_file())
    yield from (f for f in files if f.suffix.lower() == ".dcm")
    yield from (f for f in files if f.suffix.lower() != ".dcm")


def dicom_modality(path: Path, series_uid: str | None = None) -> str | None:
    """The ``Modality`` tag of the first readable DICOM file in a folder, zip or file; None if none is found."""
    import pydicom

    def matches(ds: Any) -> bool:
        return series_uid is None or str(getattr(ds, "SeriesInstanceUID", "")) == series_uid

    try:
        if path.is_file() and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = sorted(n for n in zf.namelist() if not n.endswith("/"))
                names = [n for n in names if n.lower().endswith(".dcm")] + \
                        [n for n in names if not n.lower().endswith(".dcm")]
                for name in names[:MAX_DICOM_PROBES]:
                    try:
                        with zf.open(name) as f:
                            ds = pydicom.dcmread(f, stop_before_pixels=True)
                    except Exception:  # noqa: BLE001 - not a DICOM file: try the next one
                        continue
                    if "Modality" in ds and matches(ds):
                        return str(ds.Modality).strip().upper()
            return None
        for i, f in enumerate(_candidate_files(path)):
            if i >= MAX_DICOM_PROBES:
                break
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - not a DICOM file: try the next one
                continue
            if "Modality" in ds and matches(ds):
                return str(ds.Modality).strip().upper()
    except Exception:  # noqa: BLE001 - the switch is a convenience; any failure leaves the task as given
        return None
    return None


def switch_task_for_modality(task: str, input_path: Path | None, series_uid: str | None = None) -> str | None:
    """The task to use instead of ``task`` for a DICOM input of the other modality, else None."""
    if input_path is None or is_nifti_path(input_path) or not input_path.exists():
        return None
    if not any(key[0] == task for key in MODALITY_SWITCH):
        return None
    modality = dicom_modality(input_path, series_uid)
    return MODALITY_SWITCH.get((task, modality or ""))


def api_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments the command passes to ``totalsegmentator()`` (never ``plans``)."""
    output_type: str | list[str] = "nifti"
    if args.output_type:
        flat: list[str] = []
        for names in args.output_type:
            flat += [n for n in names if n not in flat]
        output_type = flat[0] if len(flat) == 1 else flat
    kwargs: dict[str, Any] = dict(
        input=args.input, output=args.output, ml=args.ml, nr_thr_resamp=args.nr_thr_resamp,
        nr_thr_saving=args.nr_thr_saving, fast=args.fast, nora_tag=args.nora_tag, preview=args.preview,
        task=args.task, roi_subset=args.roi_subset, statistics=args.statistics, radiomics=args.radiomics,
        crop_path=args.crop_path, body_seg=args.body_seg, force_split=args.force_split, output_type=output_type,
        quiet=args.quiet, verbose=args.verbose, test=args.test, skip_saving=args.skip_saving,
        device=args.device, license_number=args.license_number,
        statistics_exclude_masks_at_border=not args.stats_include_incomplete,
        no_derived_masks=args.no_derived_masks, v1_order=args.v1_order, fastest=args.fastest,
        roi_subset_robust=args.roi_subset_robust, stats_aggregation=args.stats_aggregation,
        remove_small_blobs=args.remove_small_blobs, statistics_normalized_intensities=False,
        robust_crop=args.robust_crop, higher_order_resampling_LEGACY=args.higher_order_resampling_LEGACY,
        higher_order_resampling=args.higher_order_resampling, save_probabilities=args.save_probabilities,
        debug=args.debug, report=args.report, statistics_extra=args.statistics_extra,
        save_lowres=args.save_lowres, resampling_order=args.resampling_order, model_size=args.model_size,
    )
    for name in ("series_uid", "precision", "compile"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    return kwargs


def answer_listing(args: argparse.Namespace) -> bool:
    """Print the task list (``-lt``) or a task's classes (``-lc``) when asked; True when something was listed."""
    if args.list_tasks:
        print(format_tasks_table())
        return True
    if args.list_classes is not None:
        print(format_classes_table(args.list_classes))
        return True
    return False


def require_input_output(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The usage error argparse gives for required flags, when ``-i`` or ``-o`` is missing."""
    missing = [flag for flag, value in (("-i", args.input), ("-o", args.output)) if value is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if answer_listing(args):
        return EXIT_OK
    require_input_output(parser, args)

    new_task = switch_task_for_modality(args.task, args.input, args.series_uid)
    if new_task is not None:
        if not args.quiet:
            print_warning(PROG, f"the DICOM input is {get_task(new_task).modality}; "
                                f"switching task '{args.task}' to '{new_task}'")
        args.task = new_task

    kwargs = api_kwargs_from_args(args)
    Options(**kwargs).validated()  # fails here, before the heavy imports below

    with last_run_of_process():
        from ..python_api import totalsegmentator  # noqa: PLC0415 - imports torch/nnU-Net: only after validation

        totalsegmentator(**kwargs)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``TotalSegmentator`` command; returns the exit code."""
    parser = build_parser()  # _run() calls parser.error() for missing -i/-o
    return run_command(PROG, parser, partial(_run, parser), argv, verbose_flags=("verbose",),
                       exit_in_body_is_code=True)


if __name__ == "__main__":
    sys.exit(main())
