"""Weights download, resume, locking, archive safety, import, license handling and the weights CLIs.

Downloads go to a real HTTP server on 127.0.0.1 (tests/_http_server.py) that serves zips built here.
"""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import random
import socket
import stat
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from totalsegmentator import __version__, config, registry, weights
from totalsegmentator.bin import (
    totalseg_download_weights,
    totalseg_import_weights,
    totalseg_set_license,
    totalseg_setup_manually,
)
from totalsegmentator.errors import LicenseError, UnknownTaskError, WeightsError

sys.path.insert(0, str(Path(__file__).parent))
from _http_server import FileServer  # noqa: E402

TRAINER_DIR = "nnUNetTrainer__nnUNetPlans__3d_fullres"
LICENSE = "aca_ABCDEFGHIJ1234"


def folder_of(dataset_id) -> str:
    return registry.get_dataset(dataset_id).folder


def dataset_files(folder: str, size: int = 50_000, seed: int = 0) -> dict[str, bytes]:
    """Relative path -> content of a small fake nnU-Net results folder named ``folder``."""
    rng = random.Random(seed)
    return {
        f"{folder}/{TRAINER_DIR}/dataset.json": json.dumps({"labels": {"background": 0, "a": 1}}).encode(),
        f"{folder}/{TRAINER_DIR}/plans.json": json.dumps({"plans_name": "nnUNetPlans"}).encode(),
        f"{folder}/{TRAINER_DIR}/fold_0/checkpoint_final.pth": rng.randbytes(size),
    }


def make_zip(files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        for name, link_target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, link_target)
    return buf.getvalue()


def tree(root: Path) -> dict[str, bytes]:
    """Relative path -> content of every file, leaving out our hidden bookkeeping (``.locks``, ``.downloads``)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}


def leftovers(wdir: Path) -> list[str]:
    """Temp folders and partial downloads that must not survive a successful install."""
    found = [p.name for p in wdir.glob(".unpack_*")] + [p.name for p in wdir.glob(".import_*")]
    found += [p.name for p in wdir.glob(".old_*")]
    if (wdir / ".downloads").is_dir():
        found += [p.name for p in (wdir / ".downloads").iterdir()]
    return found


def zip_path(dataset_id) -> str:
    return f"/{Path(folder_of(dataset_id)).name}.zip"


@pytest.fixture
def server():
    with FileServer() as srv:
        yield srv


@pytest.fixture
def wdir(totalseg_home) -> Path:
    return totalseg_home / "nnunet" / "results"


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setattr(weights, "RETRY_WAIT_S", 0.0)
    monkeypatch.setattr(weights, "MAX_ATTEMPTS", 3)
    monkeypatch.setattr(weights, "CONNECT_TIMEOUT_S", 2.0)
    monkeypatch.setattr(weights, "READ_TIMEOUT_S", 5.0)
    monkeypatch.setattr(weights, "LICENSE_READ_TIMEOUT_S", 5.0)


@pytest.fixture
def local(monkeypatch, server, fast, wdir):
    """Every open dataset URL and the license server point at the local server."""
    def get_dataset(dataset_id):
        ds = registry.get_dataset(dataset_id)
        return replace(ds, url=server.url(zip_path(dataset_id))) if ds.url else ds

    monkeypatch.setattr(weights, "get_dataset", get_dataset)
    monkeypatch.setattr(weights, "license_server_url", lambda: server.url("/download_weights"))
    return server


def serve_dataset(server: FileServer, dataset_id, **behaviour) -> dict[str, bytes]:
    files = dataset_files(folder_of(dataset_id))
    server.add(zip_path(dataset_id), make_zip(files), **behaviour)
    return files


def expected_tree(files: dict[str, bytes], folder: str) -> dict[str, bytes]:
    return {name[len(folder) + 1:]: data for name, data in files.items()}


def store_license(number: str = LICENSE) -> None:
    config.update_config(license_number=number)


# ----------------------------------------------------------------------------------------------- download

def test_download_installs_dataset_with_progress(local, wdir, capsys):
    files = serve_dataset(local, 291)
    path = weights.ensure_dataset(291)
    assert path == wdir / folder_of(291)
    assert tree(path) == expected_tree(files, folder_of(291))
    err = capsys.readouterr().err
    assert folder_of(291) in err and "100%" in err
    assert leftovers(wdir) == []
    assert [r.method for r in local.requests] == ["GET"]
    assert "Range" not in local.requests[0].headers
    # installed now: no second request
    assert weights.ensure_dataset(291, quiet=True) == path
    assert len(local.requests) == 1


def test_quiet_download_prints_nothing(local, capsys):
    serve_dataset(local, 8)
    weights.ensure_dataset(8, quiet=True)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_resume_after_dropped_connection(local, wdir):
    files = serve_dataset(local, 292, drop_after=20_000)
    path = weights.ensure_dataset(292, quiet=True)
    reqs = local.requests_for(zip_path(292))
    assert len(reqs) == 2
    assert "Range" not in reqs[0].headers
    assert reqs[1].headers["Range"] == "bytes=20000-"
    assert tree(path) == expected_tree(files, folder_of(292))
    assert leftovers(wdir) == []


def test_partial_file_survives_failure_and_is_resumed_next_run(local, wdir, monkeypatch):
    files = serve_dataset(local, 293, drop_after=30_000)
    monkeypatch.setattr(weights, "MAX_ATTEMPTS", 1)
    with pytest.raises(WeightsError, match="run again to resume"):
        weights.ensure_dataset(293, quiet=True)
    assert not (wdir / folder_of(293)).exists()
    part = wdir / ".downloads" / f"{folder_of(293)}.zip.part"
    assert part.stat().st_size == 30_000
    assert not list(wdir.glob(".unpack_*"))

    path = weights.ensure_dataset(293, quiet=True)
    reqs = local.requests_for(zip_path(293))
    assert reqs[-1].headers["Range"] == "bytes=30000-"
    assert tree(path) == expected_tree(files, folder_of(293))
    assert leftovers(wdir) == []


def test_server_without_range_support_restarts_from_zero(local, wdir):
    files = serve_dataset(local, 294, drop_after=10_000, ranges=False)
    path = weights.ensure_dataset(294, quiet=True)
    reqs = local.requests_for(zip_path(294))
    assert len(reqs) == 2 and reqs[1].headers.get("Range") == "bytes=10000-"
    assert tree(path) == expected_tree(files, folder_of(294))


def test_truncated_body_is_detected(local, wdir):
    serve_dataset(local, 295, extra_length=5000)  # announces 5000 bytes it never sends
    with pytest.raises(WeightsError) as info:
        weights.ensure_dataset(295, quiet=True)
    msg = str(info.value)
    assert "\n" not in msg and local.url(zip_path(295)) in msg and "totalseg_import_weights" in msg
    assert "closed before all bytes arrived" in msg
    assert not (wdir / folder_of(295)).exists()
    assert len(local.requests_for(zip_path(295))) == weights.MAX_ATTEMPTS
    assert not list(wdir.glob(".unpack_*"))


def test_http_error_names_url_and_manual_install(local, wdir):
    local.add(zip_path(297), b"", status=500, error_message="boom")
    with pytest.raises(WeightsError) as info:
        weights.ensure_dataset(297, quiet=True)
    msg = str(info.value)
    assert "HTTP 500" in msg and local.url(zip_path(297)) in msg and "TOTALSEG_WEIGHTS_PATH" in msg
    assert "\n" not in msg
    assert not (wdir / folder_of(297)).exists()


def test_missing_file_404(local, wdir):
    with pytest.raises(WeightsError, match="HTTP 404"):
        weights.ensure_dataset(298, quiet=True)


def test_server_down_gives_one_line_error(monkeypatch, fast, totalseg_home):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/weights"
    monkeypatch.setenv(weights.BASE_URL_ENV, url)
    with pytest.raises(WeightsError) as info:
        weights.ensure_dataset(291, quiet=True)
    msg = str(info.value)
    assert f"{url}/{folder_of(291)}.zip" in msg
    assert "connection refused" in msg and "totalseg_import_weights -i" in msg and "\n" not in msg


def test_dns_failure_gives_one_line_error(local, monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(WeightsError) as info:
        weights.ensure_dataset(291, quiet=True)
    msg = str(info.value)
    assert "could not be resolved" in msg and local.url(zip_path(291)) in msg and "\n" not in msg


def test_temporary_server_error_is_retried(local, wdir):
    served = local.add(zip_path(291), b"", status=503)
    with pytest.raises(WeightsError, match="HTTP 503"):
        weights.ensure_dataset(291, quiet=True)
    assert len(local.requests_for(zip_path(291))) == weights.MAX_ATTEMPTS
    served.status = 200
    served.data = make_zip(dataset_files(folder_of(291)))
    assert weights.ensure_dataset(291, quiet=True).is_dir()


def test_complete_partial_file_is_unpacked_without_downloading_again(local, wdir):
    """A run that got every byte but died before unpacking: the server answers the resume with 416."""
    files = serve_dataset(local, 291)
    part = wdir / ".downloads" / f"{folder_of(291)}.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(local.files[zip_path(291)].data)
    (part.parent / (part.name + ".json")).write_text(json.dumps({"url": local.url(zip_path(291))}))
    path = weights.ensure_dataset(291, quiet=True)
    (req,) = local.requests
    assert req.headers["Range"] == f"bytes={len(local.files[zip_path(291)].data)}-"
    assert tree(path) == expected_tree(files, folder_of(291))
    assert leftovers(wdir) == []


def test_partial_file_from_another_source_is_not_resumed(local, wdir):
    files = serve_dataset(local, 291)
    part = wdir / ".downloads" / f"{folder_of(291)}.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 1000)
    (part.parent / (part.name + ".json")).write_text(json.dumps({"url": "http://elsewhere/x.zip"}))
    path = weights.ensure_dataset(291, quiet=True)
    assert "Range" not in local.requests[0].headers
    assert tree(path) == expected_tree(files, folder_of(291))


def test_garbage_instead_of_zip(local, wdir):
    local.add(zip_path(299), b"<html>not a zip</html>" * 10)
    with pytest.raises(WeightsError, match="not a valid zip"):
        weights.ensure_dataset(299, quiet=True)
    assert not (wdir / folder_of(299)).exists()
    assert leftovers(wdir) == []  # a complete but unusable file is not kept for resuming


def test_unpack_failure_of_our_own_keeps_the_download(local, wdir, monkeypatch):
    files = serve_dataset(local, 291)
    real_extract, calls = weights._extract, []

    def disk_full_once(*args):
        calls.append(args)
        if len(calls) == 1:
            raise WeightsError("could not unpack: No space left on device")
        real_extract(*args)

    monkeypatch.setattr(weights, "_extract", disk_full_once)
    with pytest.raises(WeightsError, match="No space left"):
        weights.ensure_dataset(291, quiet=True)
    part = wdir / ".downloads" / f"{folder_of(291)}.zip.part"
    assert part.read_bytes() == local.files[zip_path(291)].data
    assert not (wdir / folder_of(291)).exists() and not list(wdir.glob(".unpack_*"))

    path = weights.ensure_dataset(291, quiet=True)
    assert tree(path) == expected_tree(files, folder_of(291))
    assert local.requests[-1].headers["Range"] == f"bytes={len(local.files[zip_path(291)].data)}-"
    assert leftovers(wdir) == []


def test_zip_without_dataset_folder(local, wdir):
    local.add(zip_path(300), make_zip({"something_else/x.txt": b"x"}))
    with pytest.raises(WeightsError, match="does not contain the folder"):
        weights.ensure_dataset(300, quiet=True)
    assert not (wdir / folder_of(300)).exists()


def test_nnunet_folder_without_dataset_json_is_refused(local, wdir):
    local.add(zip_path(300), make_zip({f"{folder_of(300)}/{TRAINER_DIR}/fold_0/checkpoint_final.pth": b"x"}))
    with pytest.raises(WeightsError, match="dataset.json"):
        weights.ensure_dataset(300, quiet=True)
    assert not (wdir / folder_of(300)).exists()


def test_placeholder_dataset_has_no_download(local):
    with pytest.raises(WeightsError, match="no public download"):
        weights.ensure_dataset(955, quiet=True)
    assert local.requests == []


def test_mirror_env_var(server, fast, wdir, monkeypatch):
    files = serve_dataset(server, 8)
    monkeypatch.setenv(weights.BASE_URL_ENV, server.url("/") + "/")
    path = weights.ensure_dataset(8, quiet=True)
    assert tree(path) == expected_tree(files, folder_of(8))
    assert [r.path for r in server.requests] == [zip_path(8)]


def test_legacy_folders_removed(local, wdir, monkeypatch):
    monkeypatch.setattr(weights, "_legacy_checked", set())
    old = [wdir / "nnUNet" / "3d_fullres" / "Task251_foo", wdir / "nnUNet" / "3d_fullres" / "Task315_thoraxCT",
           wdir / "Dataset302_vertebrae_body_1559subj"]
    keep = wdir / "Dataset999_mine"
    for p in [*old, keep]:
        p.mkdir(parents=True)
    (wdir / folder_of(291)).mkdir(parents=True)
    weights.ensure_dataset(291, quiet=True)
    assert not any(p.exists() for p in old)
    assert keep.is_dir()
    assert local.requests == []


# ----------------------------------------------------------------------------------------------- archive safety

MALICIOUS = {
    "parent": {"../evil.txt": b"evil"},
    "nested_parent": {"{folder}/../../evil.txt": b"evil"},
    "absolute": {"/tmp/evil_abs_totalseg.txt": b"evil"},
    "drive": {"C:/evil.txt": b"evil"},
}


@pytest.mark.parametrize("kind", [*MALICIOUS, "symlink", "too_big"])
def test_malicious_zip_refused(local, wdir, tmp_path, kind, monkeypatch):
    folder = folder_of(291)
    files = dataset_files(folder, size=1000)
    symlinks = None
    if kind == "symlink":
        symlinks = {f"{folder}/{TRAINER_DIR}/link": "/etc/passwd"}
    elif kind == "too_big":
        monkeypatch.setattr(weights, "MAX_UNPACKED_BYTES", 500)
    else:
        files.update({k.format(folder=folder): v for k, v in MALICIOUS[kind].items()})
    local.add(zip_path(291), make_zip(files, symlinks))
    before = set(tmp_path.parent.rglob("*evil*"))
    with pytest.raises(WeightsError, match="refusing"):
        weights.ensure_dataset(291, quiet=True)
    assert not (wdir / folder).exists()
    assert set(tmp_path.parent.rglob("*evil*")) == before
    assert not Path("/tmp/evil_abs_totalseg.txt").exists()
    assert not list(wdir.rglob("link"))
    assert leftovers(wdir) == []  # an unsafe archive is not kept for resuming
    # the same archive given to the importer is refused too
    bad = tmp_path / "bad.zip"
    bad.write_bytes(local.files[zip_path(291)].data)
    with pytest.raises(WeightsError, match="refusing"):
        weights.import_weights(bad, quiet=True)
    assert not (wdir / folder).exists()


# ----------------------------------------------------------------------------------------------- concurrency

def _install_in_child(barrier, dataset_id, result_queue) -> None:
    from totalsegmentator import weights as child_weights

    barrier.wait(timeout=60)
    try:
        result_queue.put(str(child_weights.ensure_dataset(dataset_id, quiet=True)))
    except Exception as exc:  # reported to the parent test
        result_queue.put(f"error: {exc}")


def test_two_processes_download_once(server, wdir, monkeypatch):
    files = serve_dataset(server, 291, delay_s=1.0)
    monkeypatch.setenv(weights.BASE_URL_ENV, server.url(""))
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_install_in_child, args=(barrier, 291, results)) for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert outcomes == [str(wdir / folder_of(291))] * 2
    assert len(server.requests_for(zip_path(291))) == 1
    assert tree(wdir / folder_of(291)) == expected_tree(files, folder_of(291))
    assert leftovers(wdir) == []


# ----------------------------------------------------------------------------------------------- licenses

def test_licensed_without_config_fails_before_any_request(local, wdir):
    with pytest.raises(LicenseError, match="totalseg_set_license"):
        weights.ensure_dataset(304, quiet=True)
    config.setup_config()
    with pytest.raises(LicenseError, match="license-academic"):
        weights.ensure_dataset(304, quiet=True)
    assert local.requests == []
    assert not (wdir / folder_of(304)).exists()


def test_several_datasets_checked_before_downloading(local):
    serve_dataset(local, 291)
    with pytest.raises(LicenseError):
        weights.ensure_datasets([291, 304], quiet=True)
    with pytest.raises(LicenseError):
        weights.ensure_task_weights("appendicular_bones", quiet=True)
    assert local.requests == []


def test_licensed_download_posts_license(local, wdir):
    store_license()
    files = dataset_files(folder_of(304))
    local.add("/download_weights", make_zip(files))
    path = weights.ensure_dataset(304, quiet=True)
    assert tree(path) == expected_tree(files, folder_of(304))
    (req,) = local.requests
    assert req.method == "POST"
    assert req.json() == {"license_number": LICENSE, "task": "appendicular_bones", "version": __version__}


def test_licensed_body_stats_model_goes_to_lightning_models(local, wdir):
    store_license()
    name = "mr_all_ext_splitOrig_noise_can1_huber"
    local.add("/download_weights", make_zip({f"{name}/model.ckpt": b"weights", f"{name}/hparams.yaml": b"a: 1"}))
    path = weights.ensure_dataset("body_stats_mr", quiet=True)
    assert path == wdir / "lightning_models" / name
    assert tree(path) == {"model.ckpt": b"weights", "hparams.yaml": b"a: 1"}
    assert local.requests[0].json()["task"] == "body_stats_mr"


def test_license_server_refusal(local, wdir):
    store_license()
    local.add("/download_weights", b"", status=403, error_message="invalid license number")
    with pytest.raises(LicenseError, match="invalid license number"):
        weights.ensure_dataset(409, quiet=True)
    assert not (wdir / folder_of(409)).exists()


# ----------------------------------------------------------------------------------------------- task helpers

def test_ids_for_download_task():
    assert weights.dataset_ids_for_download_task("total") == [291, 292, 293, 294, 295, 298]
    ids = weights.dataset_ids_for_download_task("all")
    assert [str(i) for i in ids] == sorted(str(i) for i in ids)
    assert 8 in ids and "body_stats_xgb" in ids and len(ids) == len(set(ids))
    with pytest.raises(UnknownTaskError):
        weights.dataset_ids_for_download_task("nope")


def test_ensure_task_weights_fast_mode(local, wdir):
    files = serve_dataset(local, 297)
    paths = weights.ensure_task_weights("total", "fast", quiet=True)
    assert paths == [wdir / folder_of(297)]
    assert tree(paths[0]) == expected_tree(files, folder_of(297))


# ----------------------------------------------------------------------------------------------- import

def test_import_official_zip(wdir, tmp_path):
    files = dataset_files(folder_of(291))
    archive = tmp_path / "w.zip"
    archive.write_bytes(make_zip(files))
    assert weights.import_weights(archive, quiet=True) == [wdir / folder_of(291)]
    assert tree(wdir / folder_of(291)) == expected_tree(files, folder_of(291))
    assert leftovers(wdir) == []


def test_import_replaces_existing(wdir, tmp_path):
    target = wdir / folder_of(291)
    (target / "stale").mkdir(parents=True)
    (target / "stale" / "old.txt").write_text("old")
    files = dataset_files(folder_of(291), seed=3)
    archive = tmp_path / "w.zip"
    archive.write_bytes(make_zip(files))
    weights.import_weights(archive, quiet=True)
    assert tree(target) == expected_tree(files, folder_of(291))
    assert leftovers(wdir) == []


def test_import_results_folder(wdir, tmp_path):
    """A copy of another machine's ~/.totalsegmentator with several datasets and a body-stats model."""
    results = tmp_path / "other" / ".totalsegmentator" / "nnunet" / "results"
    files = {**dataset_files(folder_of(291)), **dataset_files(folder_of(8), seed=1),
             "lightning_models/ct_all_ext_splitOrig_noise_can1_huber/model.ckpt": b"ckpt"}
    for name, data in files.items():
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        (results / name).write_bytes(data)
    installed = weights.import_weights(tmp_path / "other", quiet=True)
    assert sorted(installed) == sorted([wdir / folder_of(291), wdir / folder_of(8),
                                        wdir / "lightning_models" / "ct_all_ext_splitOrig_noise_can1_huber"])
    assert tree(wdir) == files
    assert (results / folder_of(291)).is_dir()  # the source is copied, not moved


def test_import_single_dataset_folder(wdir, tmp_path):
    files = dataset_files(folder_of(8))
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    assert weights.import_weights(tmp_path / folder_of(8), quiet=True) == [wdir / folder_of(8)]
    assert tree(wdir / folder_of(8)) == expected_tree(files, folder_of(8))


def test_import_rejects_unrelated_content(wdir, tmp_path):
    archive = tmp_path / "photos.zip"
    archive.write_bytes(make_zip({"holiday/beach.jpg": b"jpg"}))
    with pytest.raises(WeightsError, match="no weights folder"):
        weights.import_weights(archive, quiet=True)
    with pytest.raises(WeightsError, match="does not exist"):
        weights.import_weights(tmp_path / "missing.zip", quiet=True)
    not_zip = tmp_path / "x.zip"
    not_zip.write_text("hello")
    with pytest.raises(WeightsError, match="not a valid zip"):
        weights.import_weights(not_zip, quiet=True)
    assert leftovers(wdir) == []


# ----------------------------------------------------------------------------------------------- CLIs

def test_cli_download_weights(server, fast, wdir, totalseg_home, monkeypatch, capsys):
    files = serve_dataset(server, 297)
    files.update(serve_dataset(server, 298))
    monkeypatch.setenv(weights.BASE_URL_ENV, server.url(""))
    assert totalseg_download_weights.main(["-t", "total_fast"]) == 0
    assert tree(wdir) == files
    cfg = json.loads((totalseg_home / "config.json").read_text())
    assert cfg["statistics_disclaimer_shown"] is True and cfg["totalseg_id"].startswith("totalseg_")
    capsys.readouterr()

    assert totalseg_download_weights.main(["-t", "liver_vessels"]) == 1  # not served: 404
    err = capsys.readouterr().err
    assert err.startswith("totalseg_download_weights: error: ") and "HTTP 404" in err
    assert err.count("\n") == 1

    assert totalseg_download_weights.main(["-t", "no_such_task"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'no_such_task'" in err and err.count("\n") == 1

    assert totalseg_download_weights.main(["-t", "appendicular_bones"]) == 1
    assert "license" in capsys.readouterr().err


def test_cli_download_all_skips_licensed_without_license(totalseg_home, capsys):
    config.setup_config()
    ids = totalseg_download_weights._ids("all")
    assert 304 not in ids and "body_stats_mr" not in ids and 291 in ids
    assert "Skipping" in capsys.readouterr().out
    store_license()
    assert 304 in totalseg_download_weights._ids("all")


def test_cli_download_weights_subprocess(server, wdir, totalseg_home):
    files = serve_dataset(server, 8)
    env = {**os.environ, weights.BASE_URL_ENV: server.url(""), "TOTALSEG_HOME_DIR": str(totalseg_home)}
    proc = subprocess.run([sys.executable, "-m", "totalsegmentator.bin.totalseg_download_weights",
                           "-t", "liver_vessels"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert tree(wdir / folder_of(8)) == expected_tree(files, folder_of(8))
    assert "Traceback" not in proc.stderr


def test_cli_import_weights(wdir, tmp_path, capsys):
    files = dataset_files(folder_of(291))
    archive = tmp_path / "w.zip"
    archive.write_bytes(make_zip(files))
    assert totalseg_import_weights.main(["-i", str(archive)]) == 0
    assert tree(wdir / folder_of(291)) == expected_tree(files, folder_of(291))
    assert str(wdir / folder_of(291)) in capsys.readouterr().out
    assert totalseg_import_weights.main(["--weights_file", str(tmp_path / "nope.zip")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("totalseg_import_weights: error: ") and err.count("\n") == 1


def test_cli_set_license(server, totalseg_home, monkeypatch, capsys):
    assert totalseg_set_license.main(["-l", "abc_ABCDEFGHIJ1234"]) == 1
    assert "must start with 'aca_'" in capsys.readouterr().err
    assert totalseg_set_license.main(["-l", "aca_short", "-sv"]) == 1
    assert config.get_license_number() is None

    assert totalseg_set_license.main(["-l", LICENSE, "-sv"]) == 0
    assert config.get_license_number() == LICENSE
    assert server.requests == []

    monkeypatch.setattr(weights, "LICENSE_VALIDATION_URL", server.url("/is_valid_license_number"))
    other = "aca_ZYXWVUTSRQ9876"
    server.add("/is_valid_license_number", json.dumps({"status": "invalid_license"}).encode(),
               content_type="application/json")
    assert totalseg_set_license.main(["-l", other]) == 1
    assert "not valid" in capsys.readouterr().err
    assert config.get_license_number() == LICENSE
    assert server.requests[-1].json() == {"license_number": other}

    server.add("/is_valid_license_number", json.dumps({"status": "valid_license"}).encode(),
               content_type="application/json")
    assert totalseg_set_license.main(["--license_number", other]) == 0
    assert config.get_license_number() == other


def test_cli_set_license_offline(totalseg_home, monkeypatch, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(weights, "LICENSE_VALIDATION_URL", f"http://127.0.0.1:{port}/is_valid_license_number")
    assert totalseg_set_license.main(["-l", LICENSE]) == 1
    err = capsys.readouterr().err
    assert "-sv" in err and err.count("\n") == 1
    assert config.get_license_number() is None


def test_cli_setup_manually(totalseg_home, capsys):
    assert totalseg_setup_manually.main(["-id", "totalseg_ABCD1234"]) == 0
    assert json.loads((totalseg_home / "config.json").read_text())["totalseg_id"] == "totalseg_ABCD1234"
    assert totalseg_setup_manually.main(["--totalseg_id", "totalseg_TOOLONG123"]) == 2
    assert totalseg_setup_manually.main(["-id", "other_ABCD1234xyz"]) == 2
    assert "must start with 'totalseg_'" in capsys.readouterr().err
    assert config.load_config()["totalseg_id"] == "totalseg_ABCD1234"
