"""Model-zoo packaging helpers of tools/package_bundle.py: vendoring, metadata rules, large files."""
