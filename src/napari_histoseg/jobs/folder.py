"""``histoseg predict FOLDER``: every image of a folder segmented to ``<stem>_pred.png``, and the one path
``histoseg evaluate`` scores.

Images of one folder are normalised from stain statistics pooled over the folder
(:func:`~napari_histoseg.engine.jobs.folder_stain_stats`): patches of one slide or lab share its staining, and
one patch's own statistics depend too much on what it shows. :func:`segment_folder` is the single loop both
predict and evaluate run, so evaluation scores exactly the label maps predict writes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator, Sequence
from pathlib import Path

from ..analysis.stain_stats import LabStats
from ..engine.infer import InferenceResult, InferenceSettings, run
from ..engine.jobs import IMAGE_SUFFIXES, folder_images, folder_stain_stats, segment_image
from .progress import Job, Progress


class FolderError(ValueError):
    """A folder run that cannot start (names the folder and the problem)."""


def describe_error(err: BaseException) -> str:
    """One line for an error: an OS error as ``path: reason``."""
    if isinstance(err, OSError) and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    if isinstance(err, MemoryError):
        return f"out of memory ({err}); use a smaller --tile, --block or --batch-size"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def prediction_names(images: list[Path]) -> dict[Path, str]:
    """``<stem>_pred.png`` for each image; images sharing a stem (x.png, x.tif) get ``<stem>_<ext>_pred.png``."""
    stems = Counter(p.stem.casefold() for p in images)
    names = {
        p: f"{p.stem}_pred.png" if stems[p.stem.casefold()] == 1 else f"{p.stem}_{p.suffix[1:].lower()}_pred.png"
        for p in images
    }
    clashes = [n for n, k in Counter(n.casefold() for n in names.values()).items() if k > 1]
    if clashes:
        same = [p.name for p, n in names.items() if n.casefold() == clashes[0]]
        raise FolderError(f"{same[0]}: {', '.join(same)} would all be written to {clashes[0]}; rename one")
    return names


def segment_folder(
    paths: Sequence[Path],
    model,
    card,
    settings: InferenceSettings,
    *,
    mpp: float | str | None = None,
    only: set[str] | None = None,
    stain: LabStats | None | str = "pooled",
) -> Generator[tuple[Path, InferenceResult | Exception], None, None]:
    """Segment the images ``paths`` of a folder, one at a time: yields ``(path, result)``, or ``(path, error)`` for
    an image that could not be read or segmented.

    ``only``: segment just the images of these file names (the stain statistics are still pooled over all
    ``paths``, as a run over the whole folder pools them). ``mpp``: microns per pixel of every image, ``"auto"``
    to estimate each, None: the model's. ``stain``: the pooled statistics when the caller has
    them already (:func:`~napari_histoseg.engine.jobs.folder_stain_stats` of the same ``paths``)."""
    from ..training.image_files import read_image

    if stain == "pooled":
        stain = folder_stain_stats(paths, read_image, card, settings)
    for path in paths:
        if only is not None and path.name not in only:
            continue
        try:
            image = read_image(path)
            image_mpp = mpp
            if mpp == "auto":
                from ..engine.mpp_estimate import auto_mpp

                image_mpp = auto_mpp(image, name=path.name)
            job = segment_image(image, model, card, settings, mpp=image_mpp, name=path.name, stain_source=stain)
            yield path, run(job)
        except (ValueError, OSError, MemoryError) as err:  # one bad file: report it, go on with the others
            yield path, err


def predict_folder_job(
    folder: str | Path, out: str | Path, model, card, settings: InferenceSettings, *, mpp: float | str | None = None
) -> Job[dict]:
    """Segment every image of ``folder`` into ``out/<stem>_pred.png``; returns the run's summary (JSON-ready).

    An image that fails is reported (a ``failed`` progress event and the summary's ``failed``) and the others
    go on. Refuses, before any work, an ``out`` that is an input or a file, and masks in ``out`` histoseg did not write.
    """
    from ..classes import labels_to_rgb
    from ..io.outputs import check_not_input, check_replaceable, read_manifest, write_manifest

    folder, out = Path(folder), Path(out)
    images = folder_images(folder)
    if not images:
        raise FolderError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    check_not_input(out, images)
    names = prediction_names(images)
    if out.exists() and not out.is_dir():
        raise FolderError(f"{out}: exists and is a file; --out must be a folder for a folder of images")
    out.mkdir(parents=True, exist_ok=True)
    own = read_manifest(out)
    check_replaceable([out / n for n in names.values()], own)  # before any work

    totals = [0, 0, 0, 0]
    per_image, failed, factors = {}, {}, {}
    yield Progress(0, len(images), "segmenting", f"{len(images)} images", "image")
    for done, (path, result) in enumerate(segment_folder(images, model, card, settings, mpp=mpp), start=1):
        if isinstance(result, InferenceResult):
            try:
                own.add(names[path])
                write_manifest(out, own)  # first: a mask histoseg wrote is known as its own, even if cut short
                _write_png(out / names[path], labels_to_rgb(result.labels))
            except OSError as err:
                result = err
        if isinstance(result, Exception):
            failed[path.name] = describe_error(result)
            yield Progress(done, len(images), "failed", f"{path}: {failed[path.name]}", "image", detail=result)
            continue
        per_image[path.name] = result.class_counts
        factors[path.name] = result.plan.factor  # model px per image px (mpp against the model's)
        totals = [a + b for a, b in zip(totals, result.class_counts, strict=True)]
        yield Progress(done, len(images), "segmenting", path.name, "image")
    return {
        "images": len(images),
        "pixels_per_class_total": totals,
        "per_image": per_image,
        "out": str(out),
        "outputs": {p.name: names[p] for p in images if p.name in per_image},
        "resample_factor": factors,
        "failed": failed,
    }


def _write_png(path: Path, rgb) -> None:
    import imageio.v3 as iio

    from ..fileio import atomic_write

    atomic_write(path, iio.imwrite("<bytes>", rgb, extension=".png"))
