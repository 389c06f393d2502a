"""Datalists shared by the data-preparation tools."""

from tpp_components.data.datalist import (
    CLASS_NAMES_BUSI,
    SPLITS,
    DatalistError,
    load_datalist,
    scan_class_folders,
    stratified_split,
    validate_datalist,
    write_datalist,
)
