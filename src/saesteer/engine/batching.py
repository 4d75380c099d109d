"""How many rows the fast engine runs at once, and in what blocks, from the memory a chunk needs."""

from __future__ import annotations

import psutil
import torch

from saesteer.engine.kernels import Decoder

CPU_ROW_BLOCK = 256
"""Rows per block for the widest matmuls (unembedding, SAE encode) on CPU: outputs stay in the L3 cache."""
CPU_MAX_BATCH = 1024
CPU_MEMORY_BUDGET = 2 << 30
"""Working memory (cache, activations) a CPU chunk may take, at most a quarter of what is free."""
CUDA_MAX_BATCH = 4096


def row_block(device: torch.device) -> int:
    """Rows per block for the wide matmuls on ``device`` (unblocked on GPU)."""
    return CPU_ROW_BLOCK if device.type == "cpu" else 1 << 30


def available_memory(device: torch.device) -> int:
    """Bytes free for a chunk's working memory on ``device``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


def choose_batch_size(dec: Decoder, n_rows: int, prompt_width: int, max_new_tokens: int, *,
                      sae_width: int = 0, memory: int | None = None) -> int:
    """Rows per chunk: as many as fit a share of free memory (cache + activations), capped where a bigger
    batch stops paying (CPU: matmuls are already at their peak; CUDA: large batches amortise launches)."""
    max_len = prompt_width + max(max_new_tokens, 1)
    elt = torch.empty((), dtype=dec.dtype).element_size()
    per_row = dec.cache_bytes_per_row(max_len)
    per_row += prompt_width * (4 * dec.d_model + dec.d_mlp) * 4 * 3  # prefill activations, float32, headroom
    per_row += dec.n_heads * prompt_width * prompt_width * 4 * 3  # prefill attention scores and probabilities
    per_row += 8 * dec.d_model * 4
    cuda = dec.device.type == "cuda"
    if cuda:  # the wide outputs (logits, SAE pre-activations) are not blocked on GPU
        per_row += (dec.vocab_size * 4 + sae_width * elt) * 2
    budget = (memory if memory is not None else available_memory(dec.device)) // (2 if cuda else 4)
    if not cuda:
        budget = min(budget, CPU_MEMORY_BUDGET)
    fixed = 0 if cuda else CPU_ROW_BLOCK * (dec.vocab_size * 4 + sae_width * 4) * 2
    cap = CUDA_MAX_BATCH if cuda else CPU_MAX_BATCH
    fit = max(1, (budget - fixed) // max(per_row, 1))
    return int(max(1, min(n_rows, cap, fit)))
