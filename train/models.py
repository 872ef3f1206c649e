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


# EfficientNet-Lite (Tan and Le 2019; the Lite variant: no squeeze-excite, ReLU6, the stem and head fixed), the layout
# of the ImageNet weights in train/pretrained.py. Per stage (kernel, stride, expansion); the variants differ in each
# stage's output filters and repeats (read off the weight files' shapes).
LITE_STAGES = ((3, 1, 1), (3, 2, 6), (5, 2, 6), (3, 2, 6), (5, 1, 6), (5, 2, 6), (3, 1, 6))
LITE = {"lite0": ((16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1)),
        "lite1": ((16, 24, 40, 80, 112, 192, 320), (1, 3, 3, 4, 4, 5, 1)),
        "lite2": ((16, 24, 48, 88, 120, 208, 352), (1, 3, 3, 4, 4, 5, 1))}
LITE_EPSILON = 1e-3  # the weights' own BatchNorm epsilon


def _lite_bn(x, name):
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=LITE_EPSILON, name=name)(x)


def lite_features(rgb, variant: str = "lite0"):
    """The backbone of EfficientNet-`variant` on RGB pixels 0..255 (normalised inside, as the weights expect:
    (x - 127) / 128) up to its 1280 pooled features. TF-style "same" padding, which the weights were trained with."""
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="lite_normalise")(rgb)
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.ReLU(6.0, name="stem_relu")(_lite_bn(x, "stem_bn"))
    i, channels = 0, 32
    for (kernel, stride, expand), filters, repeats in zip(LITE_STAGES, *LITE[variant]):
        for r in range(repeats):
            s, inp = (stride if r == 0 else 1), x
            if expand != 1:
                x = layers.Conv2D(channels * expand, 1, use_bias=False, name=f"block{i}_expand")(x)
                x = layers.ReLU(6.0, name=f"block{i}_expand_relu")(_lite_bn(x, f"block{i}_expand_bn"))
            x = layers.DepthwiseConv2D(kernel, strides=s, padding="same", use_bias=False, name=f"block{i}_dw")(x)
            x = layers.ReLU(6.0, name=f"block{i}_dw_relu")(_lite_bn(x, f"block{i}_dw_bn"))
            x = layers.Conv2D(filters, 1, use_bias=False, name=f"block{i}_project")(x)
            x = _lite_bn(x, f"block{i}_project_bn")
            if s == 1 and channels == filters:
                x = layers.Add(name=f"block{i}_add")([x, inp])
            i, channels = i + 1, filters
    x = layers.Conv2D(1280, 1, use_bias=False, name="head_conv")(x)
    x = layers.ReLU(6.0, name="head_relu")(_lite_bn(x, "head_bn"))
    return layers.GlobalAveragePooling2D(name="pool")(x)


def build_lite_imagenet(size: int, variant: str = "lite0") -> keras.Model:
    """The ImageNet classifier as the weights define it (RGB in, 1000 logits out): for checking the conversion."""
    inp = keras.Input((size, size, 3), name="rgb")
    return keras.Model(inp, layers.Dense(1000, name="imagenet_logits")(lite_features(inp, variant)),
                       name=f"{variant}_imagenet")


def build_efficientnet_lite(size: int, n_classes: int, weights: str | None = None, dropout: float = 0.2,
                            variant: str = "lite0") -> keras.Model:
    """The teacher: grayscale pixels 0..255 repeated to 3 channels inside the model, the backbone of
    EfficientNet-`variant` with `weights` (a Keras weights file from train.pretrained.imagenet_weights, or None for
    random init), and a new n-way head."""
    gray = keras.Input((size, size, 1), name="gray")
    backbone = keras.Model(gray, lite_features(layers.Concatenate(name="gray_to_rgb")([gray, gray, gray]), variant),
                           name=f"{variant}_backbone")
    inp = keras.Input((size, size, 1), name="pixels")
    if weights:
        _load_backbone(backbone, weights, variant)
    x = layers.Dropout(dropout, name="head_dropout")(backbone(inp))
    return keras.Model(inp, layers.Dense(n_classes, name="logits")(x), name=f"teacher_efficientnet_{variant}")


def _load_backbone(backbone: keras.Model, weights, variant: str) -> None:
    """Copy the ImageNet model's weights into the backbone layer by layer (same names, no 1000-class head)."""
    ref = build_lite_imagenet(32, variant)
    ref.load_weights(weights)
    for layer in backbone.layers:
        if layer.weights:
            layer.set_weights(ref.get_layer(layer.name).get_weights())
