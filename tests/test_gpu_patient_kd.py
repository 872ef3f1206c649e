"""The lent-GPU tool (tools/gpu_patient_kd.py) must train with the pipeline's learning-rate schedule."""
import numpy as np

from tools.gpu_patient_kd import lr_at
from train import stages


def test_gpu_schedule_is_the_pipelines_schedule():
    lr, epochs, steps = 3e-3, 5, 7
    keras_schedule = stages._schedule(lr, epochs, steps)
    total = float(epochs * steps)
    for step in range(0, epochs * steps + 5):  # warm-up, decay, and past the end (held at the floor)
        want = float(keras_schedule(step))
        got = float(lr_at(np.int32(step), total, steps, lr))
        assert abs(got - want) < 1e-8, (step, got, want)
    assert float(lr_at(np.int32(0), total, steps, lr)) < float(lr_at(np.int32(steps), total, steps, lr))
