"""Export: checkpoint -> model files. The ONNX graph with its post-processing (`onnx`,
`graph_postprocess`), int8 quantization and calibration (`quantize`, `entropy`), and one exporter
per engine of common/engines.py (`openvino`, `openvino_nncf`, `tensorrt`). Imports train/ and
common/, never deploy/ (pipeline/exporting.py checks the files it writes with deploy's runtimes)."""
