"""Datalists shared by the data-preparation tools: scan class folders, split, validate, read and write."""

from tpp_components.data.class_weights import class_weights
from tpp_components.data.image_folder import image_datalist
from tpp_components.data.near_duplicates import near_duplicate_groups
from tpp_components.data.datalist import (
    CLASS_NAMES_BUSI,
    IMAGE_EXTENSIONS,
    SPLITS,
    DatalistError,
    build_datalist,
    find_class_names,
    is_mask_file,
    load_datalist,
    scan_class_folders,
    stratified_split,
    validate_datalist,
    write_datalist,
)

__all__ = [
    "class_weights",
    "image_datalist",
    "near_duplicate_groups",
    "CLASS_NAMES_BUSI",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "DatalistError",
    "build_datalist",
    "find_class_names",
    "is_mask_file",
    "load_datalist",
    "scan_class_folders",
    "stratified_split",
    "validate_datalist",
    "write_datalist",
]
