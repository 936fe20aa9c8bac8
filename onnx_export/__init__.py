# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
ONNX export of a VLM in the three-graph layout that transformers.js and onnxruntime users load for LLaVA-style models
(`export`), a greedy onnxruntime generation loop over those graphs (`runtime`), and the check that it generates what
the PyTorch model does (`parity`).
"""
