"""Datalists shared by the data-preparation tools, one layout per module: class folders
(:mod:`.datalist`), image/mask pairs (:mod:`.mask_pairs`), NIfTI pairs and MSD tasks
(:mod:`.nifti_pairs`), patient folders (:mod:`.patient_folders`); near-duplicate grouping for
the splits (:mod:`.near_duplicates`)."""

from tpp_components.data.class_weights import class_weights
from tpp_components.data.classes import check_classes, datalist_class_names
from tpp_components.data.image_folder import image_datalist
from tpp_components.data.mask_pairs import scan_image_mask_pairs
from tpp_components.data.near_duplicates import near_duplicate_groups, spanning_groups
from tpp_components.data.nifti_pairs import check_volume_pair, read_msd_dataset, scan_nifti_folders
from tpp_components.data.patient_folders import scan_patient_folders
from tpp_components.data.datalist import (
    CLASS_NAMES_BUSI,
    IMAGE_EXTENSIONS,
    SPLITS,
    DatalistError,
    build_datalist,
    complete_splits,
    find_class_names,
    is_mask_file,
    load_datalist,
    scan_class_folders,
    scan_split_folders,
    split_fractions,
    stratified_split,
    validate_datalist,
    write_datalist,
)

__all__ = [
    "check_classes",
    "class_weights",
    "datalist_class_names",
    "image_datalist",
    "near_duplicate_groups",
    "spanning_groups",
    "scan_image_mask_pairs",
    "check_volume_pair",
    "read_msd_dataset",
    "scan_nifti_folders",
    "scan_patient_folders",
    "CLASS_NAMES_BUSI",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "DatalistError",
    "build_datalist",
    "complete_splits",
    "find_class_names",
    "is_mask_file",
    "load_datalist",
    "scan_class_folders",
    "scan_split_folders",
    "split_fractions",
    "stratified_split",
    "validate_datalist",
    "write_datalist",
]
