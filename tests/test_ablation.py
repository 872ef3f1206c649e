import json

from bench import ablation


def _run(tmp_path, name, seed, student, baseline, teacher=95.0):
    d = tmp_path / name
    d.mkdir()
    res = {k: {"test": {"accuracy": v / 100}, "val": {"accuracy": v / 100}} for k, v in
           (("student", student), ("baseline", baseline), ("teacher", teacher))}
    (d / "manifest.json").write_text(json.dumps(
        {"run": name, "config": {"seed": seed, "alpha": 0.3, "temperature": 4.0}, "results": res}))
    return str(d)


def test_ablation_reports_gain_mean_and_sd_over_seeds(tmp_path):
    runs = [_run(tmp_path, "a", 1, 93.0, 92.0), _run(tmp_path, "b", 2, 94.0, 91.0), _run(tmp_path, "c", 3, 92.0, 93.0)]
    docs = tmp_path / "docs"
    argv = ["--data", "unused", "--teacher", "unused", "--seeds", "", "--docs", str(docs), "--out", str(tmp_path / "o")]
    for r in runs:
        argv += ["--extra-run", r]
    assert ablation.main(argv) == 0
    md = (docs / "ablation.md").read_text()
    # gains +1, +3, -1: mean +1.00, sd 2.00; negative gains are shown as such
    assert "**1.00 ± 2.00** |" in md
    assert "| 3 | 95.00 | 92.00 | 93.00 | -1.00 |" in md
    data = json.loads((docs / "ablation.json").read_text())
    assert [p["seed"] for p in data["seeds"]] == [1, 2, 3]


def test_scratch_student_is_reused_only_when_its_config_matches():
    cfg = {"seed": 1, "image_size": 96, "student_epochs": 18, "teacher": "a.keras", "teacher_size": 128, "out": "old"}
    old = {"run": "seed1", "config": cfg, "results": {"baseline": {"test": {"accuracy": 0.9}}}}
    new = {"run": "seed1", "config": dict(cfg, teacher="b.keras", teacher_size=192, out="new"),
           "results": {"student": {"test": {"accuracy": 0.95}}}}
    m = ablation.with_baseline_from(new, old)
    assert m["results"]["baseline"]["test"]["accuracy"] == 0.9 and m["baseline_from"] == "old"
    assert "baseline" not in new["results"]  # the run's own manifest is left alone
    try:
        ablation.with_baseline_from(dict(new, config=dict(new["config"], image_size=128)), old)
    except SystemExit as e:
        assert "image_size" in str(e)
    else:
        raise AssertionError("a scratch student of another image size was reused")


def test_extra_run_without_baseline_takes_its_seeds_scratch_student(tmp_path):
    kd = tmp_path / "kd"
    kd.mkdir()
    res = {k: {"test": {"accuracy": v}, "val": {"accuracy": v}} for k, v in (("student", 0.95), ("teacher", 0.96))}
    cfg = {"seed": 7, "alpha": 0.3, "temperature": 4.0, "teacher_folds": 4, "out": str(kd)}
    (kd / "manifest.json").write_text(json.dumps({"run": "kd", "config": cfg, "results": res}))
    base = tmp_path / "base" / "seed7"
    base.mkdir(parents=True)
    (base / "manifest.json").write_text(json.dumps({"run": "seed7", "config": dict(cfg, teacher_folds=0, out="b"),
                                                    "results": {"baseline": res["student"] | {
                                                        "test": {"accuracy": 0.92}, "val": {"accuracy": 0.93}}}}))
    docs = tmp_path / "docs"
    argv = ["--data", "unused", "--teacher", "unused", "--seeds", "", "--docs", str(docs), "--out",
            str(tmp_path / "o"), "--extra-run", str(kd)]
    try:
        ablation.main(argv)
    except SystemExit as e:
        assert "no scratch student" in str(e)
    else:
        raise AssertionError("a run without a scratch student was reported")
    assert ablation.main(argv + ["--reuse-baselines", str(tmp_path / "base")]) == 0
    md = (docs / "ablation.md").read_text()
    assert "| 7 | 96.00 | 95.00 | 92.00 | +3.00 |" in md and "seed 7 from `b`" in md


def test_pooled_gain_weights_each_split_by_its_image_count(tmp_path, capsys):
    from tools.pooled_gain import main

    # seed 1: +2 on 100 val images, -1 on 300 test images -> +2*100/400 - 1*300/400 = -0.25 pooled
    # seed 2: 0 on val, +1 on test -> +0.75 pooled
    seeds = [{"seed": 1, "student": 90.0, "baseline": 91.0, "student_val": 95.0, "baseline_val": 93.0},
             {"seed": 2, "student": 92.0, "baseline": 91.0, "student_val": 94.0, "baseline_val": 94.0}]
    (tmp_path / "r.json").write_text(json.dumps({"seeds": seeds}))
    assert main(["--sizes", "100,300", str(tmp_path / "r.json")]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert "| 2 | +0.00 ± 1.41 | +1.00 ± 1.41 | +0.25 ± 0.71 | 1/2 |" in row
