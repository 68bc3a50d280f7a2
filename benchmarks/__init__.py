"""Benchmarks of the workbook's hot paths; run each as ``python -m benchmarks.<name>``."""
