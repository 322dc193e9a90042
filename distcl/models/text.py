"""Text encoder: a small Transformer over byte tokens, mean-pooled into one sentence embedding.

Texts arrive as byte-token ids, int64 `B x L`: id = byte value + 1 (1..256), 0 = padding, each
text left-aligned (its padding at the end). The encoder maps them to `B x feat_dim` features,
the same contract as the image encoders in encoders.py, so `SimCLR(encoder, cfg)` in methods.py
puts the projection head and the loss on top unchanged.

The block is the pre-norm Transformer encoder (Vaswani et al. 2017; pre-norm as in GPT-2,
Radford et al. 2019) from torch.nn, with learned absolute positions. The sentence embedding is
the mean over the non-padding tokens of the final layer (Reimers & Gurevych 2019, SBERT, found
mean pooling the best of their pooling choices). Dropout is on by default because SimCSE
(Gao et al. 2021) makes its two views of a sentence by passing it twice through the encoder in
train mode: the dropout masks are the only augmentation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distcl.models.fp32 import fp32
from distcl.runtime.precision import fp32_embeddings

VOCAB = 257  # 256 byte values + 1, id 0 is padding


class TextEncoder(nn.Module):
    """Byte-token Transformer encoder: `B x L` int64 ids -> `B x feat_dim` float32 features.

    vocab: number of token ids (257: padding + 256 bytes).
    width: model width d, also `feat_dim`; 128 with 2 layers is ~0.45 M parameters, sized for
        2 CPU cores.
    layers: Transformer blocks.
    heads: attention heads (width must be divisible by heads).
    ff_mult: the feed-forward hidden size is ff_mult * width (4 in Vaswani et al. 2017).
    max_len: longest text in tokens (the learned position table has this many rows).
    dropout: dropout in attention, feed-forward and on the input embeddings (SimCSE's views).

    Padding is masked out of attention and pooling, so appending padding to a text does not
    change its embedding. A row that is all padding gets the zero vector (not NaN).
    """

    def __init__(
        self,
        vocab: int = VOCAB,
        width: int = 128,
        layers: int = 2,
        heads: int = 4,
        ff_mult: int = 4,
        max_len: int = 128,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.token = nn.Embedding(vocab, width, padding_idx=0)
        self.position = nn.Parameter(torch.zeros(max_len, width))  # max_len x d
        nn.init.normal_(self.token.weight, std=0.02)  # GPT-2's initialisation
        nn.init.normal_(self.position, std=0.02)
        with torch.no_grad():
            self.token.weight[0].zero_()
        self.drop = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(
            width,
            heads,
            ff_mult * width,
            dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # nested tensors are off: torch does not use them with norm_first, and says so each time.
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)  # pre-norm blocks leave the residual stream unnormalised
        self.max_len = max_len
        self.feat_dim = width

    @property
    def out_dim(self) -> int:
        """The size of the features, the same as `feat_dim` (the name the image encoders use)."""
        return self.feat_dim

    def forward(self, ids: Tensor) -> Tensor:
        if ids.ndim != 2:
            raise ValueError(f"text ids must be B x L int64 tokens, got shape {tuple(ids.shape)}")
        length = ids.shape[1]
        if length > self.max_len:
            raise ValueError(
                f"texts of {length} tokens exceed the text encoder's max_len={self.max_len} "
                f"(truncate the texts to {self.max_len} tokens or build it with a larger max_len)"
            )
        keep = ids != 0  # B x L, True on real tokens
        # A row with no token would mask every key and softmax would give NaN: let such rows
        # attend to their first (padding) position. Pooling still ignores it, so they pool to 0.
        attend = keep.clone()
        attend[:, 0] |= ~keep.any(dim=1)
        x = self.drop(self.token(ids) + self.position[:length])  # B x L x d
        h = self.blocks(x, src_key_padding_mask=~attend)  # B x L x d
        with fp32(h):  # the sum over up to max_len tokens keeps fp32's bits under bf16 autocast
            h = self.norm(fp32_embeddings(h))  # bf16 -> fp32; fp32 and fp64 stay
            total = torch.where(keep.unsqueeze(-1), h, 0.0).sum(dim=1)  # B x d
            count = keep.sum(dim=1, keepdim=True).to(h.dtype).clamp_min(1.0)  # B x 1
            return total / count  # B x d


def build_text_encoder(
    width: int = 128,
    layers: int = 2,
    heads: int = 4,
    max_len: int = 128,
    dropout: float = 0.1,
) -> TextEncoder:
    """A `TextEncoder` over byte tokens (vocab 257, feed-forward 4x width), after checking that
    its sizes fit together."""
    if width <= 0 or layers <= 0 or heads <= 0 or max_len <= 0:
        raise ValueError(
            f"text encoder sizes must be positive, got width={width}, layers={layers}, "
            f"heads={heads}, max_len={max_len}"
        )
    if width % heads:
        raise ValueError(
            f"text encoder width={width} must be divisible by heads={heads} "
            f"(e.g. width={heads * max(1, round(width / heads))})"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"text encoder dropout must be in [0, 1), got {dropout} (try 0.1)")
    return TextEncoder(width=width, layers=layers, heads=heads, max_len=max_len, dropout=dropout)
