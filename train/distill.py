"""Hinton knowledge distillation as one readable Keras model (after the keras.io example), over views.

References:
- Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", NIPS 2014 Deep Learning Workshop,
  https://arxiv.org/abs/1503.02531
- Beyer, Zhai, Royer, Markeeva, Anil and Kolesnikov, "Knowledge distillation: A good teacher is patient and
  consistent", CVPR 2022, https://arxiv.org/abs/2106.05237 (consistent teaching; the view cache, train/views.py)

    loss = alpha * CE(labels, student(images))
         + (1 - alpha) * T^2 * KL( softmax(teacher(view) / T) || softmax(student(view) / T) )

The T^2 factor keeps the soft-target gradients on the same scale as the hard ones when T changes (Hinton et al.,
section 2). The teacher's logits are cached with each view (train/views.py): the teacher never runs during
student training. With one view per image that is the image itself (`--views 0`, views.identity), this is
classic image-logit KD. The labels-only twin (teacher=False) is the same class, loop and budget with the
teacher's answers swapped for the views' (mixed) labels, so the KD gain is the teacher's alone.

Decoupled KD (DKD) and flip-averaged cached logits (TTA) were measured and did not pay (docs/research.md, Q3):
they are gone; their code is in the history before commit "one distiller".

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


def soft_cross_entropy(target_probs, logits):
    """-sum(p * log softmax(logits)): cross-entropy against a distribution (mixed labels of mixed views)."""
    return -ops.sum(target_probs * ops.log_softmax(logits, axis=-1), axis=-1)


class Distiller(keras.Model):
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
