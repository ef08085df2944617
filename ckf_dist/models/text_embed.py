"""Text embeddings of items from the LLM in use: the mean of its last hidden states over the text.

A-LLMRec's first stage needs a text embedding per item (the paper: Sentence-BERT). No separate
sentence encoder can be downloaded, so the base LLM the run trains on (frozen, without adapters)
encodes "title, description" (the title alone where the data have no description) and its last
hidden states are averaged over the text's tokens (padding excluded).

Owns: the item text and the pooling. Must not know: the alignment (``ckf_dist.cf.align``), Ray,
DeepSpeed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


@torch.no_grad()
def mean_pooled_embeddings(llm, tokenizer, texts: Sequence[str], batch_size: int = 32,
                           device: torch.device | str = "cpu") -> np.ndarray:
    """[len(texts), D] float32: the mean over each text's tokens of the LLM's last hidden states."""
    llm = llm.to(device).eval()
    decoder = llm.get_decoder()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for s in range(0, len(texts), batch_size):
        ids = tokenizer(list(texts[s : s + batch_size]), add_special_tokens=True)["input_ids"]
        width = max(1, max(len(x) for x in ids))
        batch = torch.full((len(ids), width), int(pad), dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for r, x in enumerate(ids):
            batch[r, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[r, : len(x)] = 1
        hidden = decoder(input_ids=batch.to(device), attention_mask=mask.to(device)).last_hidden_state.float()
        m = mask.to(device).unsqueeze(-1).float()
        out.append(((hidden * m).sum(1) / m.sum(1).clamp_min(1.0)).cpu().numpy())
    return np.concatenate(out, 0).astype(np.float32) if out else np.zeros((0, 0), np.float32)
