#!/bin/bash
# Distilled 64 px students on the cached out-of-fold targets of one fold-teacher run, several recipes and seeds,
# without training or scoring the teacher again (docs/teacher.md, "Duplicate-aware out-of-fold targets").
#
#   python -m train --data ../shared/data/brain-tumor-mri/Training --image-size 64 --teacher-size 128 \
#       --teacher-members flip:14,flip:14,geo:24,geo:24 --teacher-folds 4 --no-baseline --out artifacts/oofd4-px64
#   SEEDS="42 1 2" bash tools/oof_students.sh artifacts/oofd4-px64
#
# Each student gets its own run folder, artifacts/oofd-RECIPE/seedN, holding links to the teacher run's models:
# same resolved path and mtime, so the key of the cached logits matches and the copied file is used as is.
set -e
T=${1:?usage: tools/oof_students.sh FOLD_TEACHER_RUN}
COMMON="--data ../shared/data/brain-tumor-mri/Training --image-size 64 --teacher-size 128
        --teacher-members flip:14,flip:14,geo:24,geo:24 --teacher-folds 4 --no-baseline"
one() {
  name=$1 seed=$2; shift 2; d=artifacts/oofd-$name/seed$seed
  [ -f "$d/manifest.json" ] && return
  mkdir -p "$d"
  for f in "$T"/teacher.keras "$T"/teacher_member*.keras "$T"/teacher_member*.json; do ln -sf "$(realpath "$f")" "$d"/; done
  cp -p "$T"/teacher_logits_*.npy "$d"/
  echo "$(date +%T) start $name seed $seed"
  python -m train $COMMON --seed "$seed" --out "$d" "$@" > "$d.log" 2>&1
  echo "$(date +%T) done $name seed $seed"
}
for s in ${SEEDS:-42 1 2}; do
  one nckd "$s" --kd-loss dkd --dkd-tckd 0 --dkd-beta 2 --alpha 0.5
  one a07 "$s" --alpha 0.7
  if [ "$s" != 42 ]; then one a03 "$s"; fi   # seed 42, alpha 0.3: the teacher run's own student
done
