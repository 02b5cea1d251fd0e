"""Token-sequence encoder: embeddings, then a BiLSTM or a Transformer encoder.

- ``kind="bilstm"``: a bidirectional LSTM (Hochreiter & Schmidhuber, 1997, "Long Short-Term
  Memory", Neural Computation; bidirectional as in Graves & Schmidhuber, 2005, "Framewise
  Phoneme Classification with Bidirectional LSTM", Neural Networks). Padding is handled with
  packed sequences, so the recurrence never reads a padded position.
- ``kind="transformer"``: a Transformer encoder (Vaswani et al., 2017, "Attention Is All You
  Need", NeurIPS) on token embeddings plus the paper's sinusoidal position encodings.
  Padded keys are excluded from attention (a key-padding mask, merged with the causal mask
  into one boolean attention mask); with ``causal=True`` position t also attends only to
  positions ≤ t (a decoder-style mask). Deviation: the layers
  are pre-norm (LayerNorm before attention and feed-forward, Xiong et al., 2020), which trains
  more stably than the paper's post-norm without warm-up, and a final LayerNorm closes them.

Inputs are ``(B, L)`` int64 token ids, or a mapping with ``tokens`` and optionally ``lengths``
``(B,)`` (the first ``lengths[b]`` tokens are real) or ``mask`` ``(B, L)`` (true or 1 at real
tokens, the Hugging Face ``attention_mask`` convention). Without either, token id 0 is
padding. The output is per-token features ``(B, L, out_features)``, exactly zero at padded
positions; a position's features never depend on the content of padded positions, nor on how
much padding follows. ``pool="mean"`` instead returns the mean over real tokens ``(B, D)``,
for sequence-level tasks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.nn.encoders import ENCODERS

PAD_INDEX = 0


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> Tensor:
    """PE(p, 2i) = sin(p / 10000^{2i/d}), PE(p, 2i+1) = cos(p / 10000^{2i/d}); ``(L, d)``."""
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(position * freq)
    pe[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return pe


@ENCODERS.register("token")
class TokenEncoder(nn.Module):
    """Embeddings + BiLSTM or Transformer encoder over token ids; padding index 0.

    Args:
        vocab_size: number of token ids (id 0 is padding; its embedding is zero).
        embedding_dim: size of the token embeddings (the Transformer's model width).
        kind: ``"bilstm"`` or ``"transformer"``.
        hidden: LSTM hidden size per direction (output 2·hidden) or Transformer
            feed-forward size.
        num_layers: stacked LSTM or Transformer layers.
        num_heads: attention heads (Transformer); must divide ``embedding_dim``.
        dropout: dropout of embeddings and between layers.
        causal: Transformer only: position t attends to positions ≤ t.
        pool: ``"none"`` for per-token outputs ``(B, L, D)``, ``"mean"`` for ``(B, D)``.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 128,
        kind: Literal["bilstm", "transformer"] = "bilstm",
        hidden: int = 128,
        num_layers: int = 1,
        num_heads: int = 4,
        dropout: float = 0.1,
        causal: bool = False,
        pool: Literal["none", "mean"] = "none",
    ) -> None:
        super().__init__()
        where = "encoder 'token'"
        if vocab_size < 2:
            raise ConfigError(
                f"{where}: option 'vocab_size' must be ≥ 2 (id 0 is padding), got {vocab_size}"
            )
        for option, value in (
            ("embedding_dim", embedding_dim),
            ("hidden", hidden),
            ("num_layers", num_layers),
        ):
            if value < 1:
                raise ConfigError(f"{where}: option '{option}' must be ≥ 1, got {value}")
        if kind not in ("bilstm", "transformer"):
            raise ConfigError(
                f"{where}: option 'kind' must be 'bilstm' or 'transformer', got {kind!r}"
            )
        if pool not in ("none", "mean"):
            raise ConfigError(f"{where}: option 'pool' must be 'none' or 'mean', got {pool!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"{where}: option 'dropout' must be in [0, 1), got {dropout}")
        if causal and kind != "transformer":
            raise ConfigError(
                f"{where}: option 'causal' needs kind 'transformer' (a BiLSTM reads both ways)"
            )
        if kind == "transformer" and (num_heads < 1 or embedding_dim % num_heads):
            raise ConfigError(
                f"{where}: option 'num_heads' must divide embedding_dim {embedding_dim}, "
                f"got {num_heads}"
            )
        if kind == "transformer" and embedding_dim % 2:
            raise ConfigError(
                f"{where}: option 'embedding_dim' must be even for sinusoidal positions, "
                f"got {embedding_dim}"
            )
        self.vocab_size = vocab_size
        self.kind = kind
        self.num_heads = num_heads
        self.causal = causal
        self.pool = pool
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_INDEX)
        self.dropout = nn.Dropout(dropout)
        if kind == "bilstm":
            self.lstm = nn.LSTM(
                embedding_dim,
                hidden,
                num_layers=num_layers,
                batch_first=True,
                bidirectional=True,
                dropout=dropout if num_layers > 1 else 0.0,
            )
            self.out_features = 2 * hidden
        else:
            layer = nn.TransformerEncoderLayer(
                embedding_dim,
                num_heads,
                dim_feedforward=hidden,
                dropout=dropout,
                batch_first=True,
                norm_first=True,
            )
            self.transformer = nn.TransformerEncoder(
                layer, num_layers, norm=nn.LayerNorm(embedding_dim), enable_nested_tensor=False
            )
            self.out_features = embedding_dim

    # ------------------------------------------------------------------ inputs

    def token_mask(self, inputs: Tensor | Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Token ids ``(B, L)`` and the boolean mask of real tokens, checked."""
        where = "encoder 'token'"
        if isinstance(inputs, Mapping):
            if "tokens" not in inputs:
                raise TaskDataError(
                    f"{where}: an input mapping needs 'tokens', got {sorted(inputs)}"
                )
            tokens = inputs["tokens"]
        else:
            tokens = inputs
        if not isinstance(tokens, Tensor) or tokens.dim() != 2:
            shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise TaskDataError(f"{where}: tokens must be a (B, L) tensor, got {shape}")
        if tokens.is_floating_point() or tokens.dtype == torch.bool:
            raise TaskDataError(f"{where}: tokens dtype {tokens.dtype} is not an integer id")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            bad = int(tokens.min()) if int(tokens.min()) < 0 else int(tokens.max())
            raise TaskDataError(f"{where}: token id {bad} is out of range [0, {self.vocab_size})")
        batch, length = tokens.shape
        mask_in = inputs.get("mask") if isinstance(inputs, Mapping) else None
        lengths = inputs.get("lengths") if isinstance(inputs, Mapping) else None
        if mask_in is not None:
            if tuple(mask_in.shape) != (batch, length):
                raise TaskDataError(
                    f"{where}: mask shape {tuple(mask_in.shape)} does not fit tokens "
                    f"{(batch, length)}"
                )
            mask = mask_in.to(device=tokens.device).bool()
        elif lengths is not None:
            lengths = torch.as_tensor(lengths, device=tokens.device)
            if lengths.shape != (batch,) or bool((lengths < 0).any() | (lengths > length).any()):
                raise TaskDataError(
                    f"{where}: lengths must be (B,) = ({batch},) values in [0, {length}], "
                    f"got {lengths.tolist()}"
                )
            mask = torch.arange(length, device=tokens.device) < lengths.unsqueeze(1)
        else:
            mask = tokens != PAD_INDEX
        return tokens.long(), mask

    # ------------------------------------------------------------------ forward

    def forward(self, inputs: Tensor | Mapping[str, Tensor]) -> Tensor:
        tokens, mask = self.token_mask(inputs)
        x = self.embedding(tokens)
        out = self._lstm(x, mask) if self.kind == "bilstm" else self._transformer(x, mask)
        out = torch.where(mask.unsqueeze(-1), out, torch.zeros_like(out))
        if self.pool == "mean":
            count = mask.sum(dim=1, keepdim=True).clamp_min(1).to(out.dtype)
            return out.sum(dim=1) / count
        return out

    def _lstm(self, x: Tensor, mask: Tensor) -> Tensor:
        lengths = mask.sum(dim=1)
        prefix = torch.arange(mask.shape[1], device=mask.device) < lengths.unsqueeze(1)
        if not bool((prefix == mask).all()):
            raise TaskDataError(
                "encoder 'token': with kind 'bilstm' the real tokens must come first "
                "(right padding); the mask has a gap"
            )
        x = self.dropout(x)
        # pack_padded_sequence rejects empty sequences: run them on one (masked-out) step.
        packed = pack_padded_sequence(
            x, lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out

    def _transformer(self, x: Tensor, mask: Tensor) -> Tensor:
        batch, length = mask.shape
        # the paper scales embeddings by √d_model and applies dropout to the sum with positions
        positions = sinusoidal_positions(length, x.shape[-1], x.device).to(x.dtype)
        x = self.dropout(x * math.sqrt(x.shape[-1]) + positions)
        # blocked[b, q, k]: query q of sequence b may not attend to key k. Padded keys are
        # blocked for every query (the key_padding_mask of the paper's implementation), later
        # keys too when causal. A padded query sees only itself, so no softmax row is empty
        # (an empty row is NaN, and NaN values leak through zero weights); its output is
        # zeroed afterwards.
        blocked = ~mask.unsqueeze(1).expand(batch, length, length)
        if self.causal:
            later = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
            blocked = blocked | later
        eye = torch.eye(length, dtype=torch.bool, device=x.device)
        blocked = blocked & ~(eye & ~mask.unsqueeze(2))
        attn_mask = blocked.repeat_interleave(self.num_heads, dim=0)
        return self.transformer(x, mask=attn_mask)


__all__ = ["PAD_INDEX", "TokenEncoder", "sinusoidal_positions"]
