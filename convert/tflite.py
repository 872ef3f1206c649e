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

# Every variant a run can be converted to: the Keras model of the run it is made from, and the conversion. The
# manifest's "variants" records each one made (file, model, kind, temperature, and its parity gate once run):
# later stages read that record, never a file name's parts.
VARIANT_SOURCES = {"student_int8": ("student", "int8"), "student_fp32": ("student", "fp32"),
                   "student_fp16": ("student", "fp16"), "student_dynamic": ("student", "dynamic"),
                   "teacher_fp32": ("teacher", "fp32"), "teacher_int8": ("teacher", "int8"),
                   "baseline_int8": ("baseline", "int8")}
VARIANTS = tuple(VARIANT_SOURCES)
DEFAULT_VARIANTS = ("student_int8", "student_fp32", "student_fp16", "student_dynamic", "teacher_fp32", "teacher_int8")


def model_of(variant: str) -> str:
    """The Keras model of the run a variant is converted from (student, teacher or baseline)."""
    return VARIANT_SOURCES[variant][0]


def record_variant(run_dir: Path, variant: str, **fields) -> None:
    """Add or update the manifest's record of one variant (one process at a time writes it: convert runs its
    variants one after another)."""
    manifest_f = Path(run_dir) / "manifest.json"
    manifest = json.loads(manifest_f.read_text())
    entry = manifest.setdefault("variants", {}).setdefault(variant, {})
    entry.update(fields)
    atomic_write_json(manifest_f, manifest)


def with_softmax(model, temperature: float = 1.0, features: bool = False):
    """What the board runs: probabilities instead of logits, with the run's fitted temperature folded into the
    last layer (its weights divided by T: the int8 graph is unchanged, the probabilities are calibrated), and for
    the OOD flag a second output, the pooled features that last layer classifies (device/ood.py)."""
    import keras

    inner = model
    if temperature != 1.0:
        inner = keras.models.clone_model(model)
        inner.set_weights(model.get_weights())
        head = inner.get_layer("logits")
        kernel, bias = head.get_weights()
        head.set_weights([kernel / temperature, bias / temperature])
    inp = keras.Input(model.input_shape[1:], batch_size=1, name="pixels")
    if not features:
        return keras.Model(inp, keras.layers.Softmax(name="probabilities")(inner(inp)), name=f"{model.name}_probs")
    logits, pooled = keras.Model(inner.input, [inner.output, inner.get_layer("logits").input])(inp)
    return keras.Model(inp, [keras.layers.Softmax(name="probabilities")(logits),
                             keras.layers.Identity(name="features")(pooled)], name=f"{model.name}_probs_features")


def outputs_by_width(path, x: np.ndarray) -> dict[int, np.ndarray]:
    """Every output of a .tflite on uint8 images x (N, size, size), dequantised, keyed by its width."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp, outs = it.get_input_details()[0], it.get_output_details()
    got = {int(o["shape"][-1]): [] for o in outs}
    for img in x:
        it.set_tensor(inp["index"], img.reshape(inp["shape"]).astype(inp["dtype"]))
        it.invoke()
        for o in outs:
            v = it.get_tensor(o["index"])[0].astype(np.float32)
            scale, zp = o["quantization"]
            got[int(o["shape"][-1])].append((v - zp) * scale if scale else v)
    return {k: np.stack(v) for k, v in got.items()}


def fit_ood(path, split: dict, classes: list[str], size: int) -> dict:
    """The sidecar's OOD statistics, from this very model's features on the training and validation splits."""
    from device import ood

    def features(paths):
        out = outputs_by_width(path, calibration.load(paths, size))
        return out[max(out)]  # the features are the wider output (checked: wider than the labels)

    train_labels = [classes.index(Path(p).parent.name) for p in split["train"]]
    return ood.fit(features(split["train"]), train_labels, features(split["val"]), len(classes))


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


def convert_variant(run_dir, variant: str, calibration_size: int = calibration.SIZE, seed: int = calibration.SEED) -> dict:
    """Write <run>/<variant>.tflite and its .json sidecar; return a summary."""
    import keras

    run_dir = Path(run_dir)
    which, kind = VARIANT_SOURCES[variant]
    split = calibration.read_split(run_dir)
    classes = split["classes"]
    model = keras.models.load_model(run_dir / f"{which}.keras")
    size = int(model.input_shape[1])
    rep = None
    extra = {}
    if kind == "int8":
        files = calibration.choose(split["train"], classes, calibration_size, seed)
        atomic_write_bytes(run_dir / "calibration.txt", ("\n".join(files) + "\n").encode())
        rep = calibration.load(files, size)
        extra["calibration"] = {"file_list": "calibration.txt", "count": len(files), "seed": seed,
                                "source": "training split, stratified by class"}
    manifest_f = run_dir / "manifest.json"
    manifest = json.loads(manifest_f.read_text()) if manifest_f.is_file() else {}
    res = manifest.get("results", {}).get(which, {})
    # Students get calibrated probabilities and, in int8 (what ships), the features for the OOD flag.
    if which != "teacher" and "temperature" not in res.get("calibration", {}):
        # never silently T = 1: the probabilities the card and the OOD flag quote assume the fitted temperature
        raise ValueError(f"{manifest_f} records no fitted temperature for the {which}: the run did not finish, or "
                         f"an older release made it; train it again (python -m train)")
    temperature = float(res["calibration"]["temperature"]) if which != "teacher" else 1.0
    features = which != "teacher" and kind == "int8"
    data = convert(with_softmax(model, temperature, features), kind, rep)
    path = run_dir / f"{variant}.tflite"
    atomic_write_bytes(path, data)
    if temperature != 1.0:
        extra["temperature"] = {"value": temperature, "folded_into": "the last layer's weights and bias",
                                **{k: v for k, v in res["calibration"].items() if k != "temperature"}}
    if features:
        extra["ood"] = fit_ood(path, split, classes, size)
    rep_audit = audit(path)
    problems = check_full_int8(rep_audit) if kind == "int8" else []
    extra["audit"] = {"op_types": rep_audit["op_types"], "float_ops": rep_audit["float_ops"],
                      "problems": problems}
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
    if manifest_f.is_file():
        record_variant(run_dir, variant, file=path.name, model=which, kind=kind, temperature=temperature,
                       bytes=path.stat().st_size, sha256=meta["sha256"], parity=None)
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
