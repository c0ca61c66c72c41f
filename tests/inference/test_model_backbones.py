import pytest
import torch

from hipfuse.inference.model.backbones import build_image_encoder, stage_widths


@pytest.mark.parametrize(
    ("depth", "expansion"),
    [(10, 1), (18, 1), (34, 1), (50, 4)],
    ids=["resnet10", "resnet18", "resnet34", "resnet50"],
)
@pytest.mark.parametrize(
    ("spatial_dims", "shape"),
    [(2, (2, 1, 48, 40)), (3, (2, 1, 16, 32, 24))],
    ids=["2d", "3d"],
)
def test_encoder_feature_size(depth, expansion, spatial_dims, shape):
    encoder = build_image_encoder(spatial_dims, depth, width=4).eval()
    with torch.inference_mode():
        features = encoder(torch.randn(shape))
    assert encoder.out_features == 4 * 8 * expansion
    assert features.shape == (2, encoder.out_features)
    assert encoder.feature_layer is encoder.resnet.layer4


@pytest.mark.parametrize("spatial_dims", [2, 3], ids=["2d", "3d"])
def test_encoder_first_conv_stride_two(spatial_dims):
    encoder = build_image_encoder(spatial_dims, 10, width=4)
    assert encoder.resnet.conv1.stride == (2,) * spatial_dims
    assert encoder.resnet.conv1.in_channels == 1
    assert encoder.resnet.fc is None


@pytest.mark.parametrize(
    ("width", "expected"),
    [
        (64, [64, 128, 256, 512]),
        (16, [16, 32, 64, 128]),
        (0.25, [16, 32, 64, 128]),
        (1.0, [64, 128, 256, 512]),
    ],
    ids=["int-full", "int-demo", "float-quarter", "float-full"],
)
def test_stage_widths(width, expected):
    assert stage_widths(width) == expected


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"spatial_dims": 2, "depth": 101}, ValueError, "unsupported ResNet depth 101"),
        ({"spatial_dims": 1, "depth": 10}, ValueError, "spatial_dims must be 2 or 3"),
        ({"spatial_dims": 2, "depth": 10, "width": True}, TypeError, "width must be"),
        ({"spatial_dims": 2, "depth": 10, "width": 0.001}, ValueError, "0 channels"),
    ],
    ids=["depth", "spatial-dims", "bool-width", "tiny-width"],
)
def test_build_encoder_rejects(kwargs, error, match):
    with pytest.raises(error, match=match):
        build_image_encoder(**kwargs)


@pytest.mark.parametrize(
    ("spatial_dims", "shape"),
    [(2, (2, 1, 64, 64)), (3, (2, 1, 16, 32, 32))],
    ids=["2d", "3d"],
)
def test_channels_last_same_features(spatial_dims, shape):
    torch.manual_seed(0)
    encoder = build_image_encoder(spatial_dims, 18, width=8).eval()
    images = torch.randn(shape)
    with torch.inference_mode():
        reference = encoder(images)
        encoder.use_channels_last()
        converted = encoder(images)
    torch.testing.assert_close(converted, reference, rtol=1e-4, atol=1e-5)
