"""minidl's data package: datasets (CIFAR-10, MNIST, Fashion-MNIST, folders of your own
images, memmap folders), train/validation splits, the ``DataLoader`` that batches,
shuffles, augments and prefetches them, and the batch ``transforms`` used for
augmentation.

Typical use::

    from minidl.data import CIFAR10, DataLoader, transforms as T
    train = DataLoader(CIFAR10(train=True, download=True), batch_size=128, shuffle=True,
                       seed=0, transform=T.Compose([T.RandomCrop(32, padding=4),
                                                    T.RandomHorizontalFlip(), T.ToFloat()]))
"""

from minidl.data import transforms
from minidl.data._util import DataFormatError, DatasetNotFoundError, default_data_root
from minidl.data.datasets import (
    CIFAR10,
    CIFAR10_CLASSES,
    FASHION_MNIST_CLASSES,
    MNIST,
    MNIST_CLASSES,
    FashionMNIST,
    load_cifar10,
    load_fashion_mnist,
    load_mnist,
    read_idx,
    safe_unpickle,
)
from minidl.data.download import DownloadError, download_url, extract_archive, file_md5
from minidl.data.image_folder import IMAGE_EXTENSIONS, ImageFolder, load_image
from minidl.data.loader import ArrayDataset, DataLoader, Dataset
from minidl.data.memmap import (
    MemmapDataset,
    convert_cifar10,
    convert_image_folder,
    write_memmap_dataset,
)
from minidl.data.split import Subset, train_val_split

__all__ = [
    "CIFAR10",
    "CIFAR10_CLASSES",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "MNIST",
    "MNIST_CLASSES",
    "ArrayDataset",
    "DataFormatError",
    "DataLoader",
    "Dataset",
    "DatasetNotFoundError",
    "DownloadError",
    "FashionMNIST",
    "ImageFolder",
    "MemmapDataset",
    "Subset",
    "convert_cifar10",
    "convert_image_folder",
    "default_data_root",
    "download_url",
    "extract_archive",
    "file_md5",
    "load_cifar10",
    "load_fashion_mnist",
    "load_image",
    "load_mnist",
    "read_idx",
    "safe_unpickle",
    "train_val_split",
    "transforms",
    "write_memmap_dataset",
]
