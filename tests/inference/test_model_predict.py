import numpy as np
import pytest

from hipfuse.inference.model.bundle import build_untrained_bundle
from hipfuse.inference.model.config import (
    CTPreprocessing,
    IntendedUse,
    ModelPreset,
    RadiographNormalisation,
    RadiographPreprocessing,
    make_bundle_config,
)
from hipfuse.inference.model.predict import HipInputs, normalise_ct, normalise_radiograph, predict
from hipfuse.inference.types import HipClass, InputError, InputModality, Laterality

NOTE = "Right hip pain for three years, worse after walking. MRI: femoral head collapse."


@pytest.fixture(scope="module")
def bundle():
    config = make_bundle_config(
        ModelPreset.DEMO, name="hipfuse-test", version="0", intended_use=IntendedUse.DEMO
    )
    return build_untrained_bundle(config, seed=1)


def radiograph(seed=0, shape=(128, 128)):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def ct(seed=0, shape=(32, 64, 64)):
    return np.random.default_rng(seed).normal(300.0, 500.0, shape).astype(np.float32)


def study():
    return [
        HipInputs(Laterality.RIGHT, radiograph(0), ct(0), NOTE),
        HipInputs(Laterality.LEFT, radiograph(1), None, NOTE),
        HipInputs(Laterality.RIGHT, None, None, NOTE),
    ]


def test_predictions_per_hip(bundle):
    results = predict(bundle, study())
    assert [r.laterality for r in results] == [Laterality.RIGHT, Laterality.LEFT, Laterality.RIGHT]
    for result in results:
        assert list(result.probabilities) == list(HipClass)
        assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert result.predicted == max(result.probabilities, key=result.probabilities.get)
        assert sum(result.attention.values()) == pytest.approx(1.0, abs=1e-6)
    full, no_ct, text_only = results
    assert full.available_modalities == (
        InputModality.RADIOGRAPH,
        InputModality.CT,
        InputModality.TEXT,
    )
    assert no_ct.attention[InputModality.CT] == 0.0
    assert no_ct.ct_cam is None
    assert text_only.available_modalities == (InputModality.TEXT,)
    assert text_only.attention[InputModality.TEXT] == 1.0
    assert text_only.radiograph_cam is None
    assert full.radiograph_cam.shape == (128, 128)
    assert full.ct_cam.shape == (32, 64, 64)
    for cam in (full.radiograph_cam, full.ct_cam, no_ct.radiograph_cam):
        assert np.isfinite(cam).all()
        assert cam.min() >= 0.0
        assert cam.max() <= 1.0


def test_two_predicts_bitwise_equal(bundle):
    first = predict(bundle, study())
    second = predict(bundle, study())
    for a, b in zip(first, second, strict=True):
        assert a.probabilities == b.probabilities
        assert a.attention == b.attention
    assert np.array_equal(first[0].radiograph_cam, second[0].radiograph_cam)
    assert np.array_equal(first[0].ct_cam, second[0].ct_cam)


def test_without_gradcam_same_probabilities(bundle):
    with_maps = predict(bundle, study(), gradcam=True)
    without = predict(bundle, study(), gradcam=False)
    for a, b in zip(with_maps, without, strict=True):
        assert b.radiograph_cam is None
        assert b.ct_cam is None
        assert a.predicted == b.predicted
        for cls in HipClass:
            assert b.probabilities[cls] == pytest.approx(a.probabilities[cls], abs=1e-6)
    assert without.timings["gradcam_backward_s"] == 0.0


def test_batch_size_does_not_change_results(bundle):
    together = predict(bundle, study(), batch_size=4)
    one_by_one = predict(bundle, study(), batch_size=1)
    for a, b in zip(together, one_by_one, strict=True):
        for cls in HipClass:
            assert b.probabilities[cls] == pytest.approx(a.probabilities[cls], abs=1e-5)


def test_text_encoded_once_per_note(bundle, monkeypatch):
    calls = []
    original = bundle.text_encoder.encode

    def counting(text):
        calls.append(text)
        return original(text)

    monkeypatch.setattr(bundle.text_encoder, "encode", counting)
    predict(bundle, [*study(), HipInputs(Laterality.LEFT, None, ct(3), "Other patient, left hip.")])
    assert calls == [NOTE, "Other patient, left hip."]


def test_timings_reported(bundle):
    timings = predict(bundle, study()).timings
    assert set(timings) == {
        "preprocessing_s",
        "text_encoding_s",
        "radiograph_encoder_s",
        "ct_encoder_s",
        "fusion_s",
        "gradcam_backward_s",
        "total_s",
    }
    assert all(value >= 0.0 for value in timings.values())
    assert timings["total_s"] >= timings["radiograph_encoder_s"] + timings["ct_encoder_s"]


def with_nan(array):
    array = array.copy()
    array.flat[5] = np.nan
    return array


@pytest.mark.parametrize(
    ("hip", "code", "match"),
    [
        (
            HipInputs(Laterality.RIGHT, radiograph(shape=(224, 224))),
            "radiograph_crop_shape",
            r"hip 0 \(R\): radiograph crop has shape \(224, 224\), "
            r"this bundle expects \(128, 128\)",
        ),
        (
            HipInputs(Laterality.LEFT, None, ct(shape=(64, 128, 128))),
            "ct_crop_shape",
            r"hip 0 \(L\): CT crop has shape \(64, 128, 128\), this bundle expects \(32, 64, 64\)",
        ),
        (
            HipInputs(Laterality.RIGHT, with_nan(radiograph())),
            "radiograph_crop_not_finite",
            "1 NaN or infinite pixels",
        ),
        (
            HipInputs(Laterality.RIGHT, None, with_nan(ct())),
            "ct_crop_not_finite",
            "1 NaN or infinite voxels",
        ),
        (
            HipInputs(Laterality.RIGHT, radiograph() * 255),
            "radiograph_crop_range",
            r"expected \[0, 1\]",
        ),
        (
            HipInputs(Laterality.RIGHT),
            "no_modality",
            r"hip 0 \(R\) has no radiograph, no CT and no usable text",
        ),
        (HipInputs(Laterality.RIGHT, text=" \n "), "no_modality", "no usable text"),
    ],
    ids=[
        "radiograph-shape",
        "ct-shape",
        "radiograph-nan",
        "ct-nan",
        "radiograph-range",
        "nothing",
        "blank-text",
    ],
)
def test_invalid_inputs_rejected(bundle, hip, code, match):
    with pytest.raises(InputError, match=match) as caught:
        predict(bundle, [hip])
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("hu", "expected"),
    [(-1000.0, 0.0), (-200.0, 0.0), (800.0, 0.5), (1800.0, 1.0), (3000.0, 1.0)],
    ids=["air", "window-low", "window-mid", "window-high", "metal"],
)
def test_normalise_ct_window(hu, expected):
    crop = np.full((8, 8, 8), hu, dtype=np.float32)
    normalised = normalise_ct(crop, CTPreprocessing(crop_shape=(8, 8, 8)))
    assert normalised.dtype == np.float32
    assert np.allclose(normalised, expected)


def test_normalise_radiograph_per_crop():
    crop = radiograph(4) * 0.3 + 0.2
    normalised = normalise_radiograph(crop, RadiographPreprocessing())
    assert normalised.dtype == np.float32
    assert float(normalised.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(normalised.std()) == pytest.approx(1.0, abs=1e-4)


def test_normalise_radiograph_constant_crop():
    normalised = normalise_radiograph(
        np.full((16, 16), 0.4, dtype=np.float32), RadiographPreprocessing()
    )
    assert np.count_nonzero(normalised) == 0


def test_normalise_radiograph_fixed():
    settings = RadiographPreprocessing(
        normalisation=RadiographNormalisation.FIXED, mean=0.5, std=0.25
    )
    normalised = normalise_radiograph(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), settings)
    assert normalised.tolist() == [[-2.0, 0.0, 2.0]]


@pytest.mark.slow
def test_default_preset_one_hip():
    config = make_bundle_config(
        ModelPreset.DEFAULT, name="hipfuse-study", version="0", intended_use=IntendedUse.RESEARCH
    )
    bundle = build_untrained_bundle(config, seed=0, device="cpu")
    hip = HipInputs(Laterality.LEFT, radiograph(shape=(224, 224)), ct(shape=(64, 128, 128)), NOTE)
    (result,) = predict(bundle, [hip])
    assert bundle.model.radiograph_encoder.out_features == 2048
    assert bundle.model.ct_encoder.out_features == 2048
    assert result.radiograph_cam.shape == (224, 224)
    assert result.ct_cam.shape == (64, 128, 128)
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert np.isfinite(result.ct_cam).all()


def test_ready_text_embedding_reused(bundle, monkeypatch):
    expected = predict(bundle, study(), gradcam=False)
    ready = {NOTE: bundle.text_encoder.encode(NOTE)}
    calls = []
    original = bundle.text_encoder.encode

    def counting(text):
        calls.append(text)
        return original(text)

    monkeypatch.setattr(bundle.text_encoder, "encode", counting)
    reused = predict(bundle, study(), gradcam=False, text_embeddings=ready)
    assert calls == []
    for first, second in zip(expected, reused, strict=True):
        assert first.probabilities == second.probabilities
