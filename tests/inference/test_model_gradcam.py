import pytest
import torch

from hipfuse.inference.model.bundle import build_model
from hipfuse.inference.model.config import ArchitectureConfig, ImageBranchConfig
from hipfuse.inference.model.gradcam import cam_from_activations, compute_gradcam

TEXT_DIM = 8
# Deliberately not powers of two, so every axis (depth included) must be interpolated.
RADIOGRAPH_SHAPE = (72, 56)
CT_SHAPE = (20, 44, 36)


@pytest.fixture(scope="module")
def model():
    architecture = ArchitectureConfig(
        radiograph=ImageBranchConfig(depth=10, width=4),
        ct=ImageBranchConfig(depth=10, width=4),
        text_dim=TEXT_DIM,
        embed_dim=16,
        attention_hidden=8,
    )
    return build_model(architecture, seed=0).eval().requires_grad_(False)


def make_inputs(batch, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.rand(batch, 1, *RADIOGRAPH_SHAPE, generator=generator),
        torch.rand(batch, 1, *CT_SHAPE, generator=generator),
        torch.randn(batch, TEXT_DIM, generator=generator),
    )


def test_maps_match_crop_shapes(model):
    result = compute_gradcam(model, *make_inputs(2), torch.ones(2, 3, dtype=torch.bool))
    assert result.radiograph_cam.shape == (2, *RADIOGRAPH_SHAPE)
    assert result.ct_cam.shape == (2, *CT_SHAPE)
    for cam in (result.radiograph_cam, result.ct_cam):
        assert torch.isfinite(cam).all()
        assert cam.min() >= 0.0
        assert cam.max() <= 1.0
        # Min-max scaling per sample: each informative map spans [0, 1].
        for row in cam:
            assert row.max() == pytest.approx(1.0)
            assert row.min() == pytest.approx(0.0)


def test_forward_matches_plain_forward(model):
    inputs = make_inputs(2, seed=1)
    mask = torch.ones(2, 3, dtype=torch.bool)
    result = compute_gradcam(model, *inputs, mask)
    with torch.inference_mode():
        plain = model(*inputs, mask)
    torch.testing.assert_close(result.output.probabilities, plain.probabilities)
    assert torch.equal(result.target_classes, plain.logits.argmax(dim=1))


def test_maps_batch_safe(model):
    radiograph, ct, text = make_inputs(3, seed=2)
    mask = torch.tensor([[True, True, True], [False, True, True], [True, False, False]])
    batched = compute_gradcam(model, radiograph, ct, text, mask)
    # Rows without the modality are zeros; the others equal the map of the hip alone.
    assert torch.count_nonzero(batched.radiograph_cam[1]) == 0
    assert torch.count_nonzero(batched.ct_cam[2]) == 0
    for row in range(3):
        alone = compute_gradcam(
            model,
            radiograph[row : row + 1],
            ct[row : row + 1],
            text[row : row + 1],
            mask[row : row + 1],
        )
        if mask[row, 0]:
            torch.testing.assert_close(
                batched.radiograph_cam[row], alone.radiograph_cam[0], atol=1e-4, rtol=1e-4
            )
        if mask[row, 1]:
            torch.testing.assert_close(batched.ct_cam[row], alone.ct_cam[0], atol=1e-4, rtol=1e-4)


def test_missing_modality_has_no_map(model):
    radiograph, _, text = make_inputs(1)
    result = compute_gradcam(model, radiograph, None, text, torch.tensor([[True, False, True]]))
    assert result.ct_cam is None
    assert result.radiograph_cam.shape == (1, *RADIOGRAPH_SHAPE)


def test_explicit_target_class(model):
    inputs = make_inputs(2, seed=3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    result = compute_gradcam(model, *inputs, mask, target_class=[3, 0])
    assert result.target_classes.tolist() == [3, 0]
    with pytest.raises(ValueError, match=r"target_class must lie in \[0, 3\]"):
        compute_gradcam(model, *inputs, mask, target_class=4)


def test_zero_gradient_gives_zero_maps():
    architecture = ArchitectureConfig(
        radiograph=ImageBranchConfig(depth=10, width=4),
        ct=ImageBranchConfig(depth=10, width=4),
        text_dim=TEXT_DIM,
        embed_dim=16,
        attention_hidden=8,
    )
    model = build_model(architecture, seed=0).eval().requires_grad_(False)
    # A classifier with zero weights makes every logit constant, so every gradient is zero.
    model.classifier.weight.zero_()
    result = compute_gradcam(model, *make_inputs(2), torch.ones(2, 3, dtype=torch.bool))
    assert torch.count_nonzero(result.radiograph_cam) == 0
    assert torch.count_nonzero(result.ct_cam) == 0
    assert torch.isfinite(result.ct_cam).all()


def _positive(*shape):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0)) + 0.1


@pytest.mark.parametrize(
    ("activations", "gradients"),
    [
        (_positive(2, 4, 3, 3), torch.zeros(2, 4, 3, 3)),
        (_positive(2, 4, 3, 3), -torch.ones(2, 4, 3, 3)),
        (torch.ones(2, 4, 3, 3), torch.ones(2, 4, 3, 3)),
        (_positive(2, 4, 3, 3), torch.full((2, 4, 3, 3), float("nan"))),
        (_positive(1, 4, 2, 3, 3), torch.zeros(1, 4, 2, 3, 3)),
        (torch.ones(1, 4, 2, 3, 3), torch.ones(1, 4, 2, 3, 3)),
    ],
    ids=[
        "zero-gradient-2d",
        "all-negative-2d",
        "flat-2d",
        "nan-gradient-2d",
        "zero-gradient-3d",
        "flat-3d",
    ],
)
def test_uninformative_map_is_zero(activations, gradients):
    output_shape = (9, 7) if activations.ndim == 4 else (5, 9, 7)
    cam = cam_from_activations(activations, gradients, output_shape)
    assert cam.shape == (activations.shape[0], *output_shape)
    assert torch.count_nonzero(cam) == 0


def test_map_located_where_evidence_is():
    activations = torch.zeros(1, 2, 4, 4)
    activations[0, 0, 0, 3] = 5.0  # top-right cell of channel 0
    gradients = torch.ones(1, 2, 4, 4)
    cam = cam_from_activations(activations, gradients, (16, 16))
    row, column = divmod(int(cam[0].argmax()), 16)
    assert row < 4
    assert column >= 12
    assert cam.max() == pytest.approx(1.0)
