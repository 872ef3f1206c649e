"""All defaults in one place. Every field is a flag of `python -m train` (underscores become dashes).

The defaults are sized for the real MRI set on a 2-core CPU. `PRESETS` holds named overrides: `synthetic`
makes the embedded phantom run (`make all`) finish in minutes. What each default was measured against is in
docs/research.md; options that were measured and did not pay were removed (the research tag keeps them).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

RUN_DIR = "artifacts/synthetic"   # the run folder every stage CLI defaults to (`make all` writes it)
AUGMENT_LEVELS = ("none", "flip", "geo")


class ConfigError(ValueError):
    """A flag value or combination that cannot run; the message names the flag."""


class Member(NamedTuple):
    """One member of the teacher ensemble: the augmentation it trains on, and for how many epochs."""
    augment: str
    epochs: int


@dataclass
class Config:
    # data
    # one class-per-folder tree, or several separated by commas (each a source with its own validation and test
    # split); a folder with only tumor/ and notumor/ is weakly labelled (docs/research.md, Q13)
    data: str = "data/synthetic/Training"  # class-per-folder training data (several: comma-separated)
    test_data: str = ""            # a separate Testing/ folder; "" = hold out test_fraction of data
    image_size: int = 96           # student input side (pixels): 16 M MACs
    teacher_size: int = 128        # teacher input side; 0 = image_size (its logits are cached, so it may see more)
    val_fraction: float = 0.10     # for early stopping / checkpoint selection
    test_fraction: float = 0.15    # held-out evaluation split (only without test_data)
    near_dup_threshold: float = 6.0  # RMS grey-level distance of 16x16 thumbnails
    keep_leaks: bool = False       # keep evaluation images that (near-)duplicate a training image
    cache_dir: str = "artifacts/cache"  # decoded images, weights and view caches, reused across runs
    seed: int = 42                 # weights init, data order, augmentation
    split_seed: int = 42           # fixed across seeds, so that ablations share one test set
    # teacher
    teacher: str = ""              # trained teacher .keras to load instead of training; a,b,c = their ensemble
    # lite0 (lite1, lite2): EfficientNet-Lite0 (1, 2) fine-tuned from ImageNet weights that ship in registry packages
    # (offline);
    # ensemble: CNNs of the student's family from scratch (--preset ensemble); efficientnetb0: for users with
    # ImageNet weights of their own (--teacher-weights imagenet|PATH); from scratch it reaches only ~70%.
    teacher_recipe: str = "lite0"  # which teacher to train (see the comment above in train/config.py)
    # Ensemble members, "AUGMENT:EPOCHS" each (members with one spec differ by seed). Members that see different
    # views err on different images, so their average gains more (docs/research.md).
    teacher_members: str = "flip:14,flip:14,geo:24"  # ensemble recipe only: AUGMENT:EPOCHS per member
    teacher_weights: str = "none"  # efficientnetb0 only: none | imagenet | PATH to weights
    teacher_epochs: int = 6        # lite0 / efficientnetb0: training epochs (lite0: after the head warm-up)
    teacher_head_epochs: int = 1   # lite0: epochs that train only the new head, the ImageNet backbone frozen
    teacher_head_lr: float = 1e-3  # lite0: the new head's learning rate while the backbone is frozen
    teacher_lr: float = 5e-4       # the teacher's peak learning rate (cosine schedule)
    teacher_dropout: float = 0.3   # head dropout of every teacher recipe (ensemble members included)
    label_smoothing: float = 0.0   # teacher training; smoothed teachers distill worse (Mueller et al. 2019)
    # student
    student_width: float = 1.0     # scales every layer's channels (0.25: 16,708 parameters)
    student_epochs: int = 40       # patient: each epoch, one of each image's cached views, drawn at random
    student_lr: float = 3e-3       # the student's peak learning rate (cosine schedule)
    student_dropout: float = 0.2   # before the student's last layer
    # distillation
    temperature: float = 1.0       # function matching (views); the cached-image-logit recipe was tuned at 4
    alpha: float = 0.3             # weight of the hard-label loss; 1 - alpha goes to the teacher's soft targets
    # Patient distillation (train/views.py): K views per training image, the teacher's logits on each cached once;
    # the student learns from the views (KL at --temperature) and from the images' labels (weight --alpha).
    views: int = 8                 # views per image; 0 = one view, the image itself (classic image-logit KD)
    view_recipe: str = ""          # overrides of train/views.ViewRecipe, e.g. "area=0.35:1,gamma=0.5:2,mixup=0.3"
    unlabeled: str = ""            # folders of unlabeled scans (any layout, DICOM too): taught by the teacher only
    baseline: bool = True          # also train the same student without a teacher (the KD gain's reference)
    # optimisation
    batch_size: int = 64           # images per step (and views per step on the view cache)
    weight_decay: float = 1e-4     # AdamW's, teacher and student
    patience: int = 0              # stop after N epochs without a better validation accuracy; 0 = every epoch runs.
                                   # The students keep their best epoch either way, the teacher its last unless N
    class_balance: bool = True     # weight the hard-label loss so that each class counts the same
    augment: str = "flip"          # the teacher's augmentation: none | flip | geo (the student's: its views)
    strategy: str = "none"         # none | mirrored (several GPUs)
    # output
    out: str = RUN_DIR             # the run folder (every later stage reads it)

    @functools.cached_property
    def members(self) -> tuple[Member, ...]:
        """teacher_members parsed once; ConfigError says what is wrong."""
        spec = str(self.teacher_members).strip()
        out = []
        for item in spec.split(","):
            aug, _, epochs = item.strip().partition(":")
            if aug not in AUGMENT_LEVELS or not epochs.isdigit() or int(epochs) < 1:
                raise ConfigError(f"bad teacher member '{item.strip()}' in --teacher-members '{spec}': want "
                                  f"AUGMENT:EPOCHS (AUGMENT one of {' | '.join(AUGMENT_LEVELS)}), comma-separated")
            out.append(Member(aug, int(epochs)))
        return tuple(out)

    @property
    def data_folders(self) -> list[str]:
        return [p for p in str(self.data).split(",") if p]

    @property
    def teacher_paths(self) -> list[str]:
        return [p for p in self.teacher.split(",") if p]

    def validate(self) -> None:
        """Every check of a flag value or combination, before any data is read; ConfigError names the flag."""
        self.members  # noqa: B018 (parses, or raises)
        missing = [p for p in self.teacher_paths if not Path(p).is_file()]
        if missing:
            raise ConfigError(f"--teacher: model not found: {', '.join(missing)}")
        if self.teacher_head_epochs < 0:
            raise ConfigError(f"--teacher-head-epochs {self.teacher_head_epochs}: want >= 0")
        for name in ("image_size", "student_epochs", "teacher_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)}: want >= 1")
        if self.teacher_size < 0:
            raise ConfigError(f"--teacher-size {self.teacher_size}: want a size in pixels, or 0 for --image-size")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"--alpha {self.alpha:g}: want a weight in [0, 1]")
        if not self.temperature > 0:
            raise ConfigError(f"--temperature {self.temperature:g}: want > 0")
        if self.patience < 0:
            raise ConfigError(f"--patience {self.patience}: want epochs without improvement >= 1, or 0 for no "
                              f"early stopping")
        if not (0 < self.val_fraction < 1 and 0 <= self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            raise ConfigError(f"--val-fraction {self.val_fraction:g} / --test-fraction {self.test_fraction:g}: "
                              f"want fractions that leave a training split")
        if len(self.data_folders) > 1 and self.test_data:
            raise ConfigError("several --data folders: each gets its own test split (no --test-data)")
        if self.views < 0:
            raise ConfigError(f"--views {self.views}: want views per image >= 1, or 0 for no view cache")
        if self.view_recipe:
            if not self.views:
                raise ConfigError("--view-recipe: the recipe shapes the view cache; add --views K")
            from train.views import ViewRecipe
            try:
                ViewRecipe.parse(self.views, self.view_recipe)
            except ValueError as e:
                raise ConfigError(f"--view-recipe: {e}") from None
        if self.unlabeled and not self.views:
            raise ConfigError("--unlabeled: unlabeled scans teach through the view cache; add --views K")
        if not 0 < self.student_width <= 4:
            raise ConfigError(f"--student-width {self.student_width:g}: want a channel multiplier in (0, 4]")
        idle = idle_flags(self, getattr(self, "explicit", set()))
        if idle:
            raise ConfigError(f"{idle[0]} (this flag would do nothing here)")


# The from-scratch CNN ensemble teacher, with the schedule and alpha it was tuned with (the default before lite0;
# its members' head dropout was the student's).
ENSEMBLE = dict(teacher_recipe="ensemble", teacher_lr=3e-3, teacher_dropout=0.2)
# The recipe before the view cache (docs/research.md Q10): the teacher's logits on the training images (one
# identity view each), 18 epochs, T 4, alpha 0.6, early stopping.
CACHED_LOGITS = dict(views=0, student_epochs=18, temperature=4.0, alpha=0.6, patience=10)

PRESETS = {
    # Embedded default: synthetic phantoms (800 training images), small images, a few minutes on 2 cores. It keeps
    # the small ensemble teacher: ImageNet features add nothing to phantoms and would double `make all`'s time.
    "synthetic": dict(ENSEMBLE, test_data="data/synthetic/Testing",
                      image_size=64, teacher_size=0, teacher_members="flip:15,flip:15,flip:15", views=4,
                      student_epochs=15, batch_size=32, patience=6),
    "cached-logits": CACHED_LOGITS,
    "ensemble": ENSEMBLE,
    # A 13x smaller student (16,708 parameters, 1.2 M MACs), trained longer: the size at which distillation
    # paid on the real data (docs/research.md).
    "tiny": dict(student_width=0.25, student_epochs=60),
    # The default student on a 64 px input (7.2 M MACs instead of 16.2 M).
    "px64": dict(image_size=64),
}

# Flags with a closed set of values: argparse rejects anything else before a run starts.
CHOICES = {"augment": AUGMENT_LEVELS, "teacher_recipe": ("lite0", "lite1", "lite2", "ensemble", "efficientnetb0"),
           "strategy": ("none", "mirrored")}


def _field_docs() -> tuple[dict[str, str], dict[str, str]]:
    """Each Config field's one-line help (its comment in the class body, continuation lines joined) and its stage
    (the section comment above it): the flags' --help says what the code says, from one place."""
    import inspect
    import re

    helps, stages, stage, last = {}, {}, "other", None
    for line in inspect.getsource(Config).splitlines():
        m = re.match(r"    (\w+): [^=]+=.*?(?:#\s*(.*))?$", line)
        if m and not line.strip().startswith("#"):
            last = m.group(1)
            helps[last], stages[last] = (m.group(2) or "").strip(), stage
        elif re.match(r"    # (\w[\w ]*)$", line) and len(line.strip()) < 20:
            stage, last = line.strip("# \n"), None
        elif line.strip().startswith("#") and last and line.startswith(" " * 20):
            helps[last] += " " + line.strip("# \n")
        else:
            last = None
    return helps, stages


def add_flags(parser, only=None):
    """One --flag per Config field (underscores become dashes), typed by the field's annotation, grouped by stage,
    each with its one-line help and default; and --preset."""
    types = typing.get_type_hints(Config)
    helps, stages = _field_docs()
    groups = {}
    for f in dataclasses.fields(Config):
        if only and f.name not in only:
            continue
        stage = stages.get(f.name, "other")
        if stage not in groups:
            groups[stage] = parser.add_argument_group(stage)
        group = groups[stage]
        flag = "--" + f.name.replace("_", "-")
        text = (helps.get(f.name, "") + f" (default {f.default!r})").strip().replace("%", "%%")
        if types[f.name] is bool:
            group.add_argument(flag, default=None, action=argparse.BooleanOptionalAction, dest=f.name, help=text)
        else:
            group.add_argument(flag, type=types[f.name], default=None, dest=f.name, choices=CHOICES.get(f.name),
                               help=text)
    parser.add_argument("--preset", choices=sorted(PRESETS), action="append", default=None,
                        help="named overrides applied before flags; repeat to combine, later ones win")


# Flags that do nothing under a recipe: given explicitly, they are refused (a preset may still set them).
def idle_flags(cfg: Config, explicit: set[str]) -> list[str]:
    """The explicitly given flags that this configuration would ignore, each with why."""
    why = []
    if "teacher_members" in explicit and (cfg.teacher or cfg.teacher_recipe != "ensemble"):
        why.append("--teacher-members shapes the ensemble teacher only (--teacher-recipe ensemble, no --teacher)")
    if "teacher_weights" in explicit and (cfg.teacher or cfg.teacher_recipe != "efficientnetb0"):
        why.append("--teacher-weights is for --teacher-recipe efficientnetb0 only")
    if cfg.teacher:
        why += [f"--{n.replace('_', '-')} trains a teacher, and --teacher gives a trained one"
                for n in ("teacher_recipe", "teacher_epochs", "teacher_head_epochs", "teacher_head_lr", "teacher_lr",
                          "teacher_dropout", "label_smoothing", "teacher_size", "teacher_members") if n in explicit]
    elif not cfg.teacher_recipe.startswith("lite"):
        why += [f"--{n.replace('_', '-')} is the EfficientNet-Lite recipes' head warm-up"
                for n in ("teacher_head_epochs", "teacher_head_lr") if n in explicit]
    if cfg.test_data and "test_fraction" in explicit:
        why.append("--test-fraction holds out a test split, and --test-data gives one")
    return why


def from_args(args, log=print) -> Config:
    """The Config of parsed flags: presets first (each says what it changes), then explicit flags."""
    values = {}
    for name in getattr(args, "preset", None) or []:
        log(f"preset {name}: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in PRESETS[name].items()))
        values.update(PRESETS[name])
    explicit = {f.name for f in dataclasses.fields(Config) if getattr(args, f.name, None) is not None}
    values.update({name: getattr(args, name) for name in explicit})
    cfg = Config(**values)
    cfg.explicit = explicit  # checked by validate(): a flag given by hand that this recipe ignores is refused
    return cfg
