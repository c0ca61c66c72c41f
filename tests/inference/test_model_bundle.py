import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hipfuse.inference.model.bundle import (
    BundleError,
    build_untrained_bundle,
    load_bundle,
    read_bundle_config,
    save_bundle,
)
from hipfuse.inference.model.config import (
    BundleConfig,
    FusionKind,
    IntendedUse,
    ModelPreset,
    make_bundle_config,
)
from hipfuse.inference.model.predict import HipInputs, predict
from hipfuse.inference.types import Laterality


@pytest.fixture(scope="module")
def demo_config():
    return make_bundle_config(
        ModelPreset.DEMO, name="hipfuse-test", version="0.0.1", intended_use=IntendedUse.DEMO
    )


@pytest.fixture(scope="module")
def saved_bundle(demo_config, tmp_path_factory):
    bundle = build_untrained_bundle(demo_config, seed=3)
    return save_bundle(bundle.model, demo_config, tmp_path_factory.mktemp("bundles") / "demo")


@pytest.fixture
def bundle_copy(saved_bundle, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(saved_bundle, target)
    return target


def hips():
    rng = np.random.default_rng(0)
    return [
        HipInputs(
            Laterality.RIGHT,
            rng.random((128, 128), dtype=np.float32),
            rng.normal(200.0, 400.0, (32, 64, 64)).astype(np.float32),
            None,
        ),
        HipInputs(Laterality.LEFT, rng.random((128, 128), dtype=np.float32), None, None),
    ]


def edit_json(path, change):
    data = json.loads((path / "bundle.json").read_text())
    change(data)
    (path / "bundle.json").write_text(json.dumps(data))


def set_key(*keys, value):
    def change(data):
        node = data
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return change


def flip_byte(path):
    weights = path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))


def truncate(path):
    weights = path / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])


def reshape_tensor(path):
    # A consistent checksum but a tensor of the wrong shape.
    weights = path / "weights.safetensors"
    state = load_file(str(weights))
    state["classifier.weight"] = torch.zeros(5, state["classifier.weight"].shape[1])
    save_file(state, str(weights))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    edit_json(path, set_key("weights_sha256", value=digest))


def add_tensor(path):
    weights = path / "weights.safetensors"
    state = load_file(str(weights))
    state["extra.weight"] = torch.zeros(2)
    del state["classifier.bias"]
    save_file(state, str(weights))
    edit_json(
        path, set_key("weights_sha256", value=hashlib.sha256(weights.read_bytes()).hexdigest())
    )


REJECTIONS = [
    (
        "corrupt-byte",
        flip_byte,
        "bundle_weights_checksum",
        r"weights\.safetensors has SHA-256 [0-9a-f]{64} but bundle\.json records [0-9a-f]{64}",
    ),
    (
        "truncated",
        truncate,
        "bundle_weights_checksum",
        r"weights\.safetensors has SHA-256 .* corrupt, truncated",
    ),
    (
        "format-version",
        lambda p: edit_json(p, set_key("format_version", value=2)),
        "bundle_format_version",
        "format_version 2, this hipfuse reads \\[1\\]",
    ),
    (
        "no-format-version",
        lambda p: edit_json(p, lambda d: d.pop("format_version")),
        "bundle_format_version",
        "format_version None",
    ),
    (
        "class-names",
        lambda p: edit_json(
            p, set_key("class_names", value=["normal", "osteoarthritis", "fai", "onfh"])
        ),
        "bundle_config_invalid",
        "class_names: Value error, class_names must be",
    ),
    (
        "config-shape",
        lambda p: edit_json(p, set_key("architecture", "embed_dim", value=32)),
        "bundle_tensor_mismatch",
        r"shape mismatch .*classifier\.weight \(4, 64\) != \(4, 32\)",
    ),
    (
        "tensor-shape",
        reshape_tensor,
        "bundle_tensor_mismatch",
        r"classifier\.weight \(5, 64\) != \(4, 64\)",
    ),
    (
        "tensor-names",
        add_tensor,
        "bundle_tensor_mismatch",
        r"missing: classifier\.bias; unexpected: extra\.weight",
    ),
    (
        "text-fingerprint",
        lambda p: edit_json(p, set_key("text_model", "fingerprint", value="0" * 64)),
        "bundle_text_model_fingerprint",
        "has fingerprint [0-9a-f]{64}, the bundle was trained with 0{64}",
    ),
    (
        "text-package",
        lambda p: edit_json(p, set_key("text_model", "package", value="os")),
        "bundle_config_invalid",
        "unknown text model package 'os'",
    ),
    (
        "weights-missing",
        lambda p: (p / "weights.safetensors").unlink(),
        "bundle_file_missing",
        "lacks weights.safetensors",
    ),
    (
        "config-missing",
        lambda p: (p / "bundle.json").unlink(),
        "bundle_file_missing",
        "lacks bundle.json",
    ),
    (
        "not-json",
        lambda p: (p / "bundle.json").write_text("{ not json"),
        "bundle_config_invalid",
        "is not valid JSON",
    ),
    (
        "bad-keys",
        lambda p: edit_json(
            p,
            lambda d: d.update(
                intended_use="marketing", architecture={**d["architecture"], "dropout": 2.0}
            ),
        ),
        "bundle_config_invalid",
        r"intended_use: Input should be 'demo', 'research' or 'clinical'; "
        r"architecture\.dropout: Input should be less than 1",
    ),
    (
        "unknown-key",
        lambda p: edit_json(p, set_key("architecture", "embed_dims", value=64)),
        "bundle_config_invalid",
        r"architecture\.embed_dims: Extra inputs are not permitted",
    ),
]


@pytest.mark.parametrize(
    ("damage", "code", "match"),
    [case[1:] for case in REJECTIONS],
    ids=[case[0] for case in REJECTIONS],
)
def test_load_rejects(bundle_copy, damage, code, match):
    damage(bundle_copy)
    with pytest.raises(BundleError, match=match) as caught:
        load_bundle(bundle_copy)
    assert caught.value.code == code


def test_round_trip_identical_outputs(demo_config, saved_bundle):
    original = build_untrained_bundle(demo_config, seed=3)
    loaded = load_bundle(saved_bundle)
    before = predict(original, hips())
    after = predict(loaded, hips())
    for first, second in zip(before, after, strict=True):
        assert first.probabilities == second.probabilities
        assert first.attention == second.attention
        assert np.array_equal(first.radiograph_cam, second.radiograph_cam)
    assert np.array_equal(before[0].ct_cam, after[0].ct_cam)
    assert loaded.device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert not loaded.model.training


def test_saved_config_records_checksum(demo_config, saved_bundle):
    config = read_bundle_config(saved_bundle)
    digest = hashlib.sha256((saved_bundle / "weights.safetensors").read_bytes()).hexdigest()
    assert config.weights_sha256 == digest
    assert config.created is not None
    assert config.model_dump(exclude={"weights_sha256", "created"}) == demo_config.model_dump(
        exclude={"weights_sha256", "created"}
    )


def test_temperature_saved_with_weights(demo_config, tmp_path):
    bundle = build_untrained_bundle(demo_config, seed=0)
    bundle.model.set_temperature(1.7)
    loaded = load_bundle(save_bundle(bundle.model, demo_config, tmp_path / "calibrated"))
    assert loaded.model.temperature.item() == pytest.approx(1.7)


def test_save_refuses_existing_folder(demo_config, saved_bundle):
    bundle = build_untrained_bundle(demo_config, seed=0)
    with pytest.raises(
        BundleError, match="already exists: choose another folder or pass overwrite=True"
    ):
        save_bundle(bundle.model, demo_config, saved_bundle)


def test_save_overwrite_replaces(demo_config, bundle_copy):
    bundle = build_untrained_bundle(demo_config, seed=9)
    before = (bundle_copy / "weights.safetensors").read_bytes()
    save_bundle(bundle.model, demo_config, bundle_copy, overwrite=True)
    assert (bundle_copy / "weights.safetensors").read_bytes() != before
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == ["copy"]
    load_bundle(bundle_copy)


def test_save_refuses_mismatched_model(demo_config, tmp_path):
    other = demo_config.model_copy(
        update={"architecture": demo_config.architecture.model_copy(update={"embed_dim": 32})}
    )
    bundle = build_untrained_bundle(other, seed=0)
    with pytest.raises(BundleError, match="the model being saved does not match"):
        save_bundle(bundle.model, demo_config, tmp_path / "bad")
    assert list(tmp_path.iterdir()) == []


def test_seeded_builds_reproducible(demo_config):
    first = build_untrained_bundle(demo_config, seed=5).model.state_dict()
    second = build_untrained_bundle(demo_config, seed=5).model.state_dict()
    third = build_untrained_bundle(demo_config, seed=6).model.state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not torch.equal(first["classifier.weight"], third["classifier.weight"])


def test_presets_match_study():
    config = make_bundle_config(
        ModelPreset.DEFAULT, name="x", version="1", intended_use=IntendedUse.RESEARCH
    )
    architecture = config.architecture
    assert (architecture.radiograph.depth, architecture.radiograph.width) == (50, 64)
    assert (architecture.ct.depth, architecture.ct.width) == (50, 64)
    assert architecture.embed_dim == 256
    assert architecture.fusion is FusionKind.ATTENTION
    assert architecture.conv1_stride == 2
    radiograph = config.preprocessing.radiograph
    assert (radiograph.crop_px, radiograph.crop_mm) == (224, 140.0)
    ct = config.preprocessing.ct
    assert ct.crop_shape == (64, 128, 128)
    assert ct.spacing_mm == (1.5, 1.0, 1.0)
    assert config.class_names == [
        "normal",
        "osteoarthritis",
        "osteonecrosis_of_femoral_head",
        "femoroacetabular_impingement",
    ]


def test_demo_preset_small(demo_config):
    assert demo_config.architecture.radiograph.depth == 10
    assert demo_config.preprocessing.radiograph.crop_px == 128
    assert demo_config.preprocessing.ct.crop_shape == (32, 64, 64)
    assert demo_config.preprocessing.ct.spacing_mm == (3.0, 2.0, 2.0)
    parameters = sum(p.numel() for p in build_untrained_bundle(demo_config).model.parameters())
    assert parameters < 2_000_000


@pytest.mark.parametrize(
    ("update", "match"),
    [
        ({"format_version": 7}, "unsupported bundle format_version 7"),
        (
            {"text_model": {"package": None, "path": None, "fingerprint": "0" * 64}},
            "set exactly one of",
        ),
        ({"preprocessing": {"ct": {"hu_window": (100, -100)}}}, "low < high"),
        ({"preprocessing": {"ct": {"crop_shape": (4, 64, 64)}}}, "at least 8 voxels"),
    ],
    ids=["format-version", "text-source", "hu-window", "ct-shape"],
)
def test_config_validation(demo_config, update, match):
    data = demo_config.model_dump(mode="json")
    data.update(update)
    with pytest.raises(ValueError, match=match):
        BundleConfig.model_validate(data)
