"""Op-level and model-level benchmarks of danet_ops; run `python -m benchmarks --help`."""
