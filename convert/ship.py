"""Ship a run's int8 student into device/models/ with its metadata and a model card.

    python -m convert.ship --run artifacts/real      (make ship RUN=real)

Refuses a model that has not passed the parity gate. The card's speed table is the run's own benchmark
(`make bench` writes <run>/bench/results.md), when there is one.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from convert.portable import portable
from device.atomic import atomic_write_bytes, atomic_write_json
from device.metadata import ModelError, read_metadata
from device.metrics import pct
from device.preprocess import HEAD_MEAN, HEAD_SD
from train.config import RUN_DIR, Config, ConfigError

ROOT = Path(__file__).resolve().parents[1]



# The teachers' Keras model names (train/models.py), as the card names them.
ARCHITECTURES = {**{f"teacher_efficientnet_lite{i}": f"EfficientNet-Lite{i}, ImageNet-pretrained" for i in range(3)},
                 "teacher_efficientnetb0": "EfficientNetB0", "teacher_ensemble": "ensemble of CNNs (logits averaged)",
                 "student_dwcnn": "a CNN of the student's family"}


EXPLAIN_NOTE = ("`python -m device.classify scans/ --explain maps/` (or `Classifier.explain`) writes an occlusion map "
                "per scan, computed with this int8 model: how much hiding each place weakens the answer. "
                "`python -m bench.explain --run RUN` draws such maps for test images of each class into the run's "
                "`bench/explanations.png`; the figure is not shipped, since it shows the data set's slices.")


def data_name(report: dict) -> str:
    """The training data as the card names it: the Kaggle set when the run read a copy of it, else its folder."""
    folder = str(report.get("data", ""))
    if folder.rstrip("/").endswith("brain-tumor-mri/Training"):
        return ("Kaggle \"Brain Tumor MRI Dataset\" (M. Nickparvar; assembled from figshare, SARTAJ and Br35H), "
                "`Training/` split only")
    return f"`{'/'.join(Path(folder).parts[-2:])}` (class-per-folder data given to `python -m train --data`)"


def teacher_name(manifest) -> str:
    c, t = manifest["config"], manifest["results"]["teacher"]
    if c.get("teacher"):  # given by path: named by what it is, and the run it came from
        arch = ARCHITECTURES.get(t.get("architecture"), "a Keras model")
        return f"{arch}, {t['input_size']} px (`{portable(c['teacher'])}`)"
    if c.get("teacher_recipe", "").startswith("lite"):
        return (f"EfficientNet-{c['teacher_recipe'].title()}, ImageNet-pretrained, {t['input_size']} px (fine-tuned "
                f"{c['teacher_head_epochs']} + {c['teacher_epochs']} epochs)")
    if c.get("teacher_recipe", "efficientnetb0") != "ensemble":
        return "EfficientNetB0"
    try:  # the run's own members, parsed as the run parsed them
        members = Config(teacher_members=c["teacher_members"], augment=c["augment"],
                         teacher_epochs=c["teacher_epochs"]).members
    except ConfigError:
        return f"ensemble `{c['teacher_members']}`"
    how = ", ".join(f"{m.augment}:{m.epochs}" for m in members)
    return f"ensemble of {len(members)} CNNs (student family, trained as {how} (augmentation:epochs), logits averaged)"


def choice_line(res, shipped: str) -> str | None:
    """Why this student and not the run's other one; the test split never decides."""
    if "baseline" not in res or "val" not in res["student"]:
        return None
    val = {k: res[k]["val"]["accuracy"] for k in ("student", "baseline")}
    other = "baseline" if shipped == "student" else "student"
    figures = f"distilled {pct(val['student'])}, no distillation {pct(val['baseline'])}"
    if val[shipped] >= val[other]:
        return f"- Chosen over the run's other student on validation accuracy ({figures}); the test split was not used."
    return (f"- Shipped although its twin scored higher on validation ({figures}): the distilled student ships when it "
            f"is within 1 point of its twin there, the rule fixed in docs/research.md (Q15) before any scan from "
            f"another source was scored; the test split was not used.")


def how_distilled(manifest) -> str:
    c = manifest["config"]
    if c.get("views"):
        vc = manifest["results"]["teacher"].get("view_cache", {})
        return (f"patient distillation from a view cache: {c['views']} views of each training image (crops, flips, "
                f"rotations, grey-level changes, blur, noise, mixup), the teacher's logits on each; KL at "
                f"T={c['temperature']:g} on the views, weight alpha={c['alpha']:g} on the images' labels, "
                f"{c['student_epochs']} epochs" + (f"; {vc['unlabeled_images']:,} unlabeled scans taught by the teacher"
                                                   if vc.get("unlabeled_images") else ""))
    return f"T={c['temperature']}, alpha={c['alpha']}, the teacher's cached logits on the training images"


def calibration_line(meta, parity) -> str:
    t = meta.get("temperature")
    if not t:
        return f"Calibration: expected calibration error (15 bins) of the int8 model {parity['int8']['ece']:.4f}."
    return (f"Calibration: temperature {t['value']:.2f}, fitted on the validation split and folded into the last "
            f"layer; expected calibration error (15 bins) on test {t['test_ece_before']:.2%} before, "
            f"{t['test_ece_after']:.2%} after (float), int8 {parity['int8']['ece']:.2%}.")


def model_card(manifest, parity, meta, bench=None, external=None, also=None, groups=None) -> str:
    d, res = manifest["data_report"], manifest["results"]
    ed, leak = d["exact_duplicates"], d["leakage"]
    counts = ", ".join(f"{c} {n:,}" for c, n in d["count_per_class"].items())
    test_n = sum(d["split"]["test"].values())
    L = [
        "# Model card: brain-MRI tumour classifier, int8 student", "",
        "**Not a medical device.** Intended for research and education: demonstrating knowledge distillation",
        "and int8 deployment on small ARM boards. It must not be used to diagnose, triage or treat anyone.", "",
        "## Model",
        f"- `student_int8.tflite`: {meta['size_bytes']:,} bytes, sha256 `{meta['sha256'][:16]}...`; full-integer",
        f"  (uint8 pixels in, scale 1 / zero point 0; uint8 probabilities out); {res['student']['params']:,}",
        f"  parameters, {res['student']['macs'] / 1e6:.1f} M multiply-accumulates at "
        f"{meta['input']['size']}x{meta['input']['size']} px, grayscale.",
        (f"- Distilled ({how_distilled(manifest)}) from teacher {teacher_name(manifest)} "
         f"({res['teacher']['params']:,} parameters, {res['teacher']['input_size']} px)."
         if parity["float_model"] == "student" else
         "- Trained on labels only (the run's no-distillation baseline): in this run distillation did not beat it "
         "(see the metrics below and docs/research.md), so the better model is the one shipped."),
        choice_line(res, parity["float_model"]),
        f"- Produced by run `{manifest['run']}` (git `{manifest['git_commit']}`, {manifest['created']}).", "",
        "## Training data",
        f"- {data_name(d)}: {d['total']:,} images ({counts}); {len(d['skipped'])} unreadable files skipped.",
        f"- Known duplicates: {ed['redundant_files']} byte-identical redundant copies in {ed['groups']} groups, and "
        f"{d['near_duplicate_pairs']:,} near-duplicate pairs (16x16 thumbnail RMS < {d['near_dup_threshold']}), "
        "mostly re-encoded copies and neighbouring slices of one scan.",
        f"- Split (seed {d['seed']}, stratified): train {sum(d['split']['train'].values()):,}, validation "
        f"{sum(d['split']['val'].values())} (temperature, OOD threshold, best epoch), held-out test {test_n}. "
        "Evaluation images that "
        f"duplicate or nearly duplicate a training image were removed: {leak['test']['excluded']} of "
        f"{leak['test']['of']} from test, {leak['val']['excluded']} of {leak['val']['of']} from validation.",
        f"- Calibration (int8): {meta.get('calibration', {}).get('count', '?')} training-split images, stratified, "
        "listed in the run's `calibration.txt`; none from validation or test.", "",
        "## Preprocessing",
        f"Contract v{meta['preprocess']['contract_version']} (`device/preprocess.py`): first frame (DICOM: the middle "
        "one, windowed), EXIF orientation, grayscale, "
        + ("cropped to the head's bounding box (largest bright region of a blurred thumbnail, 3% margin) and "
           "stretched to the square" if meta["preprocess"]["contract_version"] >= 2 else "pad to square with black")
        + ", bilinear resize"
        + (f", then the head's grey levels standardised (mean {HEAD_MEAN:g}, sd {HEAD_SD:g})"
           if meta["preprocess"]["contract_version"] >= 3
           else "") + ", uint8. Training used the identical function.", "",
        f"## Metrics (held-out test split, {parity['n']} images)", "",
        "| model | accuracy | macro-F1 |", "|---|---:|---:|",
        f"| teacher: {teacher_name(manifest)} (Keras float) | "
        f"{pct(res['teacher']['test']['accuracy'])} | "
        f"{res['teacher']['test']['macro_f1']:.4f} |",
        f"| student, no distillation (Keras float) | {pct(res['baseline']['test']['accuracy'])} | "
        f"{res['baseline']['test']['macro_f1']:.4f} |" if "baseline" in res else None,
        f"| student, distilled (Keras float) | {pct(res['student']['test']['accuracy'])} | "
        f"{res['student']['test']['macro_f1']:.4f} |",
        f"| **{'student, distilled' if parity['float_model'] == 'student' else 'student, no distillation'}, int8 "
        f"(this file)** | **{pct(parity['int8']['accuracy'])}** | "
        f"**{parity['int8']['macro_f1']:.4f}** |", "",
        "Per-class recall (int8): " + ", ".join(f"{c} {pct(v)}" for c, v in parity["int8"]["per_class_recall"].items())
        + ".", "",
        f"Parity (int8 vs float, device interpreter path, runtime {parity['runtime']}): top-1 agreement "
        f"{parity['agreement_percent']:.2f}%, accuracy drop {parity['accuracy_drop_points']:+.2f} points, mean |dp| "
        f"{parity['prob_abs_diff']['mean']:.4f}, max {parity['prob_abs_diff']['max']:.4f}.", "",
        calibration_line(meta, parity), "",
        "Accuracy / coverage with `python -m device.classify --min-confidence X` (below X the answer is "
        "\"uncertain\"):", "", "| min confidence | coverage | accuracy on answered |", "|---:|---:|---:|",
    ]
    for c in parity["int8_confidence_coverage"]:
        L.append(f"| {c['min_confidence']:.2f} | {c['coverage']:.1%} | {pct(c['accuracy'])} |")
    if meta.get("ood"):
        o, rej = meta["ood"], parity.get("reject_ood") or {}
        L += ["", "## Scans unlike the training images",
              "Every answer says whether the scan looks like the images the model was trained on (`in_distribution`). "
              "When it does not (a different scanner, sequence or preprocessing; not a brain MRI at all), the label "
              "is much less trustworthy, and `--reject-ood` answers \"uncertain\" instead.", "",
              f"How: the distance of the model's own penultimate features to the nearest class centre of the "
              f"training split (Mahalanobis, shared covariance); the threshold keeps {o['keep']:.0%} of the "
              f"validation split. On the held-out test split `--reject-ood` answers {pct(rej.get('answered'))}, "
              f"accuracy on those {pct(rej.get('accuracy_answered'))}."]
    L += ["", "## Where the model looks", EXPLAIN_NOTE]
    for v, p in (also or {}).items():
        L += ["", f"## Also shipped: `{v}.tflite`",
              f"The run's {'teacher, ' + teacher_name(manifest) if v.startswith('teacher') else v}, in full int8 "
              f"({p['n']} held-out images: accuracy {pct(p['int8']['accuracy'])}, agreement with its float model "
              f"{p['agreement_percent']:.2f}%). Larger and slower than the student (see the speed table); how "
              f"each does on scans from other sources is in that table: `python -m device.classify --model "
              f"device/models/{v}.tflite scans/`. It has no OOD statistics."
              + (" Beside the student, `python -m device.classify scans/ --second-opinion` runs it on every scan "
                 "and marks each answer the two disagree on (docs/research.md, Q21)." if v == "teacher_int8" else "")]
    if external:
        L += ["", "## Scans from other sources (evaluation only)", "",
              f"This file is the run's `{meta['run'].get('variant', 'student_int8')}` in the table.", "", external]
    if groups:
        L += ["", "## Style groups (in-house)", "",
              "The source shortcut measured on the training data alone (docs/research.md, Q19): k-means groups of "
              "generic ImageNet features, fitted on the training split.", "", groups]
    if bench:
        L += ["", "## Speed and size", "", bench]
    L += ["", "## Limitations",
          "- No patient identifiers in the data set, so the split is by image, not by patient: slices of one",
          "  patient can sit in train and test. Near-duplicate removal reduces but cannot remove this leakage.",
          "- One public data set, collected from three sources with unknown scanners and protocols; on scans from",
          "  elsewhere it is less accurate (see the table of other sources above, when present).",
          "- Grayscale 2-D slices only (axial, coronal, sagittal mixed); no 3-D volumes, no other tumour types.",
          "  The out-of-distribution flag catches many unfamiliar scans, not all, and it does not flag likely-wrong",
          "  answers; `--second-opinion` catches most of those in-house (docs/research.md, Q21). A confident label",
          "  is not proof.",
          "- The no-tumour class comes almost all from one collection: the models learn its look, and earlier models",
          "  called many of its tumour scans \"no tumour\" (docs/research.md, Q19). Contract v3 standardises the grey",
          "  levels that differ by source (Q24); figures on that collection's tumour scans are not measured here.",
          "- Figures come from one run and one seed unless stated; see README for the KD ablation."]
    return "\n".join(x for x in L if x is not None) + "\n"


def gate_result(run: Path, manifest: dict, variant: str) -> dict:
    """The parity gate's full report of a variant, found through the manifest's record of it (convert writes the
    record, parity adds its result)."""
    record = manifest.get("variants", {}).get(variant)
    if record is None:
        raise ModelError(f"{run}/manifest.json records no {variant}: run make tflite (python -m convert) first")
    if not record.get("parity"):
        raise ModelError(f"{variant} has no parity gate result: run make parity (python -m convert.parity --run "
                         f"{run}) first")
    return json.loads((run / record["parity"]["report"]).read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m convert.ship", description=__doc__.splitlines()[0])
    p.add_argument("--run", default=RUN_DIR)
    p.add_argument("--model", default="student_int8", help="int8 variant of the run to ship (e.g. baseline_int8)")
    p.add_argument("--dest", default=str(ROOT / "device" / "models"))
    p.add_argument("--also", default="", help="more int8 variants of the run to ship beside it, under their own "
                                              "names (e.g. teacher_int8: the big model, for scans from elsewhere)")
    a = p.parse_args(argv)
    run, dest = Path(a.run), Path(a.dest)
    try:
        meta = read_metadata(run / f"{a.model}.tflite")
        manifest = json.loads((run / "manifest.json").read_text())
        parity = gate_result(run, manifest, a.model)
        also = {v: (read_metadata(run / f"{v}.tflite"), gate_result(run, manifest, v))
                for v in filter(None, a.also.split(","))}
    except (ModelError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = [name for name, p in [(a.model, parity)] + [(v, x[1]) for v, x in also.items()] if not p.get("passed")]
    if failed:
        print(f"error: {', '.join(failed)} of {run} failed the parity gate", file=sys.stderr)
        return 1
    bench_md = run / "bench" / "results.md"
    bench = bench_md.read_text() if bench_md.is_file() else None
    external_md = run / "bench" / "external.md"
    external = external_md.read_text() if external_md.is_file() else None
    groups_md = run / "bench" / "groups.md"
    groups = groups_md.read_text() if groups_md.is_file() else None
    # Always installed under the name the device loads by default.
    atomic_write_bytes(dest / "student_int8.tflite", (run / f"{a.model}.tflite").read_bytes())
    atomic_write_json(dest / "student_int8.json", meta)
    for v, (m, _) in also.items():
        atomic_write_bytes(dest / f"{v}.tflite", (run / f"{v}.tflite").read_bytes())
        atomic_write_json(dest / f"{v}.json", m)
        read_metadata(dest / f"{v}.tflite")
    for old in dest.glob("*.tflite"):  # a model of an earlier release that this one does not ship
        if old.stem != "student_int8" and old.stem not in also:
            old.unlink()
            old.with_suffix(".json").unlink(missing_ok=True)
    # portable(): reports written before commands were recorded portably may still hold this machine's paths
    card = portable(model_card(manifest, parity, meta, bench, external, {v: x[1] for v, x in also.items()}, groups))
    atomic_write_bytes(dest / "MODEL_CARD.md", card.encode())
    read_metadata(dest / "student_int8.tflite")  # the shipped pair verifies
    print(f"shipped {run}/{a.model}.tflite -> {dest}/student_int8.tflite (with .json, MODEL_CARD.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
