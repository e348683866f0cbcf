"""A finished store that lost data, a corrupt block marker, an export cut short: found, named and redone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from skimage.io import imread, imsave

import _tiny
from _tiny import tissue_rgb, write_slide
from napari_histoseg.cli import main
from napari_histoseg.io.export import exports_whole
from napari_histoseg.io.store import LabelStore, StoreError
from napari_histoseg.jobs.measure import write_slide_outputs


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return _tiny.tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def predict(slide: Path, out: Path, model: Path, *extra: str) -> int:
    return main(["predict", str(slide), "--out", str(out), "--model", str(model), "--block", "256", *extra])


@pytest.fixture
def finished(tmp_path, tiny_checkpoint) -> tuple[Path, Path]:
    slide = write_slide(tmp_path / "s.tif", tissue_rgb((512, 512)))
    out = tmp_path / "s.zarr"
    assert predict(slide, out, tiny_checkpoint, "--no-cells", "--no-tissue-skip") == 0
    return slide, out


def test_a_lost_chunk_is_found_on_open_and_redone_on_resume(finished, tiny_checkpoint, capsys):
    slide, out = finished
    before = np.asarray(LabelStore.open(out).levels[0][:])
    chunk = out / "0" / "c" / "1" / "1"
    assert chunk.is_file()
    chunk.unlink()
    with pytest.raises(StoreError, match="lost their data"):
        LabelStore.open(out)
    assert predict(slide, out, tiny_checkpoint, "--no-cells", "--no-tissue-skip", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["blocks_resumed"] == summary["blocks"] - 1  # only the damaged block is redone
    store = LabelStore.open(out)
    assert store.info["complete"] and chunk.is_file()
    np.testing.assert_array_equal(np.asarray(store.levels[0][:]), before)


def test_a_corrupt_marker_is_named(finished, tiny_checkpoint, capsys):
    slide, out = finished
    marker = out / ".histoseg_done" / "0_1.json"
    marker.write_text('{"core": [0, 256')
    assert predict(slide, out, tiny_checkpoint, "--no-cells", "--no-tissue-skip") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "0_1.json" in err and "\n" not in err


def test_an_interrupted_export_leaves_nothing_that_looks_whole(finished, tiny_checkpoint, capsys):
    slide, out = finished
    store = LabelStore.open(out)

    def kill(event) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_slide_outputs(store, on_event=kill)
    leftovers = sorted(p.name for p in out.parent.iterdir() if p.name.startswith("s_") or p.name.startswith(".s_"))
    assert leftovers == []  # no half CSV, no open GeoJSON, no summary, no temporary file
    assert exports_whole(store) is None

    outputs = write_slide_outputs(store)
    whole = exports_whole(store)
    assert whole is not None and whole["files"] == outputs["files"]
    json.loads(Path(outputs["files"]["cells_geojson"]).read_text())  # valid JSON
    csv = Path(outputs["files"]["cells_csv"])
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[: len(lines) // 2]) + "\n")  # cut short by a kill in an older version
    assert exports_whole(store) is None
    # The same command again: the store is complete, the exports are found damaged and rewritten.
    assert predict(slide, out, tiny_checkpoint, "--no-tissue-skip", "--json") == 0
    capsys.readouterr()
    assert csv.read_text().splitlines() == lines
    assert exports_whole(store) is not None


def test_folder_mode_segments_at_the_stated_resolution(tmp_path, tiny_checkpoint, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    imsave(folder / "a.png", tissue_rgb((200, 232)))
    runs = {}
    for mpp in (None, "1.0", "0.25"):
        out = tmp_path / f"out-{mpp}"
        extra = [] if mpp is None else ["--mpp", mpp]
        args = ["predict", str(folder), "--out", str(out), "--model", str(tiny_checkpoint), "--json", *extra]
        assert main(args) == 0
        runs[mpp] = (json.loads(capsys.readouterr().out), imread(out / "a_pred.png"))
    # The tiny model works at 0.5 um/px: a 1.0 um/px image is upsampled 2x, a 0.25 um/px one halved.
    assert [runs[m][0]["resample_factor"]["a.png"] for m in (None, "1.0", "0.25")] == [1.0, 2.0, 0.5]
    for _, labels in runs.values():
        assert labels.shape == (200, 232, 3)  # the masks come back at the image's own size
    assert not np.array_equal(runs[None][1], runs["1.0"][1])


def test_saving_labels_never_replaces_their_own_store_or_a_foreign_folder(finished, tmp_path):
    from napari_histoseg.io.export import write_labels_ome_zarr
    from napari_histoseg.io.outputs import OutputError

    _, out = finished
    store = LabelStore.open(out)
    labels = np.asarray(store.levels[0][:])
    with pytest.raises(OutputError, match="input itself"):  # napari's Save of a layer read from this very store
        write_labels_ome_zarr(list(store.levels), out, overwrite=True)
    np.testing.assert_array_equal(np.asarray(LabelStore.open(out).levels[0][:]), labels)
    foreign = tmp_path / "figures.zarr"
    foreign.mkdir()
    (foreign / "plot.png").write_bytes(b"mine")
    with pytest.raises(OutputError, match="not a zarr label image"):
        write_labels_ome_zarr(store, foreign, overwrite=True)
    assert (foreign / "plot.png").read_bytes() == b"mine"
    copy = tmp_path / "copy.zarr"
    write_labels_ome_zarr(store, copy)
    write_labels_ome_zarr(store, copy, overwrite=True)  # its own label image: replaced
    assert (copy / "zarr.json").is_file()


def test_exports_never_replace_a_file_histoseg_did_not_write(finished):
    from napari_histoseg.io.export import ExportError

    _, out = finished
    store = LabelStore.open(out)
    mine = out.with_name("s_cells.csv")
    mine.write_text("patient,notes\n1,keep me\n")
    with pytest.raises(ExportError, match="s_cells.csv"):
        write_slide_outputs(store)
    assert mine.read_text() == "patient,notes\n1,keep me\n"
    mine.unlink()
    write_slide_outputs(store)
    write_slide_outputs(store)  # its own exports: replaced
