"""Parity gate: does the int8 model still agree with the float Keras student?

    python -m convert.parity --run artifacts/RUN [--max-drop 1.0] [--min-agreement 98]

Runs on the run's held-out test split (never used for calibration). The int8
model goes through device.runtime.Classifier - the code the board runs - and the
float model through Keras. Exit 1 when the gate fails, 2 on usage errors.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from convert import calibration
from convert.tflite import VARIANT_SOURCES, model_of, record_variant
from device.atomic import atomic_write_bytes, atomic_write_json
from device.metadata import ModelError, read_metadata
from device.metrics import pct, softmax, summarize
from device.runtime import RUNTIMES, Classifier, ClassifierOptions
from train.config import RUN_DIR


def evaluate(run_dir, model_name="student_int8", float_name="student", max_drop=1.0, min_agreement=98.0,
             runtime="auto") -> dict:
    import keras

    run_dir = Path(run_dir)
    split = calibration.read_split(run_dir)
    classes, test_paths = split["classes"], split["test"]
    calib_f = run_dir / "calibration.txt"
    calib = set(calib_f.read_text().split()) if calib_f.is_file() else set()
    overlap = calib & set(test_paths)
    if overlap:
        raise ModelError(f"{len(overlap)} calibration images are in the evaluation split")
    float_path = run_dir / f"{float_name}.keras"
    if not float_path.is_file():
        raise FileNotFoundError(f"--float-model: no {float_path.name} in {run_dir}")
    clf = Classifier(run_dir / f"{model_name}.tflite", ClassifierOptions(runtime=runtime))
    x = calibration.load(test_paths, clf.size)
    labels = np.array([classes.index(Path(p).parent.name) for p in test_paths])
    keras_model = keras.models.load_model(float_path)
    temperature = clf.meta.get("temperature", {}).get("value", 1.0)  # folded into the device model's last layer
    p_float = softmax(keras_model.predict(x.astype(np.float32)[..., None], batch_size=128, verbose=0) / temperature)
    assessed = [clf.assess_pixels(img) for img in x]
    p_int8 = np.stack([a.probabilities for a in assessed])
    f, q = summarize(labels, p_float, classes), summarize(labels, p_int8, classes)
    diff = np.abs(p_float - p_int8)
    agreement = float((p_float.argmax(1) == p_int8.argmax(1)).mean() * 100)
    drop = (f["accuracy"] - q["accuracy"]) * 100
    failures = []
    if drop > max_drop:
        failures.append(f"accuracy drop {drop:.2f} points > {max_drop}")
    if agreement < min_agreement:
        failures.append(f"top-1 agreement {agreement:.2f}% < {min_agreement}%")
    conf, correct = p_int8.max(1), p_int8.argmax(1) == labels
    coverage = [{"min_confidence": t, "coverage": float((conf >= t).mean()),
                 "accuracy": float(correct[conf >= t].mean()) if (conf >= t).any() else None}
                for t in (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)]
    ood = None
    if clf.ood is not None:  # the OOD flag on in-distribution scans: how many --reject-ood still answers
        kept = np.array([a.in_distribution for a in assessed])
        ood = {"answered": float(kept.mean()), "accuracy_answered": float(correct[kept].mean()) if kept.any() else None,
               "threshold_keeps_on_validation": clf.meta["ood"]["keep"]}
    return {
        "run": run_dir.name, "model": model_name, "float_model": float_name, "runtime": clf.runtime,
        "temperature": temperature, "reject_ood": ood,
        "int8_confidence_coverage": coverage,
        "n": int(len(labels)), "classes": classes, "float": f, "int8": q,
        "accuracy_drop_points": drop, "agreement_percent": agreement,
        "prob_abs_diff": {"mean": float(diff.mean()), "max": float(diff.max())},
        "thresholds": {"max_drop_points": max_drop, "min_agreement_percent": min_agreement},
        "passed": not failures, "failures": failures,
        "_probs": (p_float, p_int8, labels),
    }


def to_markdown(r) -> str:
    f, q = r["float"], r["int8"]
    lines = [f"# Parity: {r['model']} vs float {r['float_model']} ({r['run']}, {r['n']} held-out images, "
             f"runtime {r['runtime']})", "",
             "| metric | float (Keras) | int8 (TFLite) |", "|---|---:|---:|",
             f"| accuracy | {f['accuracy']:.2%} | {q['accuracy']:.2%} |",
             f"| macro-F1 | {f['macro_f1']:.4f} | {q['macro_f1']:.4f} |",
             f"| ECE | {f['ece']:.4f} | {q['ece']:.4f} |"]
    for c in r["classes"]:
        lines.append(f"| recall {c} | {f['per_class_recall'][c]:.2%} | {q['per_class_recall'][c]:.2%} |")
    lines += ["", f"- top-1 agreement: {r['agreement_percent']:.2f}% (gate >= {r['thresholds']['min_agreement_percent']}%)",
              f"- accuracy drop: {r['accuracy_drop_points']:+.2f} points (gate <= {r['thresholds']['max_drop_points']})",
              f"- |p_float - p_int8|: mean {r['prob_abs_diff']['mean']:.4f}, max {r['prob_abs_diff']['max']:.4f}",
              f"- result: {'PASS' if r['passed'] else 'FAIL: ' + '; '.join(r['failures'])}", "",
              "int8 accuracy / coverage with `--min-confidence`:", "",
              "| min confidence | coverage | accuracy on answered |", "|---:|---:|---:|"]
    for c in r["int8_confidence_coverage"]:
        lines.append(f"| {c['min_confidence']:.2f} | {c['coverage']:.1%} | {pct(c['accuracy'])} |")
    if r.get("reject_ood"):
        o = r["reject_ood"]
        lines += ["", f"`--reject-ood` answers {o['answered']:.1%} of these held-out images (its threshold keeps "
                      f"{o['threshold_keeps_on_validation']:.0%} of the validation split), accuracy on those "
                      f"{o['accuracy_answered']:.2%}."]
    return "\n".join(lines) + "\n"


def scatter_png(r, path):
    from train.plots import plt, save_fig

    p_float, p_int8, labels = r["_probs"]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(p_float.ravel(), p_int8.ravel(), s=4, alpha=0.4)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("float probability")
    ax.set_ylabel("int8 probability")
    ax.set_title(f"agreement {r['agreement_percent']:.1f}%, drop {r['accuracy_drop_points']:+.2f} pt")
    save_fig(fig, path)


def parity_stem(model: str) -> str:
    """The gate's report files of a variant: parity.* for the student, parity_<variant>.* for any other."""
    return "parity" if model == "student_int8" else f"parity_{model}"


def gate(run: Path, model: str, float_model: str, max_drop: float, min_agreement: float, runtime: str) -> bool:
    """Gate one int8 variant against its float model; write its report and record the figures in its sidecar."""
    r = evaluate(run, model, float_model, max_drop, min_agreement, runtime)
    stem = parity_stem(model)
    scatter_png(r, run / f"{stem}.png")
    md = to_markdown(r)
    atomic_write_bytes(run / f"{stem}.md", md.encode())
    r.pop("_probs")
    atomic_write_json(run / f"{stem}.json", r)
    # Record the figures in the model's sidecar (the hash covers the .tflite bytes only).
    side = run / f"{model}.json"
    meta = read_metadata(run / f"{model}.tflite")
    meta["metrics"]["parity"] = {k: r[k] for k in ("n", "agreement_percent", "accuracy_drop_points", "passed")}
    meta["metrics"]["int8"] = {k: r["int8"][k] for k in ("accuracy", "macro_f1", "ece", "n")}
    if r["reject_ood"]:
        meta["metrics"]["reject_ood"] = r["reject_ood"]
    atomic_write_json(side, meta)
    if (run / "manifest.json").is_file():  # the run's record of this variant: its gate, and where the report is
        record_variant(run, model, parity={"passed": bool(r["passed"]), "agreement_percent": r["agreement_percent"],
                                           "accuracy_drop_points": r["accuracy_drop_points"],
                                           "float_model": float_model, "report": f"{stem}.json"})
    print(md)
    return bool(r["passed"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m convert.parity", description=__doc__.splitlines()[0])
    p.add_argument("--run", default=RUN_DIR)
    p.add_argument("--model", default=None, help="TFLite variant in the run folder (default: student_int8, and "
                                                 "teacher_int8 too when the run has it)")
    p.add_argument("--float-model", default=None, help="Keras model it must agree with (default: the variant's "
                                                       "own, e.g. teacher for teacher_int8)")
    p.add_argument("--max-drop", type=float, default=1.0, help="max accuracy drop, points")
    p.add_argument("--min-agreement", type=float, default=98.0, help="min top-1 agreement, percent")
    p.add_argument("--runtime", default="auto", choices=["auto", *RUNTIMES])
    a = p.parse_args(argv)
    run = Path(a.run)
    # names with or without their suffix, as users type them
    if a.model:
        models = [a.model.removesuffix(".tflite")]
    else:
        models = ["student_int8"] + (["teacher_int8"] if (run / "teacher_int8.tflite").is_file() else [])
    passed = True
    try:
        for m in models:
            if not a.float_model and m not in VARIANT_SOURCES:
                print(f"error: --model {m} is not one of convert's variants: name the Keras model it must agree "
                      f"with (--float-model)", file=sys.stderr)
                return 2
            float_model = (a.float_model or model_of(m)).removesuffix(".keras")
            passed = gate(run, m, float_model, a.max_drop, a.min_agreement, a.runtime) and passed
    except (ModelError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
