"""The TPP MONAI Label app's tasks: our bundles served and trained through MONAI Label's bundle tasks."""
