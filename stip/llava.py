"""LLaVA's device side: text embeddings, vision tower and projector, merged at the image tokens.

The cloud runs only the language model on permuted `inputs_embeds`; it never sees the image,
its features, or which vision weights produced them (they are zeroed in the cloud checkpoint).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration, LlavaModel, PreTrainedModel


class LlavaDeviceInputs(nn.Module):
    """Embeds a LLaVA prompt exactly as `LlavaModel.forward` does before its language model."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        inner = model.model if isinstance(model, LlavaForConditionalGeneration) else model
        if not isinstance(inner, LlavaModel):
            raise TypeError(f"LLaVA's device side needs a LlavaModel or LlavaForConditionalGeneration, "
                            f"got {type(model).__name__}")
        self.config = inner.config
        self.embed_tokens = inner.get_input_embeddings()
        self.vision_tower = inner.vision_tower
        self.multi_modal_projector = inner.multi_modal_projector
        self._image_features = type(inner).get_image_features  # uses vision_tower, projector, config

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings, with the projected image features scattered into the image-token rows."""
        embeds = self.embed_tokens(input_ids)
        if pixel_values is None:  # text only, or a generated token: as transformers, no image merge
            return embeds
        image_rows = torch.eq(input_ids, self.config.image_token_id)
        features = self._image_features(
            self, pixel_values=pixel_values,
            vision_feature_layer=self.config.vision_feature_layer,
            vision_feature_select_strategy=self.config.vision_feature_select_strategy,
            return_dict=True,
        ).pooler_output
        features = torch.cat(list(features), dim=0).to(embeds.dtype)
        if int(image_rows.sum()) * embeds.shape[-1] != features.numel():
            raise ValueError(f"the prompt holds {int(image_rows.sum())} image tokens but the images give "
                             f"{features.numel() // embeds.shape[-1]} feature rows; put "
                             f"{features.numel() // embeds.shape[-1]} image tokens in the prompt")
        return embeds.masked_scatter(image_rows[..., None], features)
