"""What every stage shares and none owns: torch-free, importable by train, export, deploy and
pipeline alike (tests/common/test_architecture.py keeps it free of them)."""
