"""The documented ship path, exactly as the README gives it, on phantoms (issue 42): a run made with --teacher
records its teacher, `make tflite parity ship SHIP_ARGS="--also teacher_int8"` converts, gates and ships both
int8 models with the card, and the device CLI classifies with each."""
import json
import subprocess
import sys

from tests.conftest import ROOT, tiny_config


def test_a_teacher_run_is_converted_gated_and_shipped_with_its_teacher(tiny_run, phantoms, tmp_path):
    from train.run import run

    cfg = tiny_config(phantoms, tmp_path, teacher=str(tiny_run / "teacher.keras"), student_epochs=2, views=2,
                      baseline=False, alpha=0.3, temperature=1.0)
    assert run(cfg) == 0
    out, models = tmp_path / "run", tmp_path / "models"
    assert (out / "teacher.keras").is_file()          # the given teacher is recorded in the run
    p = subprocess.run(["make", "--no-print-directory", "tflite", "parity", "ship", f"OUT={out}",
                        "CONVERT_ARGS=--variants student_int8,teacher_int8 --calibration-size 40",
                        # a 2-epoch student: the gate's wiring is under test here, not its thresholds
                        "PARITY_ARGS=--max-drop 100 --min-agreement 0",
                        f"SHIP_ARGS=--also teacher_int8 --dest {models}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-1500:] + p.stderr[-1500:]
    for stem in ("parity", "parity_teacher_int8"):    # make parity gates both int8 models
        assert json.loads((out / f"{stem}.json").read_text())["passed"]
    # the run folder is data: the manifest records each variant made, its temperature and its gate
    variants = json.loads((out / "manifest.json").read_text())["variants"]
    assert set(variants) == {"student_int8", "teacher_int8"}
    assert variants["student_int8"]["model"] == "student" and variants["teacher_int8"]["temperature"] == 1.0
    assert variants["student_int8"]["temperature"] > 0 and variants["teacher_int8"]["parity"]["passed"]
    assert variants["teacher_int8"]["parity"]["report"] == "parity_teacher_int8.json"
    assert {f.name for f in models.iterdir()} == {"student_int8.tflite", "student_int8.json", "teacher_int8.tflite",
                                                  "teacher_int8.json", "MODEL_CARD.md"}
    card = (models / "MODEL_CARD.md").read_text()
    assert "teacher_int8" in card
    metrics = card.split("| model | accuracy | macro-F1 |")[1].split("\n\n")[0]   # one unbroken table, no twin row
    assert metrics.count("\n| ") == 3 and "no distillation" not in metrics, metrics  # teacher, float, int8
    scan = next((phantoms / "Testing" / "glioma").iterdir())
    answers = {}
    for m in ("student_int8", "teacher_int8"):
        c = subprocess.run([sys.executable, "-m", "device.classify", "--json", "--model", str(models / f"{m}.tflite"),
                            str(scan)], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert c.returncode == 0 and json.loads(c.stdout)["label"], (m, c.stderr)
        answers[m] = json.loads(c.stdout)
    # the shipped pair as the board runs it: the teacher shipped beside the student gives the second opinion
    c = subprocess.run([sys.executable, "-m", "device.classify", "--json", "--model",
                        str(models / "student_int8.tflite"), "--second-opinion", str(scan)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert c.returncode == 0, c.stderr
    rec, teacher = json.loads(c.stdout), answers["teacher_int8"]["probabilities"]
    assert rec["second_opinion"] == max(teacher, key=teacher.get)
    assert rec["agrees"] == (rec["label"] == rec["second_opinion"])
