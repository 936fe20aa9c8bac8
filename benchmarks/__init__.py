# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""Performance benchmarks: `python benchmarks/run_benchmarks.py` (see BENCHMARKS.md)."""
