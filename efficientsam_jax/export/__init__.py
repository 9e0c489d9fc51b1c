"""Model files for other runtimes: ONNX (onnx_export.py, exported from the JAX model with
jax2onnx; onnx_graph.py edits the exported graphs; onnx_resize.py is torch's resize as a
primitive that exports). Needs the `onnx` extra: `pip install -e ".[onnx]"`.
"""
