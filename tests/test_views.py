"""The teacher view cache (train/views.py): views rendered from one crop at two sizes, a build that resumes
after a kill, a key that follows the teacher, the twin's mixed labels, and unlabeled scans taught by the teacher."""
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import tiny_config
from tests.test_sources import second_style
from train import views


def _sources(n=6, side=72, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    out = []
    for _ in range(n):
        cx, cy, r = rng.uniform(25, 47, 2).tolist() + [rng.uniform(8, 20)]
        out.append(np.where((xx - cx) ** 2 + (yy - cy) ** 2 < r * r, 200, 40).astype(np.uint8))
    return np.stack(out)


def test_the_identity_view_is_the_image_and_a_flip_mirrors_it():
    src = _sources(1)[0]
    plain = {"gamma": 1.0, "contrast": 1.0, "brightness": 0.0, "blur": 0.0, "noise": 0.0, "noise_seed": 0}
    whole = (36.0, 36.0, 72.0, 72.0)
    assert np.abs(views._render(Image.fromarray(src), 72, (whole, 0.0, False), plain) - src).max() < 1e-3
    assert np.abs(views._render(Image.fromarray(src), 72, (whole, 0.0, True), plain) - src[:, ::-1]).max() < 1e-3


def test_teacher_and_student_views_show_the_same_crop():
    """The teacher's render, shrunk to the student's size, matches the student's render (same crop, same grey
    levels); another view of the same image does not."""
    src = _sources(3)
    recipe = views.ViewRecipe(k=4, mixup=0.0, noise=0.0, blur=0.0)
    (s0, t0), _ = views.render_view(src, 0, 7, recipe, (32, 64))
    (s1, _), _ = views.render_view(src, 1, 7, recipe, (32, 64))
    shrunk = np.asarray(Image.fromarray(t0).resize((32, 32), Image.Resampling.BOX), np.float32)
    same = np.abs(shrunk - s0).mean()
    assert same < 6 and same < np.abs(s1.astype(np.float32) - s0).mean() / 2


def test_mixup_views_record_both_images_and_the_twin_mixes_their_labels():
    src = _sources(6)
    cache = views.build(src, lambda x: np.zeros((len(x), 3), np.float32), views.ViewRecipe(k=4, mixup=1.0),
                        (24, 32), _tmp(), "mix")
    assert (cache.a == np.repeat(np.arange(6), 4)).all() and (cache.a != cache.b).all()
    labels = np.array([0, 1, 2, 0, 1, -1], np.int32)  # the last image is unlabeled
    target, known = cache.soft_labels(labels, 3)
    assert np.allclose(target.sum(1)[known], 1.0)
    i = np.flatnonzero(known)[0]
    want = np.zeros(3, np.float32)
    want[labels[cache.a[i]]] += cache.lam[i]
    want[labels[cache.b[i]]] += 1 - cache.lam[i]
    assert np.allclose(target[i], want)
    assert not known[(cache.a == 5) | (cache.b == 5)].any()


def _tmp():
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp())


def test_a_killed_build_resumes_from_its_finished_shards(monkeypatch, tmp_path):
    monkeypatch.setattr(views, "SHARD", 8)
    src, recipe = _sources(6), views.ViewRecipe(k=4)   # 24 views: 3 shards
    calls = []

    def predict(x):
        calls.append(len(x))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while scoring the second shard
        return x.reshape(len(x), -1)[:, :3].astype(np.float32)

    with pytest.raises(KeyboardInterrupt):
        views.build(src, predict, recipe, (16, 24), tmp_path, "k")
    assert len(list((tmp_path / "views-k").glob("shard*.npz"))) == 1
    resumed = views.build(src, predict, recipe, (16, 24), tmp_path, "k")
    assert calls == [8, 8, 8, 8]                        # shard 1 once, then shards 2 and 3 only
    fresh = views.build(src, lambda x: x.reshape(len(x), -1)[:, :3].astype(np.float32), recipe, (16, 24),
                        tmp_path, "fresh")
    assert np.array_equal(resumed.x, fresh.x) and np.array_equal(resumed.logits, fresh.logits)


def test_the_key_follows_the_teacher_the_recipe_and_the_images(tmp_path):
    a, b = tmp_path / "a.keras", tmp_path / "b.keras"
    a.write_bytes(b"teacher one")
    b.write_bytes(b"teacher two")
    r = views.ViewRecipe()
    key = views.cache_key(views.teacher_digest([a]), r, "imgs", (96, 128), 42)
    assert key == views.cache_key(views.teacher_digest([a]), views.ViewRecipe(), "imgs", (96, 128), 42)
    assert key != views.cache_key(views.teacher_digest([b]), r, "imgs", (96, 128), 42)
    assert key != views.cache_key(views.teacher_digest([a]), views.ViewRecipe(k=r.k + 1), "imgs", (96, 128), 42)
    assert key != views.cache_key(views.teacher_digest([a]), r, "other", (96, 128), 42)
    a.write_bytes(b"teacher one, retrained")          # same path, another teacher
    assert key != views.cache_key(views.teacher_digest([a]), r, "imgs", (96, 128), 42)


def test_patient_distillation_pulls_the_student_towards_the_teacher_on_views():
    """On a fixed batch, the KD view loss falls with training steps: the student matches the cached logits."""
    import keras
    import tensorflow as tf

    from train.distill import Distiller
    from train.models import build_student

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    xv = rng.integers(0, 255, (16, 32, 32, 1)).astype(np.float32)
    xo = rng.integers(0, 255, (16, 32, 32, 1)).astype(np.float32)
    target = rng.normal(0, 3, (16, 4)).astype(np.float32)
    y = rng.integers(0, 4, 16).astype(np.int32)
    d = Distiller(build_student(32, 4, 0.25, 0.0), temperature=2.0, alpha=0.0)
    d.compile(optimizer=keras.optimizers.Adam(3e-3))
    d.optimizer.build(d.trainable_variables)
    batch = ((xv, xo), (target, np.ones(16, np.float32), y, np.ones(16, np.float32)))
    step = tf.function(d.train_step)  # traced once: 60 eager steps cost seconds
    first = float(step(batch)["loss"])
    for _ in range(60):
        last = float(step(batch)["loss"])
    assert last < 0.5 * first


@pytest.mark.slow
def test_unlabeled_scans_enter_the_view_cache_and_only_the_teacher_teaches_them(phantoms, untrained_teacher,
                                                                                tmp_path):
    from train.run import run

    hospital = second_style(phantoms, tmp_path / "hospital", n=12)
    flat = tmp_path / "archive" / "any" / "layout"
    flat.mkdir(parents=True)
    for i, f in enumerate(sorted(hospital.rglob("*.png"))):
        f.rename(flat / f"scan{i}.png")
    (flat / "notes.txt").write_text("not a scan")
    cfg = tiny_config(phantoms, tmp_path, teacher=str(untrained_teacher), views=2,
                      unlabeled=str(tmp_path / "archive"), student_epochs=1, alpha=0.3, baseline=False)
    assert run(cfg) == 0
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    vc = m["results"]["teacher"]["view_cache"]
    n_train = sum(m["data_report"]["split"]["train"].values())
    assert vc["unlabeled_images"] == 24                # 12 + 3 x 4 hospital scans, the text file ignored
    assert vc["views"] == 2 * (n_train + 24)
    # the same teacher, views and images: a second run reuses the cache
    cfg2 = tiny_config(phantoms, tmp_path / "second", teacher=str(untrained_teacher), views=2,
                       cache_dir=cfg.cache_dir, unlabeled=str(tmp_path / "archive"), student_epochs=1, alpha=0.3, seed=4,
                       baseline=False)
    assert run(cfg2) == 0
    again = json.loads((tmp_path / "second" / "run" / "manifest.json").read_text())["results"]["teacher"]["view_cache"]
    assert again["key"] == vc["key"]


def test_the_fitted_temperature_undoes_a_known_overconfidence():
    """Labels drawn from softmax(z); the model reports 3 z. The NLL-optimal temperature is about 3, and it lowers
    the NLL on fresh draws of the same kind."""
    from train.calibrate import fit_temperature, nll

    rng = np.random.default_rng(0)

    def draws(n):
        z = rng.normal(0, 1.5, (n, 4))
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        y = np.array([rng.choice(4, p=row) for row in p])
        return 3.0 * z, y

    logits, y = draws(4000)
    t = fit_temperature(logits, y)
    assert 2.6 < t < 3.4, t
    fresh, y2 = draws(2000)
    assert nll(fresh, y2, t) < nll(fresh, y2, 1.0)


def test_each_epoch_shows_every_image_once_as_one_of_its_own_k_views():
    """fit.view_dataset: per pass, each view image once, as one of its k cached views (drawn at random, so over
    passes all k appear), and the image stream walks the labelled images."""
    from train import fit

    n, k, batch = 32, 4, 8
    views = np.zeros((n * k, 2, 2), np.uint8)
    target = np.arange(n * k, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)   # target row = view index
    data = fit.TrainSet(np.zeros((n, 2, 2), np.uint8), np.arange(n) % 4, np.ones(n, np.float32),
                        np.zeros((4, 2, 2), np.uint8), np.arange(4))
    ds = fit.view_dataset(views, target, np.ones(n * k, np.float32), k, n, data, batch, seed=3)
    passes = 12   # one image drawing the same of its 4 views 12 times: 4^-11, never in practice
    seen = [[] for _ in range(passes)]
    for step, ((v, _), (t, _, _, _)) in enumerate(ds.take(passes * n // batch)):  # t's first column: the view index
        assert v.shape == (batch, 2, 2, 1)
        seen[step // (n // batch)] += [int(x) for x in t.numpy()[:, 0]]
    for epoch in seen:
        assert sorted(i // k for i in epoch) == list(range(n))      # every image once per pass
    per_image = {i: {e[j] for e in seen for j in range(n) if e[j] // k == i} for i in range(n)}
    assert all(len(s) >= 2 for s in per_image.values())            # views vary from pass to pass
