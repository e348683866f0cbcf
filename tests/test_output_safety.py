"""Never lose a user's file: --overwrite removes only histoseg's own outputs, and bad requests are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tifffile
from skimage.io import imsave

import _tiny
from _tiny import tissue_rgb, write_slide
from napari_histoseg.cli import main, prediction_names
from napari_histoseg.io.outputs import OutputError, check_not_input, is_histoseg_store, remove_store
from napari_histoseg.io.store import LabelStore


@pytest.fixture
def slide(tmp_path) -> Path:
    return write_slide(tmp_path / "s.tif", tissue_rgb((512, 512)))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return _tiny.tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def predict(*args: str | Path, model: Path) -> int:
    return main(["predict", "--model", str(model), "--no-cells", "--block", "512", *map(str, args)])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


# -- item 1: --overwrite deletes only histoseg's own outputs ----------------------------------------------------


def test_overwrite_refuses_the_input_slide_itself(slide, tiny_checkpoint, capsys):
    before = slide.read_bytes()
    assert predict(slide, "--out", slide, "--overwrite", model=tiny_checkpoint) == 2
    assert "is the input itself" in one_error_line(capsys)
    assert slide.read_bytes() == before


def test_overwrite_refuses_a_folder_holding_the_input(slide, tiny_checkpoint, capsys):
    assert predict(slide, "--out", slide.parent, "--overwrite", model=tiny_checkpoint) == 2
    assert "holds the input" in one_error_line(capsys)
    assert slide.is_file()


def test_overwrite_refuses_a_foreign_folder_and_a_plain_file(slide, tmp_path, tiny_checkpoint, capsys):
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("years of work")
    assert predict(slide, "--out", foreign, "--overwrite", model=tiny_checkpoint) == 2
    assert str(foreign) in one_error_line(capsys)
    assert (foreign / "thesis.docx").read_text() == "years of work"
    plain = tmp_path / "notes.txt"
    plain.write_text("keep me")
    assert predict(slide, "--out", plain, "--overwrite", model=tiny_checkpoint) == 2
    assert "not a histoseg output store" in one_error_line(capsys)
    assert plain.read_text() == "keep me"


def test_overwrite_replaces_a_histoseg_store_but_not_one_holding_foreign_files(slide, tmp_path, tiny_checkpoint):
    out = tmp_path / "s.zarr"
    assert predict(slide, "--out", out, model=tiny_checkpoint) == 0
    assert is_histoseg_store(out)
    assert predict(slide, "--out", out, "--overwrite", "--tile", "128", model=tiny_checkpoint) == 0
    assert LabelStore.open(out).info["settings"]["tile"] == 128
    (out / "my_notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="my_notes.txt"):
        remove_store(out)
    assert (out / "my_notes.txt").is_file() and (out / "zarr.json").is_file()


def test_a_half_created_store_is_still_recognised(tmp_path):
    out = tmp_path / "cut.zarr"
    (out / ".histoseg_done").mkdir(parents=True)
    assert is_histoseg_store(out)
    remove_store(out)
    assert not out.exists()


def test_check_not_input_allows_a_sibling(tmp_path):
    check_not_input(tmp_path / "out.zarr", [tmp_path / "s.tif"])
    with pytest.raises(OutputError):
        check_not_input(tmp_path, [tmp_path / "sub" / "s.tif"])


# -- item 6: every expected failure is one `error:` line with exit 2 --------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--mpp", "-1", "microns per pixel must be a positive number"),
        ("--mpp", "nan", "microns per pixel must be a positive number"),
        ("--tile", "many", "invalid int value"),
        ("--tile", "1048576", "too large"),
        ("--block", "1048576", "too large"),
        ("--batch-size", "0", "batch"),
    ],
)
def test_impossible_settings_are_one_line_errors(slide, tmp_path, tiny_checkpoint, capsys, option, value, message):
    assert predict(slide, "--out", tmp_path / "o.zarr", option, value, model=tiny_checkpoint) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "o.zarr").exists()


def test_os_errors_are_one_line_errors(slide, tmp_path, tiny_checkpoint, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    imsave(folder / "a.png", tissue_rgb((64, 64)))
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert predict(folder, "--out", a_file, model=tiny_checkpoint) == 2  # --out an existing file, folder mode
    assert "file.txt" in one_error_line(capsys)
    assert predict(slide, "--out", a_file / "o.zarr", model=tiny_checkpoint) == 2  # --out under a file
    assert "file.txt" in one_error_line(capsys)
    assert main(["demo", "--out", str(a_file)]) == 2
    assert "file.txt" in one_error_line(capsys)
    assert a_file.read_text() == "x"


# -- item 3: folder mode ------------------------------------------------------------------------------------------


def test_same_stem_inputs_get_distinct_outputs():
    names = prediction_names([Path("x.png"), Path("x.tif"), Path("y.png")])
    assert names == {Path("x.png"): "x_png_pred.png", Path("x.tif"): "x_tif_pred.png", Path("y.png"): "y_pred.png"}
    with pytest.raises(ValueError, match="rename one"):
        prediction_names([Path("x.tif"), Path("x.TIF")])


def test_folder_mode_reports_a_bad_file_and_does_the_rest(tmp_path, tiny_checkpoint, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    imsave(folder / "x.png", tissue_rgb((64, 64)))
    tifffile.imwrite(folder / "x.tif", tissue_rgb((64, 64), seed=1), photometric="rgb")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    imsave(folder / "z.png", tissue_rgb((64, 80)))
    out = tmp_path / "out"
    code = main(["predict", str(folder), "--out", str(out), "--model", str(tiny_checkpoint), "--json"])
    captured = capsys.readouterr()
    assert code == 2
    summary = json.loads(captured.out)
    assert list(summary["failed"]) == ["broken.png"]
    assert "broken.png" in captured.err and "1 of 4 images failed" in captured.err
    assert sorted(p.name for p in out.glob("*.png")) == ["x_png_pred.png", "x_tif_pred.png", "z_pred.png"]


def test_folder_mode_never_reads_its_own_outputs(tmp_path, tiny_checkpoint, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    imsave(folder / "a.png", tissue_rgb((64, 64)))
    assert predict(folder, "--out", folder, model=tiny_checkpoint) == 2  # --out the input folder
    assert "holds the input" in one_error_line(capsys)
    out = tmp_path / "out"
    assert predict(folder, "--out", out, model=tiny_checkpoint) == 0
    imsave(out / "b.png", tissue_rgb((64, 64)))  # the user adds an image to the output folder
    assert predict(out, "--out", tmp_path / "out2", model=tiny_checkpoint) == 0
    assert sorted(p.name for p in (tmp_path / "out2").glob("*.png")) == ["b_pred.png"]  # not a_pred_pred.png


def test_folder_mode_never_replaces_a_file_it_did_not_write(tmp_path, tiny_checkpoint, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    imsave(folder / "a.png", tissue_rgb((64, 64)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_pred.png").write_bytes(b"someone else's")
    assert predict(folder, "--out", out, "--overwrite", model=tiny_checkpoint) == 2
    assert "a_pred.png" in one_error_line(capsys)
    assert (out / "a_pred.png").read_bytes() == b"someone else's"
    (out / "a_pred.png").unlink()
    assert predict(folder, "--out", out, model=tiny_checkpoint) == 0
    assert predict(folder, "--out", out, model=tiny_checkpoint) == 0  # its own output: rewritten on a rerun


# -- item 8: a refused training run leaves no empty run folder ----------------------------------------------------


def test_train_init_of_another_width_leaves_no_run_folder(tmp_path, tiny_checkpoint, capsys):
    from _trainsets import write_set

    data = write_set(tmp_path / "data", n=2, size=64)
    run = tmp_path / "runs" / "wide"
    args = ["train", str(data), "--val", str(data), "--out", str(run), "--width", "1.0", "--init", str(tiny_checkpoint)]
    assert main([*args, "--epochs", "1", "--device", "cpu"]) == 2
    assert "match this checkpoint" in one_error_line(capsys)
    assert not run.parent.exists()


# -- item 4: planar and 16-bit RGB ---------------------------------------------------------------------------------


@pytest.mark.parametrize("planar", [False, True])
def test_planar_and_12_bit_rgb_read_as_the_same_slide(tmp_path, planar):
    import numpy as np

    from napari_histoseg.io.slide import open_slide
    from napari_histoseg.training.image_files import read_image

    rgb8 = tissue_rgb((300, 256))
    rgb12 = ((rgb8.astype(np.uint32) * 4095 + 127) // 255).astype(
        np.uint16
    )  # a 12-bit camera's values in a 16-bit file
    data = np.moveaxis(rgb12, -1, 0) if planar else rgb12
    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, data, photometric="rgb", planarconfig="separate" if planar else "contig")
    with open_slide(path) as slide:
        assert slide.levels[0].shape == (300, 256, 3)
        assert slide.metadata["white_level"] == 4095
        pixels = np.asarray(slide.levels[0])
    assert np.abs(pixels.astype(int) - rgb8).max() <= 1  # not 16x darker
    assert np.abs(read_image(path).astype(int) - rgb8).max() <= 1  # folder mode and training read the same


def test_planar_16_bit_slide_segments_at_its_own_shape(tmp_path, tiny_checkpoint):
    import numpy as np

    rgb16 = np.moveaxis(tissue_rgb((300, 256)).astype(np.uint16) * 16, -1, 0)
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, rgb16, photometric="rgb", planarconfig="separate")
    out = tmp_path / "planar.zarr"
    assert predict(path, "--out", out, model=tiny_checkpoint) == 0
    assert LabelStore.open(out).levels[0].shape == (300, 256)


# -- item 5: thin, small and faint tissue is kept -----------------------------------------------------------------


def test_a_thin_strip_of_tissue_is_not_skipped(tmp_path, tiny_checkpoint):
    import numpy as np

    from napari_histoseg.engine.infer import InferenceSettings
    from napari_histoseg.engine.jobs import prepare_slide_job
    from napari_histoseg.io.slide import open_slide
    from napari_histoseg.model.checkpoint import read_card

    strip = np.tile(tissue_rgb((20, 400))[5:15, 100:300], (1, 500, 1))  # 10 x 100,000 px of tissue
    path = tmp_path / "strip.tif"
    tifffile.imwrite(
        path, strip, photometric="rgb", tile=(16, 1024), resolution=(2e4, 2e4), resolutionunit="CENTIMETER"
    )
    with open_slide(path) as slide:
        job = prepare_slide_job(slide, read_card(tiny_checkpoint), tmp_path / "strip.zarr", InferenceSettings())
        test = job.tissue_test()
        assert test(0, 0, 10, 2048) and test(0, 97_952, 10, 100_000)  # both ends are tissue


def test_a_small_fragment_on_a_large_slide_is_kept():
    import numpy as np

    from napari_histoseg.analysis.tissue import mask_from_rgb

    thumbnail = np.full((2048, 2048, 3), 240, np.uint8)  # a 100,000 px slide's thumbnail: downsample 49
    thumbnail[1000:1012, 700:712] = tissue_rgb((24, 24))[6:18, 6:18]  # a 600 px (150 um) fragment: 12 x 12 px
    assert mask_from_rgb(thumbnail, downsample=49)[1006, 706]
    assert not mask_from_rgb(thumbnail).any()  # the share-of-the-image rule alone drops it


def test_a_faint_section_is_kept():
    import numpy as np

    from napari_histoseg.analysis.tissue import mask_from_rgb

    rng = np.random.default_rng(0)
    image = (238 + rng.integers(-3, 4, (600, 600, 3))).astype(np.uint8)  # glass
    faint = np.array([226, 208, 222]) + rng.integers(-4, 5, (300, 300, 3))  # pale eosin, saturation ~0.08
    image[150:450, 150:450] = faint.astype(np.uint8)
    mask = mask_from_rgb(image, downsample=4)
    assert mask[160:440, 160:440].mean() > 0.95
    assert mask[:100, :100].mean() < 0.01


def test_the_segment_widget_job_never_replaces_a_foreign_folder(slide, tmp_path, tiny_checkpoint):
    import threading

    from napari_histoseg._napari.segment_job import SegmentRequest, segment_job
    from napari_histoseg.engine.infer import InferenceSettings

    foreign = tmp_path / "s.zarr"
    foreign.mkdir()
    (foreign / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    (foreign / "figure.png").write_bytes(b"not histoseg's")
    request = SegmentRequest("s", tiny_checkpoint, InferenceSettings(block=512), slide_path=slide, out=foreign)
    with pytest.raises(ValueError, match="s.zarr"):
        list(segment_job(request, threading.Event()))
    assert (foreign / "figure.png").read_bytes() == b"not histoseg's"
    inside = SegmentRequest("s", tiny_checkpoint, InferenceSettings(block=512), slide_path=slide, out=slide)
    with pytest.raises(ValueError, match="input itself"):
        list(segment_job(inside, threading.Event()))
    assert slide.is_file()
