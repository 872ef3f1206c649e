"""Patient and consistent distillation (Beyer et al. 2022) on a lent GPU: the schedule 2 cores cannot afford.

On this machine consistent teaching and function matching lost to cached-logit KD at 18 to 30 epochs
(docs/teacher.md), and the paper's recipe needs hundreds to thousands. This runs that recipe on a GPU machine,
which has JAX but no TensorFlow, so it trains under Keras' JAX backend: the same student (train/models.py), the
same loss (train/distill.py), the same pixels (packed here by the pipeline's own loader and leakage-checked
split), the default teacher ensemble run on every batch. The students come back as .keras files and are scored
here, on the test split that never leaves this machine.

    # here: the pipeline's training / validation pixels, class weights and the teacher, into an ignored folder
    PYTHONPATH=. .venv/bin/python tools/gpu_patient_kd.py pack --run artifacts/hetero --out gpu_carry
    # there (one process per run; a scratch run waits for the epoch count of the KD run with its seed)
    KERAS_BACKEND=jax python tools/gpu_patient_kd.py train --pack gpu_carry --mode kd --seed 42 --minutes 6 --out $OUT
    KERAS_BACKEND=jax python tools/gpu_patient_kd.py train --pack gpu_carry --mode scratch --seed 42 --out $OUT
    # here: score every returned student on validation and test, pair KD with scratch by seed
    PYTHONPATH=. .venv/bin/python tools/gpu_patient_kd.py report OUT_DIR... --out docs/gpu_patient_kd.json

Both modes see the same views: the "geo" augmentation (flip, rotation, zoom, shift; black border) and mixup
blends (Beta(a, a)), as `--augment geo --teacher-mode consistent --kd-mixup a`. kd: the teacher scores each
blend, loss = alpha * CE(blended labels) + (1 - alpha) * T^2 * KL at T. scratch: CE on the blended labels only.
No early stopping: the final weights are kept, as in the paper.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pack(args):
    from train.config import Config
    from train.data import prepare
    from train.run import class_weights

    cfg = Config(data=args.data)
    s = prepare(cfg, log=lambda *a, **k: None)
    y_tr = s.images.labels[s.train]
    n = len(s.classes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "data.npz", x_train=s.images.x[s.train], y_train=y_tr,
                        sw_train=class_weights(y_tr, n)[y_tr], x_val=s.images.x[s.val], y_val=s.images.labels[s.val],
                        classes=np.array(s.classes))
    shutil.copy(Path(args.run) / "teacher.keras", out / "teacher.keras")
    print(f"packed {len(s.train)} training / {len(s.val)} validation images at {s.images.x.shape[1]} px, "
          f"{n} classes, and {args.run}/teacher.keras into {out}")


def geo_views(x, key, rotation=0.04, zoom=0.1, shift=0.06):
    """Keras' RandomFlip + RandomRotation(0.04) + RandomZoom(0.1) + RandomTranslation(0.06, 0.06) with constant
    fill (train/stages.py: augmenter("geo")), as one bilinear resampling per image. x: (B, H, W) float32."""
    import jax
    import jax.numpy as jnp

    b, h, w = x.shape
    kf, kr, kz, kt = jax.random.split(key, 4)
    flip = jax.random.bernoulli(kf, 0.5, (b,))
    ang = jax.random.uniform(kr, (b,), minval=-rotation, maxval=rotation) * 2 * jnp.pi
    scale = 1.0 + jax.random.uniform(kz, (b,), minval=-zoom, maxval=zoom)
    t = jax.random.uniform(kt, (b, 2), minval=-shift, maxval=shift) * jnp.array([h, w])
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")

    def one(img, f, a, s, tt):
        # output pixel -> source pixel: undo the shift, then rotation and zoom about the centre, then the flip
        qy, qx = yy - cy - tt[0], xx - cx - tt[1]
        sy = cy + s * (jnp.cos(a) * qy - jnp.sin(a) * qx)
        sx = cx + s * (jnp.sin(a) * qy + jnp.cos(a) * qx)
        sx = jnp.where(f, w - 1 - sx, sx)
        return jax.scipy.ndimage.map_coordinates(img, [sy, sx], order=1, mode="constant", cval=0.0)

    return jnp.clip(jax.vmap(one)(x, flip, ang, scale, t), 0.0, 255.0)


def lr_at(step, total, warm, lr, floor=0.01):
    """train/stages.py _schedule: linear warm-up from lr / 10 over one epoch, then cosine decay to lr * floor.
    In Keras ops, so a test checks it against that Keras schedule under TensorFlow; `total` may be traced."""
    from keras import ops

    step = ops.cast(step, "float32")
    up = lr * 0.1 + (lr - lr * 0.1) * step / warm
    frac = ops.clip((step - warm) / ops.maximum(total - warm, 1.0), 0.0, 1.0)
    down = lr * ((1 - floor) * 0.5 * (1 + ops.cos(math.pi * frac)) + floor)
    return ops.where(step < warm, up, down)


def train(args):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import jax
    import jax.numpy as jnp
    import keras
    import optax

    from train.config import Config
    from train.distill import distillation_loss
    from train.models import build_student

    cfg = Config()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{args.mode}{args.tag}_seed{args.seed}"
    log_path = out / f"{name}.json"
    t_start = time.time()
    z = np.load(Path(args.pack) / "data.npz")
    n_cls = len(z["classes"])
    size = z["x_train"].shape[1]
    # a smoke test's few images, drawn at random (the packed training split is ordered by class)
    keep = np.random.default_rng(0).permutation(len(z["y_train"]))[: args.subset] if args.subset else slice(None)
    x_tr = jnp.asarray(z["x_train"][keep])
    y_tr = jnp.asarray(np.eye(n_cls, dtype=np.float32)[z["y_train"][keep]])
    sw_tr = jnp.asarray(z["sw_train"][keep])
    x_val, y_val = jnp.asarray(z["x_val"], jnp.float32)[..., None], z["y_val"]
    n, batch = len(y_tr), cfg.batch_size
    steps = n // batch

    keras.utils.set_random_seed(args.seed)
    student = build_student(size, n_cls, cfg.student_width, cfg.student_dropout)
    teacher_fn = None
    if args.mode == "kd":
        teacher = keras.models.load_model(Path(args.pack) / args.teacher)
        tsize = teacher.input_shape[1]
        inp = keras.Input((size, size, 1))
        t_in = keras.layers.Resizing(tsize, tsize, interpolation="bilinear")(inp) if tsize != size else inp
        tmodel = keras.Model(inp, teacher(t_in))  # as train/stages.py _resized
        tmodel.trainable = False
        t_vars = [v.value for v in tmodel.non_trainable_variables]

        def teacher_fn(x):
            return tmodel.stateless_call([], t_vars, x, training=False)[0]

    alpha = cfg.alpha if args.mode == "kd" else 1.0
    opt = optax.inject_hyperparams(optax.adamw)(learning_rate=cfg.student_lr, weight_decay=cfg.weight_decay,
                                                eps=1e-7)
    tv = [v.value for v in student.trainable_variables]
    ntv = [v.value for v in student.non_trainable_variables]
    state = (tv, ntv, opt.init(tv), jnp.zeros((), jnp.int32))

    def loss_fn(tv, ntv, x, labels, sw, t_logits):
        logits, ntv = student.stateless_call(tv, ntv, x, training=True)
        per = distillation_loss(labels, logits, t_logits, cfg.temperature, alpha)
        return jnp.mean(per * sw), ntv

    def step_fn(state, idx, key, total):
        tv, ntv, opt_state, step = state
        ka, km, kp = jax.random.split(key, 3)
        x = geo_views(x_tr[idx].astype(jnp.float32), ka)
        labels, sw = y_tr[idx], sw_tr[idx]
        if args.mixup > 0:  # as train/stages.py make_dataset(mixup=): blend images, targets and weights
            g1, g2 = jax.random.gamma(km, args.mixup, (2, batch))
            lam = g1 / (g1 + g2)
            other = jax.random.permutation(kp, batch)
            x = lam[:, None, None] * x + (1 - lam[:, None, None]) * x[other]
            labels = lam[:, None] * labels + (1 - lam[:, None]) * labels[other]
            sw = lam * sw + (1 - lam) * sw[other]
        x = x[..., None]
        t_logits = teacher_fn(x) if teacher_fn is not None else None
        (loss, ntv), grads = jax.value_and_grad(loss_fn, has_aux=True)(tv, ntv, x, labels, sw, t_logits)
        opt_state.hyperparams["learning_rate"] = lr_at(step, total, steps, cfg.student_lr)
        updates, opt_state = opt.update(grads, opt_state, tv)
        return (optax.apply_updates(tv, updates), ntv, opt_state, step + 1), loss

    @jax.jit
    def run_epoch(state, key, total):
        kperm, ksteps = jax.random.split(key)
        idx = jax.random.permutation(kperm, n)[: steps * batch].reshape(steps, batch)
        keys = jax.random.split(ksteps, steps)
        return jax.lax.scan(lambda s, a: step_fn(s, a[0], a[1], total), state, (idx, keys))

    @jax.jit
    def val_logits(tv, ntv):
        return student.stateless_call(tv, ntv, x_val, training=False)[0]

    key = jax.random.PRNGKey(args.seed)
    epoch_s = float("nan")
    if not args.epochs:
        # Time one compiled epoch on a throwaway copy of the state (the state is immutable), then fix the schedule.
        jax.block_until_ready(run_epoch(state, key, jnp.float32(1e9)))
        t0 = time.time()
        jax.block_until_ready(run_epoch(state, key, jnp.float32(1e9)))
        epoch_s = time.time() - t0
    epochs_file = out / f"epochs_seed{args.seed}.txt"
    if args.epochs:
        epochs = args.epochs
    elif args.mode == "kd":
        # The margin: six runs share the GPU in time slices, and the scratch runs start once this one has timed.
        epochs = max(1, min(args.max_epochs, int(args.minutes * 60 * args.speed_margin / epoch_s)))
        epochs_file.write_text(str(epochs))
    else:  # the same number of epochs as the KD run with this seed: a fair, label-only control
        failed = out / f"kd_seed{args.seed}.failed"  # tools/gpu_patient_kd.sh leaves it when that run dies
        while not epochs_file.is_file():
            if failed.is_file() or time.time() > t_start + args.hard_stop_minutes * 60:
                raise SystemExit(f"{name}: no epoch count from the kd run with seed {args.seed}")
            time.sleep(1)
        epochs = int(epochs_file.read_text())
    total = jnp.float32(epochs * steps)
    print(f"{name}: {epoch_s:.2f} s an epoch ({steps} steps of {batch}), {epochs} epochs", flush=True)
    curve = []
    hard_stop = t_start + args.hard_stop_minutes * 60
    t_train = time.time()
    for e in range(epochs):
        key, k = jax.random.split(key)
        state, losses = run_epoch(state, k, total)
        stop = time.time() > hard_stop
        if (e + 1) % max(1, epochs // 20) == 0 or e + 1 == epochs or stop:
            acc = float(np.mean(np.asarray(val_logits(state[0], state[1])).argmax(1) == y_val))
            curve.append({"epoch": e + 1, "loss": float(jnp.mean(losses)), "val_accuracy": acc,
                          "seconds": round(time.time() - t_train, 1)})
            print(f"{name}: epoch {e + 1}/{epochs} loss {curve[-1]['loss']:.4f} val {100 * acc:.2f}%", flush=True)
        if stop:
            print(f"{name}: stopped at epoch {e + 1} of {epochs}: past --hard-stop-minutes", flush=True)
            break
    for v, val in zip(student.trainable_variables, state[0]):
        v.assign(val)
    for v, val in zip(student.non_trainable_variables, state[1]):
        v.assign(val)
    student.save(out / f"{name}.keras")
    log_path.write_text(json.dumps({
        "run": name, "mode": args.mode, "teacher": args.teacher if args.mode == "kd" else None, "seed": args.seed,
        "alpha": alpha, "temperature": cfg.temperature,
        "mixup": args.mixup, "augment": "geo", "epochs_planned": epochs, "epochs_done": e + 1,
        "seconds_per_epoch": round((time.time() - t_train) / (e + 1), 3), "train_seconds": round(time.time() - t_train, 1),
        "device": str(jax.devices()[0]), "jax": jax.__version__, "keras": keras.__version__, "curve": curve}, indent=1))
    print(f"{name}: saved {out / (name + '.keras')}, final val {100 * curve[-1]['val_accuracy']:.2f}%", flush=True)


def report(args):
    """Score the returned students here, on the validation and test splits, and pair each KD run with the
    label-only run of the same seed."""
    import keras

    from train import stages
    from train.config import Config
    from train.data import prepare

    cfg = Config(data=args.data)
    s = prepare(cfg, log=lambda *a, **k: None)
    rows = {}
    for d in args.dirs:
        for j in sorted(Path(d).glob("*.json")):
            run = json.loads(j.read_text())
            model = keras.models.load_model(j.with_suffix(".keras"))
            row = {k: run[k] for k in ("run", "mode", "seed", "epochs_planned", "epochs_done", "seconds_per_epoch",
                                       "train_seconds", "device", "jax", "keras")}
            row["teacher"] = run.get("teacher")  # recorded by runs since; None in the first ones
            row["gpu_final_val"] = round(100 * run["curve"][-1]["val_accuracy"], 2)
            row["val_curve"] = [[c["epoch"], round(100 * c["val_accuracy"], 2)] for c in run["curve"]]
            for split, idx in (("val", s.val), ("test", s.test)):
                pred = stages.predict_logits(model, s.images.x[idx]).argmax(1)
                row[split] = round(100 * float(np.mean(pred == s.images.labels[idx])), 2)
            rows[row["run"]] = row
    for row in rows.values():
        base = rows.get(f"scratch_seed{row['seed']}")
        if row["mode"] == "kd" and base:
            row["minus_scratch"] = {k: round(row[k] - base[k], 2) for k in ("val", "test")}
    Path(args.out).write_text(json.dumps(list(rows.values()), indent=1) + "\n")
    for r in rows.values():
        gain = r.get("minus_scratch")
        print(f"{r['run']:<16} {r['epochs_done']:>4}/{r['epochs_planned']:<4} epochs  val {r['val']:.2f}  "
              f"test {r['test']:.2f}" + (f"  minus scratch: val {gain['val']:+.2f} test {gain['test']:+.2f}"
                                         if gain else ""))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--data", default="../shared/data/brain-tumor-mri/Training")
    a.add_argument("--run", default="artifacts/hetero", help="run folder whose teacher.keras is the teacher")
    a.add_argument("--out", default="gpu_carry")
    b = sub.add_parser("train")
    b.add_argument("--pack", default="gpu_carry")
    b.add_argument("--mode", choices=("kd", "scratch"), required=True)
    b.add_argument("--teacher", default="teacher.keras", help="kd: the teacher's file in --pack")
    b.add_argument("--tag", default="", help="appended to the mode in output names")
    b.add_argument("--seed", type=int, default=42)
    b.add_argument("--mixup", type=float, default=0.4)
    b.add_argument("--minutes", type=float, default=6.0, help="kd: training time the epoch count is sized to")
    b.add_argument("--epochs", type=int, default=0, help="fixed epoch count instead of --minutes")
    b.add_argument("--max-epochs", type=int, default=1000)
    b.add_argument("--speed-margin", type=float, default=0.6, help="kd: epochs = minutes / timed epoch * this")
    b.add_argument("--hard-stop-minutes", type=float, default=9.0, help="save what there is after this long")
    b.add_argument("--subset", type=int, default=0, help="train on the first N images only (smoke test)")
    b.add_argument("--out", required=True)
    c = sub.add_parser("report")
    c.add_argument("dirs", nargs="+", help="folders of returned runs (<run>.json + <run>.keras)")
    c.add_argument("--data", default="../shared/data/brain-tumor-mri/Training")
    c.add_argument("--out", default="docs/gpu_patient_kd.json")
    args = p.parse_args()
    {"pack": pack, "train": train, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
