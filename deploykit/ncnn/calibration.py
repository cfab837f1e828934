"""Calibration inputs for int8: read from .npy/.npz files or images, or generated, and written as
the .npy lists ncnn2table reads.

A sample is one value per model input, in the layout and dtype of the config's `inputs:`. A file
holds one sample, or a stack of them along a batch axis of one ([N, 16] for an input of [1, 16]).
Some samples are held back from ncnn2table, so that the int8 model is judged on inputs it was not
calibrated on.

ncnn2table (type=1) reads each .npy as float32 in the order of the ncnn::Mat (c, h, w: numpy's
order with the batch axis ncnn drops left out), checks it against `shape=[w,h,c]`, and feeds the
cells to the model as they are. Integer ids (for Embed, which reads its input as int32) are
therefore written as their int32 bits viewed as float32: the values Embed reads are the ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
import numpy as np

from deploykit.core.config import CalibrationSection, InputSpec
from deploykit.core.errors import ConfigError
from deploykit.core.inputs import make_inputs
from deploykit.ncnn.converters.base import NO_BATCH_AXIS, Blob

STAGE = "int8"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".webp")
GENERATED_WARNING = ("int8 is calibrated on generated inputs (quantize.calibration.generate): the accuracy it "
                     "reports holds for such inputs only; calibrate on real data (a `folder` of .npy files or "
                     "`images`) for real accuracy.")

Sample = dict[str, np.ndarray]


@dataclass
class CalibrationSet:
    samples: list[Sample]  # given to ncnn2table
    held_back: list[Sample]  # kept out of it, to judge the int8 model on
    source: str  # folder, files, images or generate
    files: list[str] = field(default_factory=list)


def load_calibration(section: CalibrationSection, specs: list[InputSpec], inputs: dict[str, np.ndarray],
                     seed: int) -> CalibrationSet:
    """The calibration samples for a model fed `inputs` (the config's, which fix names, shapes and dtypes)."""
    if section.generate is not None:
        held = max(1, math.ceil(section.generate * section.held_back))
        samples = [_generated(specs, inputs, seed, index) for index in range(section.generate + held)]
        return CalibrationSet(samples[:section.generate], samples[section.generate:], "generate")
    if section.images is not None:
        files = _listed(section.images.folder, IMAGE_SUFFIXES, "calibration.images.folder")
        samples = [_image_sample(path, section, inputs) for path in files]
        source = "images"
    else:
        if section.folder is not None:
            files = _listed(section.folder, (".npy", ".npz"), "calibration.folder")
            source = "folder"
        else:
            files = [Path(f) for f in section.files or []]
            source = "files"
        samples = [sample for path in files for sample in _array_samples(path, inputs)]
    held = math.ceil(len(samples) * section.held_back) if len(samples) > 1 else 0
    split = len(samples) - held
    return CalibrationSet(samples[:split], samples[split:], source, [str(f) for f in files])


def _listed(folder: Path, suffixes: tuple[str, ...], key: str) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(f"quantize.{key}: {folder} is not a folder.", stage=STAGE,
                          hint="paths are relative to the YAML file that names them.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise ConfigError(f"quantize.{key}: {folder} holds no {' or '.join(suffixes[:2])} file, so there is "
                          "nothing to calibrate on.", stage=STAGE,
                          hint="save some real inputs there (numpy.save, one sample per file or a stack of them), "
                               "or use `generate: N` for a quick look.")
    return files


def _array_samples(path: Path, inputs: dict[str, np.ndarray]) -> list[Sample]:
    where = f"quantize.calibration: {path}"
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist.", stage=STAGE,
                          hint="paths are relative to the YAML file that names them.") from None
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{where} is not a .npy or .npz file ({exc}).", stage=STAGE,
                          hint="save it with numpy.save or numpy.savez.") from None
    if isinstance(loaded, np.ndarray):
        if len(inputs) != 1:
            raise ConfigError(f"{where} holds one array, but the model has {len(inputs)} inputs "
                              f"({', '.join(inputs)}).", stage=STAGE,
                              hint="save one .npz per sample with an array per input name (numpy.savez).")
        arrays = {next(iter(inputs)): loaded}
    else:
        with loaded:
            arrays = {name: loaded[name] for name in loaded.files}
        missing = [name for name in inputs if name not in arrays]
        if missing:
            raise ConfigError(f"{where} has no array for input(s) {', '.join(missing)} (it has "
                              f"{', '.join(arrays) or 'none'}).", stage=STAGE,
                              hint="name the arrays after the model's inputs: numpy.savez(path, ids=...).")
    stacks = {name: _as_stack(arrays[name], inputs[name], name, where) for name in inputs}
    counts = {len(stack) for stack in stacks.values()}
    if len(counts) != 1:
        raise ConfigError(f"{where} stacks different numbers of samples per input "
                          f"({', '.join(f'{n}: {len(s)}' for n, s in stacks.items())}).", stage=STAGE)
    return [{name: stacks[name][i] for name in inputs} for i in range(counts.pop())]


def _as_stack(array: np.ndarray, like: np.ndarray, name: str, where: str) -> list[np.ndarray]:
    """One sample of `like`'s shape, or a stack of them along its batch axis of one."""
    if not np.can_cast(array.dtype, like.dtype, casting="same_kind"):
        raise ConfigError(f"{where}: input {name!r} holds {array.dtype}, but the model takes {like.dtype}.",
                          stage=STAGE, hint="save the arrays with the dtype the model takes.")
    if array.shape == like.shape:
        return [array.astype(like.dtype)]
    if like.ndim and like.shape[0] == 1 and array.ndim == like.ndim and array.shape[1:] == like.shape[1:]:
        return [array[i:i + 1].astype(like.dtype) for i in range(array.shape[0])]
    stack = ["N", *like.shape[1:]]
    raise ConfigError(f"{where}: input {name!r} has shape {list(array.shape)}, but the model takes "
                      f"{list(like.shape)} (or a stack of samples, {stack}).", stage=STAGE,
                      hint="save the calibration arrays in the shape of the config's inputs.")


def _image_sample(path: Path, section: CalibrationSection, inputs: dict[str, np.ndarray]) -> Sample:
    images = section.images
    assert images is not None, "an image sample without quantize.calibration.images"
    name, like = next(iter(inputs.items()))
    if len(inputs) != 1 or like.ndim != 4 or like.shape[0] != 1 or like.shape[1] not in (1, 3):
        raise ConfigError(f"quantize.calibration.images needs one input of shape [1, 3, H, W] (or [1, 1, H, W]); "
                          f"the model takes {', '.join(f'{n} {list(a.shape)}' for n, a in inputs.items())}.",
                          stage=STAGE, hint="save the preprocessed inputs as .npy files and use `folder`.")
    try:
        from PIL import Image
    except ImportError:
        raise ConfigError("quantize.calibration.images needs Pillow to read images.", stage=STAGE,
                          hint="pip install pillow, or save the preprocessed inputs as "
                               ".npy files and use `folder`.") from None
    channels, height, width = like.shape[1:]
    mode = "L" if channels == 1 or images.pixel == "GRAY" else "RGB"
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert(mode).resize((width, height), Image.BILINEAR), dtype=np.float32)
    except OSError as exc:
        raise ConfigError(f"quantize.calibration.images: {path} is not an image Pillow reads ({exc}).",
                          stage=STAGE) from None
    pixels = pixels.reshape(height, width, -1)
    if images.pixel == "BGR":
        pixels = pixels[..., ::-1]
    if pixels.shape[-1] != channels:
        raise ConfigError(f"quantize.calibration.images: pixel {images.pixel} gives {pixels.shape[-1]} channel(s), "
                          f"the input has {channels}.", stage=STAGE)
    mean, norm = _per_channel(images.mean, channels, "mean"), _per_channel(images.norm, channels, "norm")
    chw = ((pixels - mean) * norm).transpose(2, 0, 1)
    return {name: np.ascontiguousarray(chw[None].astype(like.dtype))}


def _per_channel(values: list[float], channels: int, key: str) -> np.ndarray:
    if len(values) == channels:
        return np.asarray(values, dtype=np.float32)
    if len(values) == 1:
        return np.full(channels, values[0], dtype=np.float32)
    raise ConfigError(f"quantize.calibration.images.{key} has {len(values)} values for {channels} channel(s).",
                      stage=STAGE, hint="give one value per channel, in the `pixel` order.")


def _generated(specs: list[InputSpec], inputs: dict[str, np.ndarray], seed: int, index: int) -> Sample:
    """Inputs made like the config's (its ranges, dtypes and shapes), from another seed per sample."""
    made = [spec.model_copy(update={"data": None, "file": None, "shape": list(inputs[spec.name].shape)})
            for spec in specs if spec.name in inputs]
    sample_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])  # never the config's own
    return make_inputs(made, seed=sample_seed)


def ncnn_cells(array: np.ndarray, blob: Blob) -> np.ndarray:
    """What ncnn2table must read for one input: the Mat's cells as float32 (ids as their int32 bits)."""
    if blob.batch_index != NO_BATCH_AXIS:
        array = array[0]
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        return np.ascontiguousarray(array.astype(np.int32)).view(np.float32)
    return np.ascontiguousarray(array.astype(np.float32))


def write_ncnn2table_lists(samples: list[Sample], blobs: list[Blob], folder: Path) -> tuple[list[str], list[str]]:
    """One .npy per sample and input, and one list file per input, in the order of `blobs` (the
    model's Input layers). Returns the list files and the `shape=[w,h,c]` of each, relative to
    `folder` (ncnn2table reads paths of at most 255 characters without spaces)."""
    lists, shapes = [], []
    for index, blob in enumerate(blobs):
        names = []
        for number, sample in enumerate(samples):
            cells = ncnn_cells(sample[blob.onnx_name], blob)
            if not 1 <= cells.ndim <= 4:
                raise ConfigError(f"input {blob.onnx_name!r} has {cells.ndim} axes once ncnn drops its batch axis; "
                                  "ncnn2table reads 1 to 4.", stage=STAGE)
            name = f"in{index}_{number:05d}.npy"
            np.save(folder / name, cells, allow_pickle=False)
            names.append(name)
            shape = "[" + ",".join(str(d) for d in reversed(cells.shape)) + "]"
        (folder / f"list{index}.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
        lists.append(f"list{index}.txt")
        shapes.append(shape)
    return lists, shapes

