"""A real-sentence input workload: fixed English sentences through the model's own tokenizer.

Random token ids are enough to time a forward, but not to judge an approximation's accuracy on a
trained model (MiniLM's sentence embedding, SmolLM2's next token): those need the inputs the model was
trained on. A model yaml selects this workload with `inputs: sentences` (default `random`).
"""
from __future__ import annotations

from typing import Any

import torch

INPUTS = ("random", "sentences")
SENTENCES = (
    "The capital of France is Paris.",
    "A man is playing a guitar on the street.",
    "The weather today is sunny with a light breeze.",
    "She finished reading the novel late last night.",
    "Secure inference protects both the model and the data.",
    "The train to Berlin leaves at seven in the morning.",
    "Children were laughing in the park after school.",
    "He ordered a coffee and a croissant at the cafe.",
    "The stock market fell sharply on Monday.",
    "Photosynthesis converts sunlight into chemical energy.",
    "My grandmother grows tomatoes in her garden.",
    "The committee approved the new budget yesterday.",
    "Heavy rain caused flooding in several villages.",
    "The museum opens a new exhibition next week.",
    "A dog chased the ball across the wet grass.",
    "The software update fixed a serious security bug.",
    "They walked along the beach at sunset.",
    "The recipe calls for two cups of flour.",
    "Our team won the championship after extra time.",
    "The doctor advised him to get more sleep.",
    "Mountains in the north are covered with snow.",
    "The library extended its opening hours for students.",
    "An old bridge connects the two halves of the town.",
    "The concert was cancelled because of the storm.",
    "Scientists discovered a new species of frog.",
    "Please send me the report by Friday afternoon.",
    "The pilot announced a short delay before takeoff.",
    "Fresh bread smells wonderful in the morning.",
    "The river flows slowly through the green valley.",
    "Electric cars are becoming more affordable.",
    "The teacher explained the theorem with a drawing.",
    "We planted three apple trees behind the house.",
)


def sentence_inputs(tokenizer: Any, batch: int, seq_len: int, seed: int) -> dict[str, torch.Tensor]:
    """`batch` sentences from SENTENCES (starting at `seed`, wrapping), right-padded or cut to `seq_len`."""
    if batch < 1 or seq_len < 1:
        raise ValueError(f"batch={batch} and seq_len={seq_len} must be >= 1")
    if tokenizer.pad_token is None:  # causal LMs (SmolLM2) ship none; padded positions are masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    texts = [SENTENCES[(seed + i) % len(SENTENCES)] for i in range(batch)]
    enc = tokenizer(texts, return_tensors="pt", padding="max_length", truncation=True, max_length=seq_len,
                    padding_side="right")
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
