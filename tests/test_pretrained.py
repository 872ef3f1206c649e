"""The EfficientNet-Lite teachers' ImageNet weights: read offline without torch, converted right, verified."""
import keras
import numpy as np
import pytest
from PIL import Image

from train.config import ConfigError
from train.models import build_efficientnet_lite, build_lite_imagenet
from train.pretrained import PACKAGES, imagenet_weights, read_legacy_state_dict, verified, weights_file


def top5(model, photo) -> list[int]:
    x = np.asarray(Image.fromarray(photo).resize((224, 224), Image.BILINEAR), np.float32)
    return np.argsort(-model.predict(x[None], verbose=0)[0])[:5].tolist()


def test_converted_imagenet_model_recognises_the_sample_photos(converted_weights):
    from skimage import data

    model = build_lite_imagenet(224)
    model.load_weights(converted_weights)
    assert set(top5(model, data.chelsea())) & {281, 282, 283, 284, 285}  # tabby, tiger, Persian, Siamese, Egyptian cat
    assert set(top5(model, data.coffee())) & {967, 968}                  # espresso, cup


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_the_larger_lites_read_into_their_own_layout_and_recognise_the_photos(variant, tmp_path):
    """Lite1 and Lite2 (deeper; Lite2 also wider): every tensor of the weight file lands in a layer of the same
    shape (set_weights refuses others), and the result is an ImageNet classifier."""
    from skimage import data

    weights = imagenet_weights(tmp_path, variant)
    assert PACKAGES[variant][2][:16] in weights.name
    model = build_lite_imagenet(224, variant)
    model.load_weights(weights)
    assert len([la for la in model.layers if la.name.endswith("_dw")]) == 21
    assert set(top5(model, data.chelsea())) & {281, 282, 283, 284, 285}
    assert set(top5(model, data.coffee())) & {967, 968}
    with pytest.raises(ConfigError, match="altered or another version"):
        verified(weights_file("lite0"), variant)


def test_legacy_reader_gets_every_tensor_and_the_cache_is_keyed_by_digest(converted_weights):
    state = read_legacy_state_dict(weights_file())
    assert len(state) == 296 and state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.weight"].dtype == np.float32
    assert PACKAGES["lite0"][2][:16] in converted_weights.name
    assert imagenet_weights(converted_weights.parent) == converted_weights  # made once, then reused


def test_an_altered_weight_file_is_one_clear_line(tmp_path):
    bad = tmp_path / "lite0.pth"
    data = bytearray(weights_file().read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="altered or another version") as e:
        verified(bad)
    assert "\n" not in str(e.value) and "pip install" in str(e.value)


def test_teacher_takes_grayscale_and_starts_from_imagenet_features(converted_weights):
    model = build_efficientnet_lite(64, 4, converted_weights)
    assert model.input_shape == (None, 64, 64, 1) and model.output_shape == (None, 4)
    ref = build_lite_imagenet(64)
    ref.load_weights(converted_weights)
    backbone = model.get_layer("lite0_backbone")
    np.testing.assert_array_equal(backbone.get_layer("block15_project").get_weights()[0],
                                  ref.get_layer("block15_project").get_weights()[0])
    # grayscale repeated to RGB inside the model: the same features as the RGB model on a gray photo
    x = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 1)).astype(np.float32)
    rgb_features = keras.Model(ref.input, ref.get_layer("pool").output)(np.repeat(x, 3, -1))
    np.testing.assert_allclose(backbone(x), rgb_features, rtol=1e-4, atol=1e-4)
