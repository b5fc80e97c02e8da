"""Fashion-MNIST: real 28x28 garment images (10 classes) for the class-conditional image models.

Owns: the public names of the dataset plug-in. ``load_split`` reads the Debian package
``dataset-fashion-mnist`` (padded to 32x32), ``class_index`` maps prompt names to labels, and
``FashionNet`` / ``load_classifier`` are the classifier trained here that judges class
consistency and gives the features of "FD-FashionNet". Must never download anything.
"""

from mmaccel.image_ar.fashion.classifier import (
    ClassifierConfig,
    FashionNet,
    class_accuracy,
    load_classifier,
    predict,
)
from mmaccel.image_ar.fashion.data import (
    CLASS_NAMES,
    IMAGE_SIZE,
    OFFICIAL_NAMES,
    FashionSplit,
    class_index,
    class_name,
    data_dir,
    load_split,
    pad,
    read_idx,
    to_float,
    to_pil,
)

__all__ = [
    "CLASS_NAMES",
    "ClassifierConfig",
    "FashionNet",
    "FashionSplit",
    "IMAGE_SIZE",
    "OFFICIAL_NAMES",
    "class_accuracy",
    "class_index",
    "class_name",
    "data_dir",
    "load_classifier",
    "load_split",
    "pad",
    "predict",
    "read_idx",
    "to_float",
    "to_pil",
]
