"""All defaults in one place. Flags of `python -m train` / `python -m train.data` override them.

The defaults are sized for the real MRI set on a 2-core CPU (teacher +
distillation + baseline within the time budget in README). `PRESETS` holds the
few overrides that make the embedded synthetic run finish in minutes.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass


@dataclass
class Config:
    # data
    data: str = "data/synthetic/Training"
    test_data: str = ""            # a separate Testing/ folder; "" = hold out test_fraction of data
    image_size: int = 96           # student input side (pixels): 16 M MACs, ~20 s per real-data epoch on 2 cores
    # teacher input side; 0 = image_size. The teacher's logits are cached, so it may see more pixels than the student.
    teacher_size: int = 128
    val_fraction: float = 0.10     # for early stopping / checkpoint selection
    test_fraction: float = 0.15    # held-out evaluation split (only if no test_data)
    near_dup_threshold: float = 6.0  # RMS grey-level distance of 16x16 thumbnails
    keep_leaks: bool = False       # keep eval images that (near-)duplicate a training image
    cache_dir: str = "artifacts/cache"
    seed: int = 42                 # weights init, data order, augmentation
    split_seed: int = 42           # train/val/test split; fixed across seeds so ablations share a test set
    # teacher
    teacher: str = ""              # trained teacher .keras to load instead of training; several (a,b,c) = ensemble
    # efficientnetb0 | ensemble (small CNNs, width teacher_width, one per teacher_members entry)
    # Offline default = ensemble: a from-scratch EfficientNetB0 reaches ~70% in the CPU budget (docs/teacher.md).
    teacher_recipe: str = "ensemble"
    # Ensemble members, "AUGMENT:EPOCHS[:ARCH]" each (ARCH one of MEMBER_ARCHS, default dw), or a count N
    # (N x teacher_augment:teacher_epochs). Members that see different views disagree more, so their average
    # gains more: two flip members plus one "geo" member beat three flip members by ~1 point on validation
    # and test (docs/teacher.md).
    teacher_members: str = "flip:14,flip:14,geo:24"
    # 0: every member trains on the whole training split. K >= 2: member i leaves out fold i % K, and each
    # training image's cached logits average only the members that never saw it (out-of-fold), so the soft
    # targets carry the teacher's real uncertainty instead of its memorised labels. Folds keep near-duplicates
    # together. Measured, such targets cost the 64 px student 0.3 to 3.9 points (docs/teacher.md).
    teacher_folds: int = 0
    teacher_width: float = 1.0
    teacher_weights: str = "none"  # none | imagenet | PATH to EfficientNetB0 weights
    teacher_epochs: int = 14
    teacher_lr: float = 3e-3
    teacher_dropout: float = 0.3   # EfficientNetB0 head
    label_smoothing: float = 0.0   # smoothed teachers distill worse (Mueller et al. 2019)
    teacher_mixup: float = 0.0     # > 0: members train on mixup blends, lam ~ Beta(a, a); 0 = off
    teacher_cutmix: float = 0.0    # > 0 (instead of mixup): members train on cutmix, pasted area ~ 1 - Beta(a, a); 0 = off
    # > 0: members keep an exponential moving average of their weights (Polyak averaging, this momentum per step);
    # validation, early stopping and the saved member all use the average. 0 = off.
    teacher_ema: float = 0.0
    # > 0: stochastic depth in the 'res' members (the 'dw' family has no shortcuts): each example skips a residual
    # branch with a probability rising to this value at the last block (Huang et al. 2016). 0 = off.
    teacher_drop_path: float = 0.0
    # early stopping of the teacher's members: epochs without a better validation score; 0 = none (every epoch runs,
    # the last weights are kept); -1 = --patience.
    teacher_patience: int = -1
    # augmentation of the teacher's training images; "" = augment. The teacher's logits are cached on the clean
    # (and flipped) images, so the teacher may train on views the student never sees.
    teacher_augment: str = ""
    # student
    student_width: float = 1.0
    student_epochs: int = 18
    student_lr: float = 3e-3
    student_dropout: float = 0.2
    # distillation
    temperature: float = 4.0
    alpha: float = 0.3             # weight of the hard-label loss; 1 - alpha goes to KD
    # hinton: KL of the softened distributions. dkd: decoupled KD (Zhao et al. 2022), the wrong classes' part of
    # that KL weighted by dkd_beta instead of by (1 - the teacher's confidence), see train/distill.py.
    # B 2 beat the paper's CIFAR value B 8 on validation here; neither beat Hinton KD (docs/teacher.md).
    kd_loss: str = "hinton"
    dkd_beta: float = 2.0
    # DKD's weight of the target-class term (1 in Zhao et al. 2022). 0 = the teacher only ranks the wrong classes
    # and the labels alone say which class is right. Tried with out-of-fold targets (--teacher-folds), whose top class
    # is wrong wherever the left-out member errs: it did not help (docs/teacher.md).
    dkd_tckd: float = 1.0
    teacher_mode: str = "cache"    # cache (teacher logits once) | consistent (teacher on every augmented batch)
    # > 0 (consistent mode only): the distilled student trains on mixup blends, lam ~ Beta(a, a), and the teacher
    # scores each blend, so its targets are soft where the labels are not ("function matching", Beyer et al.
    # 2022); the scratch student is unchanged. 0 = off.
    kd_mixup: float = 0.0
    # > 0: the label-only student (the baseline) trains on mixup blends of images and of labels, lam ~ Beta(a, a): the
    # views a --kd-mixup student sees, so the two differ only by the teacher. Trained long on a GPU, this label-only
    # recipe beat every distilled student (docs/teacher.md, "On a lent GPU"). 0 = off.
    baseline_mixup: float = 0.0
    tta: bool = True               # cached logits averaged over a horizontal flip
    baseline: bool = True          # also train the same student without a teacher
    # optimisation
    batch_size: int = 64
    weight_decay: float = 1e-4
    # validation accuracy is noisy epoch to epoch: stop late, restore the best. 0 = no early stopping: every epoch
    # runs and the last weights are kept (long schedules, as in Beyer et al. 2022).
    patience: int = 10
    class_balance: bool = True
    # none | flip | geo (flip + small rotation/zoom/shift) | full (geo + contrast/brightness). "flip": on the real data
    # it beat "full" by 7.6 points and "none" by 3 (docs/teacher.md), and flip-TTA cached logits stay exact for it.
    augment: str = "flip"
    strategy: str = "none"         # none | mirrored
    # output
    out: str = "artifacts/run"


PRESETS = {
    # Embedded default: synthetic phantoms (800 training images), small images, a few minutes on 2 cores.
    "synthetic": dict(data="data/synthetic/Training", test_data="data/synthetic/Testing",
                      image_size=64, teacher_size=0, teacher_members="3", teacher_epochs=15, student_epochs=15,
                      batch_size=32, patience=6),
    "real": {},
    # A 13x smaller student (16,708 parameters, 1.2 M MACs, 46 KB in int8), trained longer: at 18 epochs it is
    # still learning (~95% training accuracy). This is where distillation pays on the real data: +1.40 test points
    # over the same student without a teacher (5 seeds, docs/teacher.md "A smaller student"), against about +0.4
    # for the default one.
    "tiny": dict(student_width=0.25, student_epochs=60, patience=0),
    # The default student on a 64 px input: 7.2 M MACs instead of 16.2 M (about half the time per image on an
    # emulated Cortex-A), trained twice as many epochs in the same training time; the teacher keeps its 128 px.
    # Distilled, it scored 94.42% test / 95.10% val over 5 seeds, level with the default student (docs/teacher.md,
    # "A smaller input for the student").
    "px64": dict(image_size=64, student_epochs=36, patience=0),
}


AUGMENT_LEVELS = ("none", "flip", "geo", "full")
# Flags with a closed set of values: argparse rejects anything else before a run starts.
CHOICES = {"augment": AUGMENT_LEVELS, "teacher_augment": ("",) + AUGMENT_LEVELS,
           "teacher_recipe": ("efficientnetb0", "ensemble"), "teacher_mode": ("cache", "consistent"),
           "kd_loss": ("hinton", "dkd"),
           "strategy": ("none", "mirrored")}


# Ensemble member families (train/models.py MEMBER_ARCHS): dw = the student's depthwise-separable CNN,
# res = full 3x3 convs with shortcuts.
MEMBER_ARCHS = ("dw", "res")


def member_specs(cfg) -> list[tuple[str, int, str]]:
    """(augment, epochs, arch) per ensemble member, from cfg.teacher_members; ValueError says what is wrong."""
    spec = str(cfg.teacher_members).strip()
    if spec.isdigit():
        return [(cfg.teacher_augment or cfg.augment, cfg.teacher_epochs, "dw")] * int(spec)
    out = []
    for item in spec.split(","):
        aug, _, rest = item.strip().partition(":")
        epochs, _, arch = rest.partition(":")
        arch = arch or "dw"
        if aug not in AUGMENT_LEVELS or not epochs.isdigit() or int(epochs) < 1 or arch not in MEMBER_ARCHS:
            raise ValueError(f"bad teacher member '{item}' in --teacher-members '{spec}': want AUGMENT:EPOCHS"
                             f"[:ARCH] (AUGMENT one of {' | '.join(AUGMENT_LEVELS)}, ARCH one of "
                             f"{' | '.join(MEMBER_ARCHS)}) or a count")
        out.append((aug, int(epochs), arch))
    return out


def fields():
    return [f for f in dataclasses.fields(Config)]


def add_flags(parser, only=None):
    """One --flag per Config field (underscores become dashes)."""
    for f in fields():
        if only and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, default=None, action=argparse.BooleanOptionalAction,
                                dest=f.name, help=f"(default {f.default})")
        else:
            typ = {"int": int, "float": float, "str": str}.get(str(f.type), str)
            parser.add_argument(flag, type=typ, default=None, dest=f.name, choices=CHOICES.get(f.name),
                                help=f"(default {f.default!r})")
    parser.add_argument("--preset", choices=sorted(PRESETS), action="append", default=None,
                        help="named overrides applied before flags; repeat to combine, later ones win "
                             "(e.g. --preset synthetic --preset tiny)")


def from_args(args) -> Config:
    cfg = Config()
    for name in getattr(args, "preset", None) or []:
        cfg = dataclasses.replace(cfg, **PRESETS[name])
    overrides = {f.name: getattr(args, f.name) for f in fields()
                 if getattr(args, f.name, None) is not None}
    return dataclasses.replace(cfg, **overrides)
