"""ONNX -> OpenVINO IR (.xml + .bin), the model's metadata written into the IR's rt_info.

The float32 ONNX becomes the fp32 and bf16 IRs (the same weights: bf16 is a run-time precision
hint, stored with the metadata); the int8 IR is converted from the QDQ ONNX that `--precision
int8` writes for ONNX Runtime, so both int8 engines run the same quantization. Weights are kept
in float32 (OpenVINO would otherwise compress them to fp16 on save).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from common.engine_files import IR_PRECISION_KEY, IR_RT_INFO_SECTION
from common.optional import import_or_explain
from export.engine_job import EngineJob
from export.errors import ExportError

NO_OPENVINO = "--openvino: OpenVINO is not installed: pip install '.[openvino]'"


def require_openvino() -> ModuleType:
    """The openvino module, or one ExportError line saying which extra installs it."""
    return import_or_explain("openvino", NO_OPENVINO, ExportError)


def ir_paths(xml: Path) -> tuple[Path, Path]:
    """(model.xml, model.bin): OpenVINO reads the weights beside the .xml, by its stem."""
    return xml, xml.with_suffix(".bin")


def convert_onnx_to_ir(onnx_path: Path, xml: Path, rt_info: dict[str, str], section: str) -> None:
    """Write the IR pair for `onnx_path` with `rt_info` under `section`, atomically: the pair is
    written as .partial files and moved into place, weights first."""
    save_ir(require_openvino().convert_model(str(onnx_path)), xml, rt_info, section)


def save_ir(model: object, xml: Path, rt_info: dict[str, str], section: str) -> None:
    """Save an OpenVINO model as the IR pair with `rt_info` under `section`, atomically."""
    ov = require_openvino()
    for key, value in rt_info.items():
        model.set_rt_info(value, [section, key])
    partial = xml.with_name(xml.stem + ".partial.xml")
    ov.save_model(model, str(partial), compress_to_fp16=False)
    os.replace(ir_paths(partial)[1], ir_paths(xml)[1])
    os.replace(partial, xml)


def export_openvino(job: EngineJob) -> str:
    """model.<precision>.xml/.bin: converted from the fp32 ONNX (fp32, bf16: the same weights,
    bf16 a run-time hint) or from the QDQ ONNX (int8), or quantized by NNCF from the fp32 IR
    (--int8-method nncf). Returns the "wrote ..." line."""
    from export.onnx import read_metadata_props

    xml, weights = ir_paths(job.target)
    if job.options.int8_method == "nncf":
        from export.openvino_nncf import quantize_with_nncf

        model, detail = quantize_with_nncf(job.onnx, job.calibration())
        detail |= job.fingerprint()
        props = read_metadata_props(job.onnx) | job.stamp("int8", detail)
        save_ir(model, xml, props | {IR_PRECISION_KEY: "int8"}, IR_RT_INFO_SECTION)
        return (
            f"wrote {xml} and {weights.name} (OpenVINO IR, int8 by NNCF "
            f"{detail['nncf_version']}: {detail['fake_quantize_ops']} FakeQuantize, "
            f"{detail['float_tail_ops']} post-processing ops kept float)"
        )
    source = job.quantized if job.precision == "int8" else job.onnx
    if source is None:
        raise ExportError("--openvino --precision int8: the QDQ ONNX it converts was not written")
    props = read_metadata_props(source) | {IR_PRECISION_KEY: job.precision}
    convert_onnx_to_ir(source, xml, props, IR_RT_INFO_SECTION)
    return f"wrote {xml} and {weights.name} (OpenVINO IR, {job.precision})"
