"""model/memory.py's activation estimate (forward_plan) against hand counts of the tensors its
docstring names; the weight plan (shard_plan) is held to a hand count in tests/model/test_parallel.py."""

from __future__ import annotations

import dataclasses

import torch

from model import ModelArgs, memory

TINY = ModelArgs.from_name("tiny")  # vocab 512, dim 64, one MTP layer


def test_one_process_holds_its_logits_once_and_mtp_logits_only_with_an_mtp_block():
    T, S, V = 2 * 8, 8, 512
    one = memory.forward_plan(TINY, model_parallel=1, batch=2, seq_len=8, dtype=torch.bfloat16)
    # [T, V] bf16 logits (nothing gathered) and one float32 row for the loss, for the head and the MTP head
    assert one["logits"] == 2 * (T * V * 2 + S * V * 4)
    no_mtp = memory.forward_plan(dataclasses.replace(TINY, n_mtp_layers=0), batch=2, seq_len=8)
    assert no_mtp["logits"] == T * V * 2 + S * V * 4


def test_attention_scores_grow_with_the_square_of_the_sequence_on_a_rank():
    a = ModelArgs.from_name("671B")
    S = 4096
    f = [memory.forward_plan(a, model_parallel=8, batch=1, seq_len=n)["largest_layer"] for n in (S, 2 * S)]
    # float32 scores and probabilities [1, 128 / 8, S, S]; every other term is linear in S
    assert f[1] - 2 * f[0] == 2 * (16 * S * S * 4 * 2)


def test_residual_and_per_token_terms_scale_with_the_tokens():
    p = memory.forward_plan(TINY, batch=2, seq_len=8, dtype=torch.float32, dequantised=1000, fp8_twin_per_token=100)
    T, D = 16, 64
    assert p["residual"] == 4 * T * D * 4  # h, the norm's output, the block output, the embedding
    assert p["fp8_twin_activations"] == T * 100 and p["dequantised_weight"] == 1000
    assert p["peak"] == sum(v for k, v in p.items() if k != "peak")
