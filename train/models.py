"""The networks: the student (an int8-friendly depthwise-separable CNN, also the teacher ensemble's member) and
the EfficientNetB0 teacher recipe, plus MAC counting.

Both take the preprocessing contract's raw pixels, shape (size, size, 1), values
0..255 as float32; scaling happens inside the model so the int8 student's input
quantisation maps exactly onto uint8 pixels. Both output logits.
"""
from __future__ import annotations

import keras
from keras import layers

# Keras' default 0.99 needs hundreds of steps before the inference statistics are
# usable; small data sets give ~10-70 steps an epoch, so follow the batch faster.
BN_MOMENTUM = 0.9


def build_efficientnetb0(size: int, n_classes: int, weights: str = "none", dropout: float = 0.3) -> keras.Model:
    inp = keras.Input((size, size, 1), name="pixels")
    # EfficientNetB0 wants 3 channels and does its own 0..255 rescaling/normalisation.
    x = layers.Concatenate(name="gray_to_rgb")([inp, inp, inp])
    w = None if weights in ("none", "", None) else ("imagenet" if weights == "imagenet" else None)
    base = keras.applications.EfficientNetB0(include_top=False, weights=w, input_shape=(size, size, 3))
    if weights not in ("none", "imagenet", "", None):
        base.load_weights(weights)
    for layer in base.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    x = base(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    out = layers.Dense(n_classes, name="logits")(x)
    return keras.Model(inp, out, name="teacher_efficientnetb0")


def _dw_block(x, filters, stride, name):
    # ReLU6 + BN folded into conv at conversion: every op here has an int8 kernel.
    x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_pw_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_pw_relu")(x)


# (filters, stride) per depthwise-separable block, after two full 3x3 stride-2 convs.
# The full-resolution stages are plain convs: depthwise convs at 64x64 are cheap in
# MACs but slow to *train* on a CPU (their backward pass is poorly vectorised).
STUDENT_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (256, 1))


def build_student(size: int, n_classes: int, width: float = 1.0, dropout: float = 0.2) -> keras.Model:
    inp = keras.Input((size, size, 1), name="pixels")
    x = layers.Rescaling(1.0 / 255.0, name="scale")(inp)
    x = layers.Conv2D(int(16 * width), 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    x = layers.Conv2D(int(48 * width), 3, strides=2, padding="same", use_bias=False, name="stem2")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem2_bn")(x)
    x = layers.ReLU(6.0, name="stem2_relu")(x)
    for i, (f, s) in enumerate(STUDENT_BLOCKS):
        x = _dw_block(x, int(f * width), s, f"b{i}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    out = layers.Dense(n_classes, name="logits")(x)
    return keras.Model(inp, out, name="student_dwcnn")


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass (batch 1): conv, depthwise conv and dense layers."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += count_macs(layer)
            continue
        try:
            out_shape = layer.output.shape
            in_shape = layer.input.shape
        except (AttributeError, ValueError):
            continue
        if isinstance(layer, layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            total += out_shape[1] * out_shape[2] * out_shape[3] * kh * kw
        elif isinstance(layer, layers.Conv2D):
            kh, kw = layer.kernel_size
            total += out_shape[1] * out_shape[2] * out_shape[3] * kh * kw * in_shape[-1] // layer.groups
        elif isinstance(layer, layers.Dense):
            total += in_shape[-1] * out_shape[-1]
    return int(total)

