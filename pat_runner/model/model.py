"""The Pretrained Actigraphy Transformer (PAT) encoder and its fine-tuned classifier head in PyTorch.

A numerical port of the Keras network of the Dartmouth code (Ruan et al., arXiv 2411.15240;
github.com/njacobsonlab/Pretrained-Actigraphy-Transformer, `Pretraining/PAT_Pretraining.ipynb` for the
encoder, `Fine-tuning/PAT_finetuning.ipynb` for the head):

- a week of minutes `(B, T)` is cut into patches `(B, T/p, p)` and embedded by `Dense(p → 96)`;
- fixed sinusoidal positions `concat(sin(pos·div), cos(pos·div))` are added (sin block, then cos block);
- each encoder block is post-norm: `x = LN(x + MHA(x, x))`, `x = LN(x + FF(x))` with LayerNorm eps 1e-6
  and Keras `MultiHeadAttention(key_dim=96)` per head, scores scaled by `1/sqrt(key_dim)`;
- the classifier head is global average pooling → dropout → `Dense(96 → 128, relu)` → `Dense(128 → 1)`
  → sigmoid.

Dropout only acts in training; this module serves inference, so it has no dropout layers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, overload

import torch
import torch.nn.functional as F
from torch import nn

from pat_runner.model import PAT_SIZES, WEEK_MINUTES


class MissingHeadError(RuntimeError):
    """A classifier probability was asked of a PAT without a fine-tuned head (an encoder-only file)."""


@dataclass(frozen=True)
class PATConfig:
    """Hyper-parameters of one PAT; the defaults are the published ones for every size."""

    patch_size: int
    num_layers: int
    num_heads: int
    embed_dim: int = 96
    key_dim: int = 96
    ff_dim: int = 256
    ln_eps: float = 1e-6
    has_head: bool = False
    head_hidden: int = 128

    def __post_init__(self) -> None:
        for name in (
            "patch_size",
            "num_layers",
            "num_heads",
            "embed_dim",
            "key_dim",
            "ff_dim",
            "head_hidden",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"PATConfig.{name} must be positive, got {getattr(self, name)}")
        if self.embed_dim % 2:
            raise ValueError(f"PATConfig.embed_dim must be even (sin|cos halves), got {self.embed_dim}")

    @classmethod
    def for_size(cls, size: str, *, has_head: bool = False) -> PATConfig:
        """The configuration of PAT-S, PAT-M or PAT-L."""
        try:
            patch_size, num_layers, num_heads = PAT_SIZES[size.upper()]
        except KeyError:
            raise ValueError(f"unknown PAT size {size!r}; expected one of {', '.join(PAT_SIZES)}") from None
        return cls(patch_size=patch_size, num_layers=num_layers, num_heads=num_heads, has_head=has_head)

    @property
    def size(self) -> str:
        """ "S", "M" or "L" for the published architectures, "custom" for any other."""
        published = (
            self.embed_dim == 96 and self.key_dim == 96 and self.ff_dim == 256 and self.head_hidden == 128
        )
        for name, shape in PAT_SIZES.items():
            if published and shape == (self.patch_size, self.num_layers, self.num_heads):
                return name
        return "custom"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PATConfig:
        return cls(**data)


def _eigen_exp_float32(x: torch.Tensor) -> torch.Tensor:
    """`exp` as TensorFlow's CPU kernel computes it in float32: Eigen's `pexp_float`.

    Eigen (`Eigen/src/Core/arch/Default/GenericPacketMathFunctions.h`) reduces `x = m·ln2 + r` with the
    Cephes two-part ln2 and evaluates a degree-6 minimax polynomial for `exp(r)`. It differs from a
    correctly rounded `exp` by an ulp for some inputs, which PAT's late positions (angle = position ×
    frequency, up to ~1,100) amplify to ~6e-5; evaluating the same steps in float32 (no fused
    multiply-add) reproduces TensorFlow's table to 1 ulp. Valid for the small negative arguments here.
    """
    m = torch.floor(x * 1.44269504088896341 + 0.5)
    r = x + m * -0.693359375
    r = r + m * 2.12194440e-4
    r2 = r * r
    p_even = r2 * 1.37449637986719608306884765625e-3 + 4.166965186595916748046875e-2
    p_odd = r2 * 8.36894474923610687255859375e-3 + 0.16666518151760101318359375
    p_even = r2 * p_even + 0.49999988079071044921875
    y = r * p_odd + p_even
    y = r2 * y + (r + 1.0)
    return torch.ldexp(y, m)


def sinusoidal_positions(
    num_patches: int, embed_dim: int, device: torch.device | None = None
) -> torch.Tensor:
    """`(num_patches, embed_dim)` float32 table of `get_positional_embeddings` in PAT_Pretraining.ipynb.

    Every step is float32 in TensorFlow's order (log, negate, divide, multiply, exp, multiply, sin|cos),
    with TensorFlow's `exp` (see `_eigen_exp_float32`), so the table matches the Keras one to ~1e-7.
    """
    position = torch.arange(num_patches, dtype=torch.float32, device=device)[:, None]
    log_base = torch.log(torch.tensor(10000.0, dtype=torch.float32, device=device))
    frequency_scale = -log_base / embed_dim
    exponents = torch.arange(0, embed_dim, 2, dtype=torch.float32, device=device) * frequency_scale
    angles = position * _eigen_exp_float32(exponents)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def stepped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, step_bytes: int
) -> torch.Tensor:
    """`softmax(q·kᵀ/√d)·v` per head for projections `(B, P, heads·d)` in head-major order, one head and
    a block of queries at a time; returns the merged context `(B, P, heads·d)`.

    The same arithmetic as `scaled_dot_product_attention` (no mask, no dropout), done in steps whose
    scores, `queries × P` elements of one head, fit in `step_bytes`, so each step's scores are still in
    the cache when the softmax and the second matmul read them. On a CPU without AMX this made bf16
    PAT-S, -M and -L ~1.5× faster than with SDPA's kernel (docs/performance.md); torch-bf16 measures
    it against SDPA before using it.
    """
    batch, length, inner = q.shape
    depth = inner // num_heads
    q = q * (1.0 / math.sqrt(depth))
    out = torch.empty_like(v)
    rows = min(length, max(1, step_bytes // (length * q.element_size())))
    rows = math.ceil(length / math.ceil(length / rows))
    # One head is a column slice of the projections: a 2-D strided view that the matmuls read and
    # write in place (a leading dimension of heads·d), so no head-major copy is ever made.
    for week in range(batch):
        for head in range(num_heads):
            columns = slice(head * depth, (head + 1) * depth)
            keys_t, values = k[week, :, columns].t(), v[week, :, columns]
            for row in range(0, length, rows):
                block = slice(row, row + rows)
                scores = torch.mm(q[week, block, columns], keys_t)
                torch.mm(torch.softmax(scores, dim=-1), values, out=out[week, block, columns])
    return out


class MultiHeadSelfAttention(nn.Module):
    """Keras `MultiHeadAttention(num_heads, key_dim)` applied as self-attention, without masking.

    Projections are stored flattened: the Keras kernel `(embed, heads, key_dim)` becomes a Linear with
    `heads·key_dim` outputs in head-major order, the output kernel `(heads, key_dim, embed)` a Linear
    with `heads·key_dim` inputs in the same order. `step_bytes`, when set, computes the attention with
    `stepped_attention` instead of `scaled_dot_product_attention`.
    """

    def __init__(self, embed_dim: int, num_heads: int, key_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.step_bytes: int | None = None
        inner = num_heads * key_dim
        self.query = nn.Linear(embed_dim, inner)
        self.key = nn.Linear(embed_dim, inner)
        self.value = nn.Linear(embed_dim, inner)
        self.output = nn.Linear(inner, embed_dim)

    def _heads(self, projected: torch.Tensor) -> torch.Tensor:
        batch, length, _ = projected.shape
        return projected.view(batch, length, self.num_heads, self.key_dim).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, *, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(B, P, E)` → `(B, P, E)` and, when asked, the attention weights `(B, heads, P, P)`."""
        if self.step_bytes is not None and not return_attention:
            context = stepped_attention(
                self.query(x), self.key(x), self.value(x), self.num_heads, self.step_bytes
            )
            return self.output(context), None
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        if return_attention:
            # Keras scales the query before the dot product (MultiHeadAttention._compute_attention).
            scores = torch.matmul(q * (1.0 / math.sqrt(self.key_dim)), k.transpose(-2, -1))
            weights = torch.softmax(scores, dim=-1)
            context = torch.matmul(weights, v)
        else:
            weights = None
            context = F.scaled_dot_product_attention(q, k, v)
        batch, _, length, _ = context.shape
        merged = context.transpose(1, 2).reshape(batch, length, self.num_heads * self.key_dim)
        return self.output(merged), weights


class EncoderBlock(nn.Module):
    """`TransformerBlock` of PAT_Pretraining.ipynb: post-norm attention and feed-forward sub-layers."""

    def __init__(self, config: PATConfig) -> None:
        super().__init__()
        self.attention = MultiHeadSelfAttention(config.embed_dim, config.num_heads, config.key_dim)
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=config.ln_eps)
        self.ff1 = nn.Linear(config.embed_dim, config.ff_dim)
        self.ff2 = nn.Linear(config.ff_dim, config.embed_dim)
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=config.ln_eps)

    def forward(
        self, x: torch.Tensor, *, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attention(x, return_attention=return_attention)
        x = self.norm1(x + attended)
        x = self.norm2(x + self.ff2(F.relu(self.ff1(x))))
        return x, weights


class ClassifierHead(nn.Module):
    """The fine-tuning head of PAT_finetuning.ipynb (`dense_128`, `output`), on per-patch embeddings."""

    def __init__(self, config: PATConfig) -> None:
        super().__init__()
        self.dense_128 = nn.Linear(config.embed_dim, config.head_hidden)
        self.output = nn.Linear(config.head_hidden, 1)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """`(B, P, E)` → sigmoid probability `(B, 1)`."""
        pooled = embeddings.mean(dim=1)
        return torch.sigmoid(self.output(F.relu(self.dense_128(pooled))))


class PAT(nn.Module):
    """PAT encoder, with the fine-tuned classifier head when `config.has_head`."""

    def __init__(self, config: PATConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embedding = nn.Linear(config.patch_size, config.embed_dim)
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.num_layers))
        self.head = ClassifierHead(config) if config.has_head else None
        self._positions: torch.Tensor | None = None

    def num_patches(self, length: int) -> int:
        """Patches in an input of `length` minutes; a `ValueError` unless it is a positive multiple of p."""
        patch = self.config.patch_size
        if length < patch or length % patch:
            raise ValueError(
                f"input length {length} is not a positive multiple of the patch size {patch} "
                f"(a week is {WEEK_MINUTES} minutes)"
            )
        return length // patch

    def _position_table(self, num_patches: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        table = self._positions
        if table is None or table.shape[0] < num_patches or table.device != device or table.dtype != dtype:
            table = sinusoidal_positions(
                max(num_patches, WEEK_MINUTES // self.config.patch_size), self.config.embed_dim, device
            ).to(dtype)
            self._positions = table
        return table[:num_patches]

    @overload
    def encode(self, x: torch.Tensor, *, return_attention: Literal[False] = False) -> torch.Tensor: ...

    @overload
    def encode(
        self, x: torch.Tensor, *, return_attention: Literal[True]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def encode(
        self, x: torch.Tensor, *, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """`(B, T)` standardized minutes → per-patch embeddings `(B, T/p, embed_dim)`.

        With `return_attention=True` also the last block's attention weights averaged over heads,
        `(B, T/p, T/p)` (the explainability map of `Model Explainability/PAT_Explainability.ipynb`).
        """
        if x.dim() != 2:
            raise ValueError(f"PAT expects a (batch, minutes) tensor, got shape {tuple(x.shape)}")
        num_patches = self.num_patches(x.shape[1])
        weight = self.patch_embedding.weight
        patches = x.to(device=weight.device, dtype=weight.dtype).reshape(x.shape[0], num_patches, -1)
        hidden = self.patch_embedding(patches) + self._position_table(
            num_patches, weight.device, weight.dtype
        )
        *early_blocks, last_block = self.blocks
        for block in early_blocks:
            hidden, _ = block(hidden)
        hidden, attention = last_block(hidden, return_attention=return_attention)
        if attention is not None:
            return hidden, attention.mean(dim=1)
        return hidden

    def use_stepped_attention(self, step_bytes: int | None) -> None:
        """Every block computes attention with `stepped_attention` in steps of `step_bytes` of scores, or
        with `scaled_dot_product_attention` again when None. The explicit path of
        `encode(return_attention=True)` is unchanged."""
        for block in self.blocks:
            block.attention.step_bytes = step_bytes

    def _require_head(self) -> ClassifierHead:
        if self.head is None:
            raise MissingHeadError(
                "this PAT has no fine-tuned classifier head (it was loaded from an encoder-only weights "
                "file); load a fine-tuned model file to get probabilities"
            )
        return self.head

    def head_proba(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Classifier probability `(B, 1)` from encoder output `(B, P, embed_dim)`."""
        return self._require_head()(embeddings)

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, T)` standardized minutes → the fine-tuned head's sigmoid probability `(B, 1)`."""
        head = self._require_head()
        return head(self.encode(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)

    def parameter_count(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters())


def build_pat(
    config: PATConfig, state_dict: dict[str, torch.Tensor], *, device: str | torch.device = "cpu"
) -> PAT:
    """A PAT in eval mode on `device` holding `state_dict` (every tensor required, none extra)."""
    model = PAT(config)
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval()
