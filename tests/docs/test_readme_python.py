"""The README's Python examples run as written: each ```python block is executed in turn in one
namespace, on a random checkpoint with the layers its layer numbers name (21) and a synthetic run,
with only their paths replaced and their two illustrative inputs (`next_ids`, `padded`) supplied.
Then a few of the claims their comments make are checked on what they computed."""

import contextlib
import io
import re

import pytest
import torch
import torch.nn.functional as F

from helpers import REPO, random_model
from helpers.synthetic_run import write_run

pytestmark = pytest.mark.slow  # the README's examples on a 21-layer checkpoint: 3-4 s on the 2-core EPYC (2026-12-07)

PATHS = {'"path/to/DeepSeek-V3"': "ckpt", '"runs/model-val"': "run"}


def readme_blocks(text: str) -> list[tuple[int, str]]:
    """(first line, code) of every ```python block."""
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in re.finditer(r"```python\n(.*?)```", text, re.S)]


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    import model

    base = tmp_path_factory.mktemp("readme")
    # the bundled tokenizer's vocabulary: the token strings example runs the model on the ids it encodes
    model.save(random_model("tiny", n_layers=21, vocab_size=4096), base / "ckpt")
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the bundled model's tokenizer, for the codec line
        (base / "ckpt" / name).write_bytes((REPO / "data" / "model" / name).read_bytes())
    write_run(base / "run")
    return {"ckpt": base / "ckpt", "run": base / "run"}


def run_blocks(blocks, places, ns: dict | None = None) -> dict:
    """Execute `blocks` in turn in `ns` (a fresh namespace by default); returns it."""
    tokens = torch.tensor([[0, 1234 % 512, 99, 7]])  # the README's tokens, inside the tiny vocabulary
    if ns is None:
        ns = {"next_ids": torch.tensor([[1234 % 512, 99, 7, 5]]), "padded": torch.randint(0, 512, (2, 7))}
    for line, code in blocks:
        for text, key in PATHS.items():
            code = code.replace(text, repr(str(places[key])))
        code = code.replace("torch.tensor([[0, 1234, 99, 7]])", f"torch.tensor({tokens.tolist()})")
        exec(compile(code, f"README.md:{line}", "exec"), ns)
    return ns


@pytest.fixture(scope="module")
def readme(places):
    """The README's blocks run once in turn: (blocks, index of the hooks example, the namespace after
    every block, a copy of it as it was before the hooks example)."""
    blocks = readme_blocks((REPO / "README.md").read_text())
    hooks = next(i for i, (_, code) in enumerate(blocks) if "run_with_cache" in code)
    ns = run_blocks(blocks[:hooks], places)
    before = dict(ns)
    return blocks, hooks, run_blocks(blocks[hooks:], places, ns), before


def test_the_readme_python_runs_and_its_comments_hold(readme):
    blocks, _, ns, _ = readme
    assert len(blocks) >= 3
    m, tokens = ns["m"], ns["tokens"]
    V = m.args.vocab_size
    assert ns["mtp_logits"].shape == (1, 3, V)  # mtp_logits[:, i] predicts token i+2 -> [B, S-1, V]
    full = m(tokens)
    # the KV cache: prefill 3, then the 4th token at start_pos=3 gives the full forward's last position
    torch.testing.assert_close(ns["last"], full[:, 3:], rtol=1e-5, atol=1e-5)
    stats = ns["stats"]  # the loss of each target and the argmax, without logits
    nll = F.cross_entropy(full.flatten(0, 1), ns["next_ids"].flatten(), reduction="none").view(1, 4)
    torch.testing.assert_close(stats.nll, nll, rtol=1e-5, atol=1e-5)
    assert torch.equal(stats.top1, full.argmax(-1))
    # the hook example: blocks 20.. from the cached residual give the same logits
    resid = ns["cache"]["layers.20.hook_resid_pre"]
    torch.testing.assert_close(m(tokens, start_at_layer=20, resid=resid), full, rtol=1e-6, atol=1e-6)
    assert torch.equal(ns["h20"], resid)  # stop_at_layer=20: the residual stream into block 20
    with torch.no_grad():  # run_with_cache's fwd_hooks: the cache holds the pass as they left it
        edited = m.run_with_hooks(tokens, stop_at_layer=4, fwd_hooks=[("layers.3.hook_resid_post", lambda t, h: t * 0.9)])
    torch.testing.assert_close(ns["hooked"]["layers.4.hook_resid_pre"], edited, rtol=0, atol=0)
    assert "layers.5.ffn.gate.hook_select_scores" in ns["m"].hook_names()
    assert list(ns["norms"]) == list(range(21))  # hook.layer(): each layer's fn call keyed by its layer, in order
    # direct logit attribution: the pieces' shares add up to the last position's logits, and layer 20's
    # heads' shares to its attention output's
    dla, heads = ns["dla"].float(), ns["heads"].float()
    assert ns["labels"][:3] == ["hook_embed", "layers.0.hook_attn_out", "layers.0.hook_ffn_out"]  # the stack's order
    assert len(ns["labels"]) == 1 + 2 * 21 and ns["labels"][-1] == "layers.20.hook_ffn_out"
    assert dla.shape == (1 + 2 * 21, 1, V) and heads.shape == (m.args.n_heads, 1, V)
    torch.testing.assert_close(dla.sum(0), ns["out"][:, -1].float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(heads.sum(0), dla[1 + 2 * 20], rtol=1e-4, atol=1e-4)  # forward order
    # and the MTP module's pieces, through its own norm, to its logits
    assert ns["mtp_dla"].shape == (3, 1, 3, V)
    torch.testing.assert_close(ns["mtp_dla"].float().sum(0), ns["mtp_out"].float(), rtol=1e-4, atol=1e-4)
    # the model as loaded by default is in the config's dtype, the float32 one as the jobs compute
    assert ns["m32"].embed.weight.dtype == torch.float32 and m.embed.weight.dtype == getattr(torch, m.args.dtype)
    # text to ids: BOS first, then the text's tokens, which decode back to it
    ids = ns["ids"][0].tolist()
    assert ids[0] == ns["m"].args.bos_token_id and ns["codec"].decode(ids) == "def mean(xs):"
    # probe.open_run: the run's tables, as the last example reads them
    assert {"expert_load", "tokens"} <= set(ns["run"].tables)


def test_the_patching_example_patches_by_expert_id_and_sweeps_every_point(readme):
    """The activation patching example: every (token, expert) pair of experts 3 and 7 at positions 2
    and 3 of layer 5 is counted once, patched or not; the sweep has a row per block and position, the
    positions before the changed token (the same inputs) leave the corrupted metric, and the last
    block's output at the last position restores the clean one."""
    _, _, ns, _ = readme
    m, tokens, corrupted, report, table = (ns[k] for k in ("m", "tokens", "corrupted", "report", "table"))
    _, routed = m.run_with_cache(corrupted, names="layers.5.ffn.gate.hook_topk_ids")
    ids = routed["layers.5.ffn.gate.hook_topk_ids"][2:4]  # B = 1: rows are positions
    assert set(report.patched) == {5} and report.patched[5] + report.not_patched[5] == int(torch.isin(ids, torch.tensor([3, 7])).sum())
    assert len(table) == 21 * 4 and set(table.columns) == {"name", "position", "metric", "clean", "corrupted"}
    same = table[table["position"] < 2]
    moved = (table["metric"] - table["corrupted"]).abs()
    gap = abs(table["clean"].iloc[0] - table["corrupted"].iloc[0])
    assert len(same) == 42 and moved[same.index].max() < 1e-4 * gap  # rounding only: the experts' GEMMs
    assert moved.max() > 0.1 * gap                                    # batch these rows with those that differ
    last = table[(table["name"] == "layers.20.hook_resid_post") & (table["position"] == 3)]
    assert last["metric"].item() == pytest.approx(last["clean"].item(), rel=1e-6)
    assert gap > 1e-2


def test_the_token_strings_example_prints_each_position_with_its_first_choice(readme, places):
    """The token strings example: a line per position of the encoded text (BOS first), with its token's
    text (the split character's bytes as escapes) and the expert layer 5's router ranks first."""
    blocks, _, ns, _ = readme
    m, text_ids, top1 = ns["m"], ns["text_ids"], ns["top1"]
    _, allowed = m.run_with_cache(text_ids, names="layers.5.ffn.gate.hook_allowed_scores")
    assert torch.equal(top1, allowed["layers.5.ffn.gate.hook_allowed_scores"].argmax(-1))
    line, code = next(b for b in blocks if "str_tokens(text_ids" in b[1])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_blocks([(line, code)], places, dict(ns))
    lines = out.getvalue().splitlines()
    shown = [row[5:17].rstrip() for row in lines]  # "pos  token        E3": the token padded to 12
    experts = [int(row.rsplit(" E", 1)[1]) for row in lines]
    assert len(lines) == text_ids.shape[1] and shown[:3] == ["<|bos|>", "def", " mean"]
    assert shown[-3:] == ["其", "\\xe5\\xb3", "\\xb0"]  # '峰': its bytes, not U+FFFD
    assert experts == top1.tolist()


def test_an_example_that_calls_what_is_not_there_fails(readme, places):
    """Negative control: a renamed method in an example is an error naming that example's line. The
    examples before it are not run again: the broken one runs on what they left (`readme`'s copy)."""
    blocks, hooks, _, before = readme
    line, code = blocks[hooks]
    with pytest.raises(AttributeError, match="run_with_caches") as ei:
        run_blocks([(line, code.replace("run_with_cache", "run_with_caches"))], places, dict(before))
    assert f"README.md:{line}" in [str(e.path) for e in ei.traceback]  # raised in that example
