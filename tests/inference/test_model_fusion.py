import pytest
import torch

from hipfuse.inference.model.bundle import build_model
from hipfuse.inference.model.config import (
    ArchitectureConfig,
    FusionKind,
    ImageBranchConfig,
)

TEXT_DIM = 12
BATCH = 3


def tiny_architecture(fusion=FusionKind.ATTENTION):
    return ArchitectureConfig(
        radiograph=ImageBranchConfig(depth=10, width=4),
        ct=ImageBranchConfig(depth=10, width=4),
        text_dim=TEXT_DIM,
        embed_dim=16,
        attention_hidden=8,
        fusion=fusion,
    )


def make_inputs(seed=0, batch=BATCH):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 1, 32, 32, generator=generator),
        torch.randn(batch, 1, 16, 32, 32, generator=generator),
        torch.randn(batch, TEXT_DIM, generator=generator),
    )


@pytest.fixture(
    scope="module", params=[FusionKind.ATTENTION, FusionKind.CONCAT], ids=["attention", "concat"]
)
def model(request):
    return build_model(tiny_architecture(request.param), seed=0).eval()


@pytest.fixture(scope="module")
def attention_model():
    return build_model(tiny_architecture(), seed=0).eval()


def run(model, radiograph, ct, text, mask):
    with torch.inference_mode():
        return model(radiograph, ct, text, mask)


@pytest.mark.parametrize(
    "present",
    [
        (True, True, True),
        (True, False, False),
        (False, True, False),
        (False, False, True),
        (True, False, True),
    ],
    ids=["all", "radiograph-only", "ct-only", "text-only", "no-ct"],
)
def test_attention_zero_for_missing(attention_model, present):
    mask = torch.tensor([present] * BATCH)
    output = run(attention_model, *make_inputs(), mask)
    assert torch.all(output.attention[~mask] == 0.0)
    assert torch.all(output.attention[mask] > 0.0)
    torch.testing.assert_close(output.attention.sum(dim=1), torch.ones(BATCH))


@pytest.mark.parametrize("missing", [0, 1, 2], ids=["radiograph", "ct", "text"])
def test_missing_content_ignored(model, missing):
    # Sample 0 lacks one modality, samples 1 and 2 have everything.
    mask = torch.ones(BATCH, 3, dtype=torch.bool)
    mask[0, missing] = False
    inputs = list(make_inputs(seed=1))
    first = run(model, *inputs, mask)
    inputs[missing] = inputs[missing].clone()
    inputs[missing][0] = 1e6  # garbage where the modality is missing
    second = run(model, *inputs, mask)
    assert torch.equal(first.logits, second.logits)
    assert torch.equal(first.attention, second.attention)


def test_missing_sample_matches_alone(attention_model):
    # A hip's result must not depend on which other hips share its batch.
    radiograph, ct, text = make_inputs(seed=2)
    mask = torch.tensor([[True, False, True], [True, True, True], [False, True, False]])
    batched = run(attention_model, radiograph, ct, text, mask)
    alone = run(attention_model, radiograph[:1], None, text[:1], mask[:1])
    torch.testing.assert_close(batched.logits[:1], alone.logits, rtol=1e-5, atol=1e-6)


def test_absent_modality_skips_encoder(attention_model):
    calls = []
    handle = attention_model.ct_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        radiograph, _, text = make_inputs()
        mask = torch.tensor([[True, False, True]] * BATCH)
        run(
            attention_model,
            radiograph,
            torch.full((BATCH, 1, 16, 32, 32), float("nan")),
            text,
            mask,
        )
        assert calls == []
        run(attention_model, *make_inputs(), torch.ones(BATCH, 3, dtype=torch.bool))
        assert calls == [1]
    finally:
        handle.remove()


def test_probabilities_sum_to_one(model):
    output = run(model, *make_inputs(), torch.ones(BATCH, 3, dtype=torch.bool))
    assert output.logits.shape == (BATCH, 4)
    torch.testing.assert_close(output.probabilities.sum(dim=1), torch.ones(BATCH))
    assert torch.all(output.probabilities >= 0)


def test_concat_attention_uniform_over_present():
    model = build_model(tiny_architecture(FusionKind.CONCAT), seed=0).eval()
    mask = torch.tensor([[True, True, True], [True, False, True], [False, False, True]])
    output = run(model, *make_inputs(), mask)
    expected = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.5, 0.0, 0.5], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(output.attention, expected)
    assert model.classifier.in_features == 3 * 16 + 3


def test_temperature_changes_confidence_not_argmax():
    model = build_model(tiny_architecture(), seed=0).eval()
    inputs = make_inputs(seed=3)
    mask = torch.ones(BATCH, 3, dtype=torch.bool)
    base = run(model, *inputs, mask)
    model.set_temperature(0.25)
    sharp = run(model, *inputs, mask)
    model.set_temperature(4.0)
    flat = run(model, *inputs, mask)
    assert torch.equal(base.logits, sharp.logits)
    assert torch.equal(base.probabilities.argmax(1), sharp.probabilities.argmax(1))
    assert torch.equal(base.probabilities.argmax(1), flat.probabilities.argmax(1))
    assert torch.all(sharp.probabilities.max(1).values > base.probabilities.max(1).values)
    assert torch.all(flat.probabilities.max(1).values < base.probabilities.max(1).values)
    assert "temperature" in model.state_dict()


@pytest.mark.parametrize(
    "value", [0.0, -1.0, float("nan"), float("inf")], ids=["zero", "negative", "nan", "inf"]
)
def test_temperature_rejects(value):
    model = build_model(tiny_architecture(), seed=0)
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        model.set_temperature(value)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("empty-row", r"samples \[1\] have no modality"),
        ("missing-tensor", "mask marks ct present but no ct tensor"),
        ("text-dim", "text embedding size must be 12, got 5"),
        ("mask-shape", r"mask must have shape \(B, 3\)"),
        ("batch-size", "batch size 3"),
    ],
)
def test_forward_rejects(attention_model, change, match):
    radiograph, ct, text = make_inputs()
    mask = torch.ones(BATCH, 3, dtype=torch.bool)
    if change == "empty-row":
        mask[1] = False
    elif change == "missing-tensor":
        ct = None
    elif change == "text-dim":
        text = torch.randn(BATCH, 5)
    elif change == "mask-shape":
        mask = torch.ones(BATCH, 2, dtype=torch.bool)
    elif change == "batch-size":
        radiograph = radiograph[:2]
    with pytest.raises(ValueError, match=match):
        run(attention_model, radiograph, ct, text, mask)


def test_training_gradients_reach_all_branches():
    model = build_model(tiny_architecture(), seed=0).train()
    output = model(*make_inputs(), torch.ones(BATCH, 3, dtype=torch.bool))
    torch.nn.functional.cross_entropy(output.logits, torch.tensor([0, 1, 2])).backward()
    for name in (
        "radiograph_encoder.resnet.conv1.weight",
        "ct_encoder.resnet.conv1.weight",
        "projections.text.1.weight",
        "attention_scorer.0.weight",
    ):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None, name
        assert torch.count_nonzero(grad) > 0, name
