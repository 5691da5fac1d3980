"""Export: checkpoint -> model files. Imports train/ and common/, never deploy/.

FACE lists the modules the other stages may import (tests/common/test_architecture.py enforces
it): the ONNX graph with its post-processing and parity check (`onnx`), the TensorRT
compatibility check (`compat`), int8 quantization (`quantize`, and NNCF's requirement in
`openvino_nncf`), the options of an export and what an engine's exporter is handed (`options`,
`engine_job`), and the errors. Each engine's exporter (`openvino`, `tensorrt`) is reached through
the engine table (common/engines.py), not imported by name; pipeline/exporting.py orders an export
and checks the files it writes with deploy's loader.
"""

FACE = ("compat", "engine_job", "errors", "onnx", "openvino_nncf", "options", "quantize")
