#!/usr/bin/env bash
# The lent-GPU run behind docs/teacher.md's "patient and consistent" rows: three seeds of the KD student and of
# its label-only control, six processes sharing one GPU. Run from the repository root on a machine with JAX;
# needs gpu_carry/ (tools/gpu_patient_kd.py pack) and, where Keras is missing, .whl/ (keras, namex, optree
# wheels for that Python). Everything lands in $RES, tarred into $OUT/results.tgz.
# EPOCHS fixes every run's epoch count; unset, each KD run times one epoch and sizes its schedule to MIN
# minutes. That timing can come before the other runs load the GPU (seed 1 planned 1,000 epochs that way and was
# cut at 364 by the HARD stop, docs/teacher.md), so set EPOCHS once the machine's speed is known (270 on an H200).
set -u
RES=${RES:-/tmp/res} OUT=${OUT:-/tmp/res-out} MIN=${MIN:-4.5} HARD=${HARD:-6.5} SEEDS=${SEEDS:-42 1 2}
EP=${EPOCHS:+--epochs $EPOCHS}
mkdir -p "$RES" "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 3
  export PYTHONPATH=/tmp/site
fi
# JAX takes 75% of the GPU's memory per process unless told otherwise.
export KERAS_BACKEND=jax XLA_PYTHON_CLIENT_MEM_FRACTION=.12 PYTHONUNBUFFERED=1
nvidia-smi -L 2>/dev/null
for s in $SEEDS; do
  ( python3 tools/gpu_patient_kd.py train --mode kd --seed "$s" --minutes "$MIN" $EP --hard-stop-minutes "$HARD" \
      --out "$RES" > "$RES/kd_seed$s.log" 2>&1 || touch "$RES/kd_seed$s.failed" ) &
  python3 tools/gpu_patient_kd.py train --mode scratch --seed "$s" $EP --hard-stop-minutes "$HARD" \
    --out "$RES" > "$RES/scratch_seed$s.log" 2>&1 &
done
wait
for f in "$RES"/*.log; do echo "== $f"; grep -v -i warn "$f" | tail -n 6; done
tar czf "$OUT/results.tgz" -C "$RES" .
