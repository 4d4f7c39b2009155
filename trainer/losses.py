"""Token losses on packed rows, computing logits only where there is a target, in bounded chunks.

A causal LM head over every position costs B x L x V floats; on SFT data most positions are
prompt or padding. So the backbone gives hidden states, the rows keep only positions with a
target, and the head + cross-entropy run on those, `chunk_tokens` at a time when no gradient is
needed (evaluation memory then never grows with vocabulary x dataset size). Hand-written because
transformers' `ForCausalLMLoss` always materialises the full logits.

`TokenLoss` is the module DDP wraps: calling the backbone through it keeps DDP's gradient hooks.
Models with a `final_logit_softcapping` (Gemma 2) get it applied; other logit post-processing
(e.g. a `logit_scale`) is not reproduced.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.data import IGNORE_INDEX


def _backbone_and_head(model: Any) -> tuple[nn.Module, nn.Module, float | None]:
    """The decoder stack, the LM head and the logit soft-cap of a (peft-wrapped) causal LM."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    if head is None:
        raise TypeError(f"{type(base).__name__} has no output embeddings; it is not a causal LM")
    softcap = getattr(base.config, "final_logit_softcapping", None)
    return base.get_decoder(), head, softcap


class TokenLoss(nn.Module):
    """Wraps a causal LM: forward(input_ids, position_ids, targets) -> summed next-token loss on targets.

    No attention mask is passed, so transformers builds a block-causal mask from `position_ids`
    (masking_utils.find_packed_sequence_indices) and attention never crosses documents.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.backbone, self.head, self.softcap = _backbone_and_head(model)

    def hidden(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Last hidden states [B, L, H] of the packed rows."""
        out = self.backbone(input_ids=input_ids, position_ids=position_ids, attention_mask=None, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits for a [N, H] block of hidden states."""
        logits = self.head(hidden).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Sum of cross-entropy over the positions that have a target (0-dim tensor)."""
        hidden = self.hidden(input_ids, position_ids)
        keep = targets != IGNORE_INDEX
        return F.cross_entropy(self.logits(hidden[keep]), targets[keep], reduction="sum")

    @torch.no_grad()
    def per_token(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor, chunk_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat indices into the [B, L] grid, fp32 losses) of every target, head run in chunks."""
        hidden = self.hidden(input_ids, position_ids)
        flat_index = (targets != IGNORE_INDEX).flatten().nonzero().squeeze(-1)
        flat_hidden = hidden.reshape(-1, hidden.shape[-1])
        flat_targets = targets.flatten()
        losses = torch.empty(flat_index.numel(), dtype=torch.float32, device=hidden.device)
        for start in range(0, flat_index.numel(), chunk_tokens):
            idx = flat_index[start : start + chunk_tokens]
            logits = self.logits(flat_hidden[idx])
            losses[start : start + chunk_tokens] = F.cross_entropy(logits, flat_targets[idx], reduction="none")
        return flat_index, losses
