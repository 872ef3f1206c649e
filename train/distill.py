"""Hinton knowledge distillation as one readable Keras model (after the keras.io example).

References:
- Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", NIPS 2014 Deep Learning Workshop,
  https://arxiv.org/abs/1503.02531
- Zhao, Cui, Song, Qiu and Liang, "Decoupled Knowledge Distillation", CVPR 2022, https://arxiv.org/abs/2203.08679
- Beyer, Zhai, Royer, Markeeva, Anil and Kolesnikov, "Knowledge distillation: A good teacher is patient and
  consistent", CVPR 2022, https://arxiv.org/abs/2106.05237 (consistent teaching; the view cache, train/views.py)

    loss = alpha * CE(labels, student)
         + (1 - alpha) * T^2 * KL( softmax(teacher / T) || softmax(student / T) )

The T^2 factor keeps the soft-target gradients on the same scale as the hard
ones when T changes (Hinton et al., section 2).

Decoupled KD (DKD, Zhao et al.) splits that KL into a target-class term
(TCKD: the binary "true class vs the rest" distributions) and a non-target term
(NCKD: the distribution over the wrong classes only):

    KL = TCKD + (1 - p_teacher[true]) * NCKD

so the more confident the teacher, the less its ranking of the wrong classes
(the "dark knowledge") counts. `beta` replaces that factor with a constant:

    loss = alpha * CE + (1 - alpha) * T^2 * (TCKD + beta * NCKD)

The teacher's logits are cached: the dataset yields {"label", "teacher_logits"} and the teacher is never run
during training (it is frozen, so running it every step is wasted work). Its answers on many views of each
image, as consistent teaching wants, come from the view cache (train/views.py, ViewDistiller below).
alpha = 1 with no teacher logits is the no-KD baseline: same loop, same budget.

Weak labels (a scan known to show a tumour of unknown type, label = number of classes): the hard-label term is
-log P(tumour) = -log(1 - P(notumor)); the soft targets still say which type, so distillation supplies what the
label lacks.
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


def _kl(log_p, log_q):
    return ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)


def decoupled_kl(labels, student_logits, teacher_logits, temperature: float):
    """(TCKD, NCKD) per example at temperature T, without the T^2 factor."""
    t = float(temperature)
    s, q = student_logits / t, teacher_logits / t
    n = ops.shape(student_logits)[-1]
    target = ops.one_hot(ops.cast(ops.reshape(labels, (-1,)), "int32"), n, dtype=s.dtype)

    def binary(z):  # log of [p(true class), p(any other class)], from logits without underflow
        log_p = ops.log_softmax(z, axis=-1)
        log_true = ops.sum(log_p * target, axis=-1)
        log_rest = ops.logsumexp(log_p - 1e9 * target, axis=-1)
        return ops.stack([log_true, log_rest], axis=-1)

    tckd = _kl(binary(q), binary(s))
    # the true class masked out: distributions over the wrong classes only
    nckd = _kl(ops.log_softmax(q - 1e9 * target, axis=-1), ops.log_softmax(s - 1e9 * target, axis=-1))
    return tckd, nckd


def hard_loss(labels, logits, no_tumour: int | None = None):
    """Cross-entropy on the labels; a weak label (= number of classes) scores -log P(any tumour class)."""
    if no_tumour is None:
        return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    n = ops.shape(logits)[-1]
    labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
    weak = ops.equal(labels, n)
    ce = keras.losses.sparse_categorical_crossentropy(ops.where(weak, no_tumour, labels), logits, from_logits=True)
    log_p = ops.log_softmax(logits, axis=-1)
    log_tumour = ops.logsumexp(log_p - 1e9 * ops.one_hot(no_tumour, n, dtype=log_p.dtype), axis=-1)
    return ops.where(weak, -log_tumour, ce)


def distillation_loss(labels, student_logits, teacher_logits, temperature: float, alpha: float,
                      beta: float | None = None, no_tumour: int | None = None):
    """Per-example loss, shape (batch,), for class-id labels. beta None: Hinton KD; a number: DKD, NCKD weighted
    by beta. no_tumour: the no-tumour class, when some labels are weak (see hard_loss)."""
    ce = hard_loss(labels, student_logits, no_tumour)
    if teacher_logits is None or alpha >= 1.0:
        return ce
    t = float(temperature)
    if beta is None:
        kd = _kl(ops.log_softmax(teacher_logits / t, axis=-1), ops.log_softmax(student_logits / t, axis=-1))
    else:
        target_term, nckd = decoupled_kl(labels, student_logits, teacher_logits, t)
        kd = target_term + float(beta) * nckd
    return alpha * ce + (1.0 - alpha) * (t ** 2) * kd


class Distiller(keras.Model):
    """A trainable student taught by cached teacher logits, or by labels alone (the baseline); `call` is the
    student."""

    def __init__(self, student: keras.Model, temperature: float = 4.0, alpha: float = 0.3, beta: float | None = None,
                 no_tumour: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.student = student
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.beta = None if beta is None else float(beta)
        self.no_tumour = no_tumour
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def call(self, x, training=False):
        return self.student(x, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        labels, teacher_logits = (y["label"], y["teacher_logits"]) if isinstance(y, dict) else (y, None)
        if not training:
            teacher_logits = None  # validation loss = the student's own CE, comparable across runs
        per_example = distillation_loss(labels, y_pred, teacher_logits, self.temperature, self.alpha, self.beta,
                                        self.no_tumour)
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


def soft_cross_entropy(target_probs, logits):
    """-sum(p * log softmax(logits)): cross-entropy against a distribution (mixed labels of mixed views)."""
    return -ops.sum(target_probs * ops.log_softmax(logits, axis=-1), axis=-1)


class ViewDistiller(keras.Model):
    """Patient, consistent distillation from a view cache (train/views.py). Each step sees a batch of cached views
    and a batch of the original training images with their labels:

        loss = alpha * CE(labels, student(images))
             + (1 - alpha) * T^2 * KL( softmax(teacher(view) / T) || softmax(student(view) / T) )

    The labels-only twin (teacher=False) replaces the view term by CE(mixed labels, student(view)): the same
    views, steps and images, the teacher's answers swapped for the labels, so the KD gain is the teacher's alone.
    Views without a usable target (unlabeled scans, for the twin) carry weight 0 in the view term."""

    def __init__(self, student: keras.Model, temperature: float = 1.0, alpha: float = 0.3, teacher: bool = True,
                 no_tumour: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.student = student
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.teacher = bool(teacher)
        self.no_tumour = no_tumour
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy]

    def call(self, x, training=False):
        return self.student(x, training=training)

    def view_loss(self, target, mask, logits):
        if self.teacher:
            t = self.temperature
            kd = _kl(ops.log_softmax(target / t, axis=-1), ops.log_softmax(logits / t, axis=-1)) * (t ** 2)
        else:
            kd = soft_cross_entropy(target, logits)
        return ops.sum(kd * mask) / ops.maximum(ops.sum(mask), 1.0)

    def train_step(self, data):
        (views, images), (target, mask, labels, weights) = data
        n = ops.shape(views)[0]
        with tf.GradientTape() as tape:
            logits = self.student(ops.concatenate([views, images], axis=0), training=True)
            ce = ops.mean(hard_loss(labels, logits[n:], self.no_tumour) * weights)
            loss = self.alpha * ce + (1.0 - self.alpha) * self.view_loss(target, mask, logits[:n])
            # Each replica sees 1/n of the global batch and the gradients are summed across replicas, as in
            # Distiller.compute_loss: without this, n devices would take n times the step.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = loss / replicas if replicas > 1 else loss
        grads = tape.gradient(scaled, self.student.trainable_variables)
        self.optimizer.apply(grads, self.student.trainable_variables)
        self.loss_tracker.update_state(loss)
        n_classes = ops.shape(logits)[-1]
        self.accuracy.update_state(labels, logits[n:], sample_weight=ops.cast(labels < n_classes, "float32"))
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        x, y = data
        logits = self.student(x, training=False)
        self.loss_tracker.update_state(ops.mean(hard_loss(y, logits, self.no_tumour)))
        self.accuracy.update_state(y, logits, sample_weight=ops.cast(y < ops.shape(logits)[-1], "float32"))
        return {m.name: m.result() for m in self.metrics}
