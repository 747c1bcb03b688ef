"""Text generation: batched prompts, sampling, streaming, and MTP speculative decoding.

    # a Hugging Face checkpoint directory with tokenizer.json
    python -m generate --ckpt DIR --prompt "The capital of France is" --max-new-tokens 32
    python -m generate --ckpt DIR --prompt-file prompts.txt --temperature 0.6 --top-p 0.95 --seed 0
    python -m generate --ckpt DIR --prompt-file prompts.jsonl --mtp --output results.jsonl
    python -m generate --ckpt DIR --interactive --mtp
    python -m generate --ckpt DIR --gemm fp8 --device cuda --prompt "Hi"     # FP8 weights resident
    torchrun --nproc-per-node 2 -m generate --ckpt DIR --interactive          # rank 0 reads stdin
    torchrun --nproc-per-node 8 -m generate --ckpt DIR --gemm fp8 --prompt-file p.txt  # TP+EP shards

    # no checkpoint at hand: a random tiny model plus a byte-level tokenizer, written once into DIR
    python -m generate --demo /tmp/dsv3-demo --prompt "hello" --max-new-tokens 16 --mtp

Prompts: `--prompt TEXT` (repeatable) and/or `--prompt-file FILE`: one prompt per line (blank lines
skipped), or JSON Lines (`.jsonl`, or a first line starting with `{`) with a "prompt" field per line.
All prompts run as one right-padded batch. One prompt streams token by token; with several, each
completion is printed as soon as its row finishes. Statistics go to stderr.

Chat format: when the checkpoint's tokenizer_config.json has a `chat_template`, each prompt is sent
as one user turn in DeepSeek-V3's chat format, rendered here without running the Jinja template:

    <BOS>{system}<｜User｜>{prompt}<｜Assistant｜>

(`--system` sets the system text; `--no-chat-template` sends the raw prompt, after BOS where
`add_bos_token` asks for one.) Multi-turn
history and V3.1's thinking markers are not rendered. Generation stops at the config's
eos_token_id(s), the tokenizer's eos_token, generation_config.json's eos_token_id, or after
`--max-new-tokens` (and never runs past max_seq_len: a prompt left less room than that is noted on stderr).

Sampling: `--temperature 0` (default) is greedy; otherwise softmax(logits / T) restricted to the
`--top-k` most likely tokens (0 = all) and the smallest set holding `--top-p` of the probability,
drawn with a torch.Generator seeded by `--seed`.

MTP speculative decoding (`--mtp`, depth 1): after each step the MTP module drafts the token after
next from the main model's last hidden state and the newest token; the next step feeds
[newest, draft] as one 2-token chunk, so the main model verifies the draft and, if it is accepted,
also yields the token after it: 1 or 2 tokens per forward pass. On rejection nothing is undone
explicitly: both static KV caches (main and MTP) are overwritten in place at the rejected position
by the next step, and attention never reaches past a row's own position. Greedy drafts are
accepted iff they equal the main model's argmax, so greedy output is identical to plain greedy
decoding (in float32; in bfloat16 the 2-token verify pass rounds differently from a 1-token step,
and a near-tied argmax can flip, as batching can: README, "Generation"); with sampling the standard
speculative-sampling rule (accept with min(1, p/q), else resample from max(p - q, 0)) keeps the
main model's distribution. `generate()` returns the acceptance counts per prompt and draft
position, and the tokens per forward pass.

Under torchrun the ranks hold one model, tensor + expert parallel (`model.parallel.init_world`;
each rank reads only its shard; `--replicate` loads the whole model on every rank instead). Every
rank runs the same batch; rank 0 alone reads the prompt file and stdin and prints; the prompts and
each step's sampled tokens are broadcast from the first rank so all ranks stay in step.

Library: `generate(model, prompts, ...)` (decode.py), `SamplingParams` (sampling.py), `TextCodec` (`encode`,
`decode`, `str_tokens`),
`load_codec`, `read_prompts`, `write_demo_checkpoint` (text.py); the command is `__main__.py`.
`python -m model.generate` is an alias of `python -m generate`.
"""

from probe.lazy import exports

# NOTE: imported on first use (probe/lazy.py), and `python -m generate` imports torch once its flags parse
# (generate/__main__.py), so that `--help` answers at once (it took about 2 s, nearly all of it importing
# torch). `from generate import generate` works as before.
__getattr__, __dir__, __all__ = exports(__name__, {
    ".decode": ("generate", "GenerationOutput", "OnToken", "DraftFn"),
    ".errors": ("GenerateError",),
    ".sampling": ("SamplingParams", "propose", "verify_drafts"),
    ".text": ("TextCodec", "load_codec", "read_prompts", "write_demo_checkpoint", "USER", "ASSISTANT", "BOS_TEXT",
              "EOS_TEXT"),
})
