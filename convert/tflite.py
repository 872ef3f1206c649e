"""Convert ONE model variant to TFLite (run in its own process: TFLiteConverter leaks per call).

    python -m convert.tflite --run artifacts/RUN --variant student_int8
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from convert import calibration
from convert.audit import audit, check_full_int8
from device.atomic import atomic_write_bytes, atomic_write_json
from device.metadata import make_metadata

# Every variant a run can be converted to ("<model>_<kind>"), and the ones `make tflite` writes.
VARIANTS = ("student_int8", "student_fp32", "student_fp16", "student_dynamic", "teacher_fp32", "teacher_int8",
            "baseline_int8")
DEFAULT_VARIANTS = ("student_int8", "student_fp32", "student_fp16", "student_dynamic", "teacher_fp32", "teacher_int8")


def with_softmax(model):
    """The device wants probabilities; training models output logits."""
    import keras

    inp = keras.Input(model.input_shape[1:], batch_size=1, name="pixels")
    out = keras.layers.Softmax(name="probabilities")(model(inp))
    return keras.Model(inp, out, name=f"{model.name}_probs")


def convert(model, kind: str, representative: np.ndarray | None = None) -> bytes:
    """kind: fp32 | fp16 | dynamic | int8 (full integer, uint8 pixels in)."""
    import tensorflow as tf

    # from_keras_model freezes the weights into the flatbuffer (concrete functions
    # keep them as resource variables that the int8 calibrator cannot read).
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if kind == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif kind == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif kind == "int8":
        if representative is None or len(representative) == 0:
            raise ValueError("int8 conversion needs a representative data set")
        rep = representative.astype(np.float32).copy()
        # Pin the input's calibrated range to exactly [0, 255] so the uint8 input
        # quantisation is scale 1 / zero point 0: raw pixels go straight in.
        # (Two corner pixels of one image; MRI corners are background anyway.)
        rep[0, 0, 0], rep[0, 0, 1] = 0.0, 255.0

        def gen():
            for img in rep:
                yield [img[None, :, :, None]]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = gen
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.uint8
    elif kind != "fp32":
        raise ValueError(f"unknown kind {kind}")
    return conv.convert()


def convert_variant(run_dir, variant: str, calibration_size: int = calibration.SIZE, seed: int = calibration.SEED,
                    representative_override: np.ndarray | None = None, out_name: str | None = None) -> dict:
    """Write <run>/<out_name or variant>.tflite and its .json sidecar; return a summary."""
    import keras

    run_dir = Path(run_dir)
    which, kind = variant.split("_", 1)
    split = calibration.read_split(run_dir)
    classes = split["classes"]
    model = keras.models.load_model(run_dir / f"{which}.keras")
    size = int(model.input_shape[1])
    rep = None
    extra = {}
    if kind == "int8":
        if representative_override is not None:
            rep = representative_override
        else:
            files = calibration.choose(split["train"], classes, calibration_size, seed)
            atomic_write_bytes(run_dir / "calibration.txt", ("\n".join(files) + "\n").encode())
            rep = calibration.load(files, size)
            extra["calibration"] = {"file_list": "calibration.txt", "count": len(files), "seed": seed,
                                    "source": "training split, stratified by class"}
    data = convert(with_softmax(model), kind, rep)
    path = run_dir / f"{out_name or variant}.tflite"
    atomic_write_bytes(path, data)
    rep_audit = audit(path)
    problems = check_full_int8(rep_audit) if kind == "int8" else []
    extra["audit"] = {"op_types": rep_audit["op_types"], "float_ops": rep_audit["float_ops"],
                      "problems": problems}
    manifest_f = run_dir / "manifest.json"
    manifest = json.loads(manifest_f.read_text()) if manifest_f.is_file() else {}
    res = manifest.get("results", {}).get(which, {})
    meta = make_metadata(
        model_path=path, labels=classes, input_size=size,
        input_dtype=rep_audit["input"]["dtype"], input_quant=rep_audit["input"]["quantization"],
        output_dtype=rep_audit["output"]["dtype"], output_quant=rep_audit["output"]["quantization"],
        run={"run": run_dir.name, "git_commit": manifest.get("git_commit"), "created": manifest.get("created"),
             "model": which, "variant": variant},
        metrics={"keras_float": {k: res.get("test", {}).get(k) for k in ("accuracy", "macro_f1", "n")},
                 "params": res.get("params"), "macs": res.get("macs")},
        extra=extra)
    atomic_write_json(path.with_suffix(".json"), meta)
    return {"variant": variant, "path": str(path), "bytes": path.stat().st_size, "problems": problems,
            "op_types": rep_audit["op_types"], "input": rep_audit["input"], "output": rep_audit["output"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m convert.tflite", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--variant", required=True, choices=VARIANTS)
    p.add_argument("--calibration-size", type=int, default=calibration.SIZE)
    p.add_argument("--seed", type=int, default=calibration.SEED)
    a = p.parse_args(argv)
    try:
        r = convert_variant(a.run, a.variant, a.calibration_size, a.seed)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(r))
    return 3 if r["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
