"""Int8 audit: list every operator and tensor type of a .tflite; flag anything that runs in float."""
from __future__ import annotations

import numpy as np

ALLOWED_INT = {"int8", "uint8", "int32", "int16", "int64"}


def interpreter(path):
    # Without the default XNNPACK delegate: it would hide the real ops behind one DELEGATE node.
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:  # the training venv always has TensorFlow
        import tensorflow as tf

        Interpreter, OpResolverType = tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    it = Interpreter(model_path=str(path),
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return it


def audit(path) -> dict:
    it = interpreter(path)
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    ops, float_ops = [], []
    for op in it._get_ops_details():  # the public API has no op listing; this is what the analyzer uses
        ins = [np.dtype(tensors[i]["dtype"]).name for i in op["inputs"] if i >= 0 and i in tensors]
        outs = [np.dtype(tensors[i]["dtype"]).name for i in op["outputs"] if i in tensors]
        entry = {"op": op["op_name"], "inputs": ins, "outputs": outs}
        ops.append(entry)
        if any(d not in ALLOWED_INT for d in ins + outs):
            float_ops.append(entry)
    inp, outs = it.get_input_details()[0], it.get_output_details()
    # The probabilities are the narrowest output (a student for the device also outputs its pooled features).
    out = min(outs, key=lambda o: int(o["shape"][-1]))
    return {
        "outputs": [{"dtype": np.dtype(o["dtype"]).name, "shape": [int(s) for s in o["shape"]]} for o in outs],
        "ops": ops,
        "op_types": sorted({o["op"] for o in ops}),
        "float_ops": float_ops,
        "input": {"dtype": np.dtype(inp["dtype"]).name, "shape": [int(s) for s in inp["shape"]],
                  "quantization": [float(inp["quantization"][0]), int(inp["quantization"][1])]},
        "output": {"dtype": np.dtype(out["dtype"]).name, "shape": [int(s) for s in out["shape"]],
                   "quantization": [float(out["quantization"][0]), int(out["quantization"][1])]},
    }


def check_full_int8(report: dict) -> list[str]:
    """Problems that make a model unfit to ship as full-int8 (empty list = fine)."""
    problems = []
    if report["float_ops"]:
        problems.append("float operators: " + ", ".join(sorted({o["op"] for o in report["float_ops"]})))
    if report["input"]["dtype"] not in ("uint8", "int8"):
        problems.append(f"input dtype is {report['input']['dtype']}, not integer")
    for o in report["outputs"]:
        if o["dtype"] not in ("uint8", "int8"):
            problems.append(f"output {o['shape']} dtype is {o['dtype']}, not integer")
    scale, zp = report["input"]["quantization"]
    if report["input"]["dtype"] == "uint8" and (scale, zp) != (1.0, 0):
        problems.append(f"input quantisation is scale={scale}, zero_point={zp}: it must map uint8 pixels "
                        "exactly (scale 1, zero point 0)")
    return problems
