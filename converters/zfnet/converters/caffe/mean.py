"""Per-pixel training means, as Caffe's ``compute_image_mean`` makes them, and ``mean.binaryproto`` I/O.

A mean is a float32 (C, H, W) array in the channel order the network expects: ``compute_mean``
stores RGB by default (what zfnet images and Caffe's CIFAR-10 example use); pass
``channel_order="bgr"`` for nets trained on Caffe's usual BGR input.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from zfnet import imagefolder
from zfnet.converters.caffe import caffe_pb2
from zfnet.converters.caffe.weights import blob_array
from zfnet.errors import InvalidArgument, NotFound

CHANNEL_ORDERS = ("rgb", "bgr")


def compute_mean(data_dir: str | Path, channel_order: str = "rgb", workers: int = 8, chunk: int = 1000) -> np.ndarray:
    """The mean image over every image of ``data_dir`` (a class tree or a flat folder; all of one size), (C, H, W) float32.

    Images are decoded on ``workers`` threads and summed in float64, ``chunk`` at a time; a progress
    bar shows on stderr.
    """
    if channel_order not in CHANNEL_ORDERS:
        raise InvalidArgument(f"channel order {channel_order!r}: use rgb or bgr")
    folder = imagefolder.scan(data_dir)
    total: np.ndarray | None = None
    columns = (TextColumn("mean of {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with ThreadPoolExecutor(workers) as pool, Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(str(folder.root), total=len(folder))
        for start in range(0, len(folder), chunk):
            files = folder.files[start : start + chunk]
            images = list(pool.map(imagefolder.read_rgb, files))
            shapes = {image.shape for image in images} | ({total.shape} if total is not None else set())
            if len(shapes) > 1:
                raise InvalidArgument(f"images in {folder.root} differ in size {sorted(shapes)}; Caffe's mean needs one size: resize them first")
            batch = np.stack(images).sum(axis=0, dtype=np.float64)
            total = batch if total is None else total + batch
            progress.advance(task, len(files))
    assert total is not None  # scan() refuses empty folders
    mean = (total / len(folder)).transpose(2, 0, 1)
    return np.ascontiguousarray(mean[::-1] if channel_order == "bgr" else mean, dtype=np.float32)


def write_binaryproto(array: np.ndarray, path: str | Path) -> None:
    """Write a (C, H, W) mean as a Caffe ``BlobProto`` with the legacy shape 1 x C x H x W (creating the folder)."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 3:
        raise InvalidArgument(f"a mean is (C, H, W); got shape {array.shape}")
    channels, height, width = array.shape
    blob = caffe_pb2.BlobProto(num=1, channels=channels, height=height, width=width)
    blob.data.extend(array.ravel().tolist())
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob.SerializeToString())
    except OSError as err:
        raise InvalidArgument(f"cannot write {path}: {err.strerror}") from None


def read_binaryproto(path: str | Path) -> np.ndarray:
    """Read a ``mean.binaryproto`` (BlobProto, legacy 4-D or N-D shape with one image) as (C, H, W) float32."""
    path = Path(path)
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(path.read_bytes())
    except FileNotFoundError:
        raise NotFound(f"mean file {path} does not exist") from None
    except (IsADirectoryError, PermissionError) as err:
        raise InvalidArgument(f"cannot read mean file {path}: {err.strerror}") from None
    except DecodeError as err:
        raise InvalidArgument(f"mean file {path} is not a Caffe BlobProto (.binaryproto): {err}") from None
    array = blob_array(blob, f"mean file {path}")
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or array.size == 0:
        raise InvalidArgument(f"mean file {path} holds shape {array.shape}; a mean is 1 x C x H x W")
    return array
