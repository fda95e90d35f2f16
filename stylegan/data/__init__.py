"""Training data: build an HDF5 image dataset from a folder, a zip file or another HDF5 file, and stream it.

:mod:`~stylegan.data.sources` reads the sources, :mod:`~stylegan.data.build` prepares and writes the images,
:mod:`~stylegan.data.hdf5` reads the dataset back and :mod:`~stylegan.data.sampling` streams it in batches. How an
image is prepared (orientation, alpha, 16-bit, crop, resize) is :mod:`stylegan.images`.
"""

from ..images import CROPS, RESIZE_FILTER, celeba_crop_box, center_crop_box
from .build import FORMAT_VERSION, BuildReport, build_dataset, export_images, prepare_image
from .hdf5 import HDF5ImageDataset, open_dataset
from .sampling import BatchStream, InfiniteSampler
from .sources import IMAGE_EXTENSIONS, DatasetError, iter_source_images

__all__ = [
    "FORMAT_VERSION",
    "IMAGE_EXTENSIONS",
    "CROPS",
    "RESIZE_FILTER",
    "DatasetError",
    "BuildReport",
    "build_dataset",
    "export_images",
    "iter_source_images",
    "prepare_image",
    "celeba_crop_box",
    "center_crop_box",
    "HDF5ImageDataset",
    "open_dataset",
    "InfiniteSampler",
    "BatchStream",
]
