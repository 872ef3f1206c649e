"""Hinton knowledge distillation as one readable Keras model (after the keras.io example).

    loss = alpha * CE(labels, student)
         + (1 - alpha) * T^2 * KL( softmax(teacher / T) || softmax(student / T) )

The T^2 factor keeps the soft-target gradients on the same scale as the hard
ones when T changes (Hinton et al. 2015, section 2).

Two ways to get the teacher's logits:
- cached: the dataset yields {"label", "teacher_logits"}; the teacher is never run
  during training (it is frozen, so running it every step is wasted work);
- consistent: the dataset yields labels only and the teacher runs on the very
  same augmented batch the student sees (Beyer et al. 2022).
alpha = 1 with no teacher is the no-KD baseline: same loop, same budget.
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


def distillation_loss(labels, student_logits, teacher_logits, temperature: float, alpha: float):
    """Per-example loss, shape (batch,)."""
    ce = keras.losses.sparse_categorical_crossentropy(labels, student_logits, from_logits=True)
    if teacher_logits is None or alpha >= 1.0:
        return ce
    t = float(temperature)
    p_teacher = ops.softmax(teacher_logits / t, axis=-1)
    log_p_teacher = ops.log_softmax(teacher_logits / t, axis=-1)
    log_p_student = ops.log_softmax(student_logits / t, axis=-1)
    kl = ops.sum(p_teacher * (log_p_teacher - log_p_student), axis=-1)
    return alpha * ce + (1.0 - alpha) * (t ** 2) * kl


class Distiller(keras.Model):
    """A frozen teacher (optional) and a trainable student; `call` is the student."""

    def __init__(self, student: keras.Model, teacher: keras.Model | None = None,
                 temperature: float = 4.0, alpha: float = 0.3, **kwargs):
        super().__init__(**kwargs)
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.trainable = False
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def call(self, x, training=False):
        return self.student(x, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if isinstance(y, dict):
            labels, teacher_logits = y["label"], y["teacher_logits"]
        else:
            labels = y
            use = self.teacher is not None and training and self.alpha < 1.0
            teacher_logits = self.teacher(x, training=False) if use else None
        if not training:
            teacher_logits = None  # validation loss = the student's own CE, comparable across runs
        per_example = distillation_loss(labels, y_pred, teacher_logits, self.temperature, self.alpha)
        if sample_weight is not None:
            per_example = per_example * ops.cast(sample_weight, per_example.dtype)
        loss = ops.mean(per_example)
        # Each replica sees 1/n of the global batch; gradients are summed across replicas.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return loss / replicas if replicas > 1 else loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        labels = y["label"] if isinstance(y, dict) else y
        self.accuracy.update_state(labels, y_pred)
        return super().compute_metrics(x, y, y_pred, sample_weight)
