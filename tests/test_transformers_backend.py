"""The transformers backend on the real packaged SmolLM2-135M."""

import pytest
import torch

from core.errors import NotFound
from core.llm import GenerateRequest, ScoreRequest
from tests.conftest import SPORTS_TITLES, random_lora, sports_requests


def full_prompt_scores(llm, reqs):
    """Reference: every prompt in full, one forward pass each, no cache, no batching."""
    tokenizer = llm.tokenizer
    yes, no = llm._answer_ids
    out = []
    with llm._adapter(reqs[0].adapter) as model, torch.inference_mode():  # base model, even with adapters loaded
        for r in reqs:
            prefix = tokenizer(r.prefix, add_special_tokens=False).input_ids
            ids = prefix + tokenizer(r.suffix, add_special_tokens=False).input_ids
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            out.append(torch.sigmoid(logits[yes] - logits[no]).item())
    return out


def test_cached_prefix_batched_scores_equal_full_prompt_scores(llm):
    reqs = sports_requests(llm)
    cached = llm.score(reqs)
    assert cached == pytest.approx(full_prompt_scores(llm, reqs), abs=1e-4)
    assert all(0.0 < p < 1.0 for p in cached)
    assert len(set(round(p, 6) for p in cached)) == len(cached)  # the candidates really differ


def test_scores_do_not_depend_on_batching_or_order(llm):
    reqs = sports_requests(llm)
    batch_size = llm.batch_size
    try:
        llm.batch_size = 2
        small = llm.score(reqs)
    finally:
        llm.batch_size = batch_size
    assert small == pytest.approx(llm.score(reqs), abs=1e-4)
    assert llm.score(reqs[::-1])[::-1] == pytest.approx(small, abs=1e-4)
    assert llm.score([]) == []


def test_readers_packed_into_one_sequence_score_as_each_alone(llm, monkeypatch):
    """Each reader's candidates follow their prefix in a packed sequence, several readers in one (in calls of at
    most 4 x batch size candidates and batch size readers): every P(Yes) is the one its prompt gets alone. A row
    without a prefix goes through the prefix caches copied per row, with the same scores."""
    reqs = sports_requests(llm)
    other = [ScoreRequest("Reader profile:\nInterests: cooking.\n", r.suffix) for r in reqs[:2]]
    alone, other_alone = llm.score(reqs), llm.score(other)
    assert other_alone == pytest.approx(full_prompt_scores(llm, other), abs=1e-4)
    assert llm.score([*reqs, *other]) == pytest.approx([*alone, *other_alone], abs=1e-5)
    assert llm.score([other[0], *reqs, other[1]]) == pytest.approx([other_alone[0], *alone, other_alone[1]], abs=1e-5)
    unpacked = ScoreRequest("", other[0].prefix + other[0].suffix)  # no prefix: the other path, the same score
    assert llm.score([*reqs, unpacked]) == pytest.approx([*alone, other_alone[0]], abs=1e-5)

    def copied(*args: object) -> None:
        raise AssertionError("two readers with prefixes went through copied prefix caches")

    monkeypatch.setattr(llm, "_prefix_caches", copied)  # packed: no prefix cache is computed at all
    assert llm.score([*other, *reqs]) == pytest.approx([*other_alone, *alone], abs=1e-5)
    batch_size = llm.batch_size
    try:
        llm.batch_size = 1  # calls of 4 candidates, one reader each: the 5 in two packed sequences
        assert llm.score([*reqs, *other]) == pytest.approx([*alone, *other_alone], abs=1e-5)
    finally:
        llm.batch_size = batch_size


def test_packed_calls_keep_order_and_bound_rows_and_readers():
    from llm.backends.transformers import packed_calls

    blocks = [("a", [0, 1, 2]), ("b", [3]), ("c", [4, 5, 6, 7, 8, 9]), ("d", [10])]
    calls = packed_calls(blocks, size=4, most=2)
    # a and b fill a call; c's first piece does not fit beside them, its second starts the third call with d
    assert calls == [[("a", [0, 1, 2]), ("b", [3])], [("c", [4, 5, 6, 7])], [("c", [8, 9]), ("d", [10])]]
    assert all(sum(len(rows) for _, rows in call) <= 4 and len(call) <= 2 for call in calls)
    assert [i for call in calls for _, rows in call for i in rows] == list(range(11))
    assert packed_calls([("a", [0]), ("b", [1]), ("c", [2])], size=64, most=2) == [
        [("a", [0]), ("b", [1])],
        [("c", [2])],
    ]
    assert packed_calls([], size=4, most=2) == []


def test_generate_continues_the_prompt(llm):
    prompt = llm.chat_prompt("Be brief.", "Name one sport played with a ball.")
    out = llm.generate([GenerateRequest(prompt, 12), GenerateRequest(prompt + "Football is", 8)])
    assert len(out) == 2 and out[0].text and 0 < out[0].completion_tokens <= 12
    assert out[1].prompt_tokens > out[0].prompt_tokens


def test_a_lora_adapter_changes_scores_only_when_selected(llm, tmp_path):
    random_lora(tmp_path / "random-lora", seed=0)

    reqs = sports_requests(llm)
    before = llm.score(reqs)
    llm.load_adapter("random", str(tmp_path / "random-lora"))
    with_adapter = llm.score(sports_requests(llm, adapter="random"))
    assert max(abs(a - b) for a, b in zip(with_adapter, before, strict=True)) > 1e-3
    assert llm.score(reqs) == pytest.approx(before, abs=1e-5)  # no adapter named: the base model
    mixed = llm.score([reqs[0], sports_requests(llm, adapter="random")[0]])  # one batch, two adapters
    assert mixed == pytest.approx([before[0], with_adapter[0]], abs=1e-4)
    with pytest.raises(NotFound):
        llm.score(sports_requests(llm, adapter="missing"))


def test_any_local_model_folder_can_be_configured(llm):
    from llm.backends.transformers import TransformersBackend
    from llm.models import PACKAGED_FOLDER

    by_path = TransformersBackend(str(llm.cache_dir / PACKAGED_FOLDER), llm.cache_dir)
    assert by_path.score(sports_requests(by_path)[:2]) == pytest.approx(llm.score(sports_requests(llm)[:2]), abs=1e-5)


def test_training_margins_equal_served_scores(llm):
    """Training calls `answer_margins` with one prefix's cache repeated per row and no prefix mask: the quantity
    it trains must stay exactly the one `score` serves (which now batches rows across prefixes)."""
    from llm.backends.transformers import answer_margins

    reqs = sports_requests(llm)
    prefix_ids = llm.tokenizer(reqs[0].prefix, add_special_tokens=False, return_tensors="pt").input_ids
    with llm._adapter(None) as model, torch.inference_mode():
        cache = model(input_ids=prefix_ids, use_cache=True).past_key_values
        cache.batch_repeat_interleave(len(reqs))
        margins = answer_margins(
            model, llm.tokenizer, [r.suffix for r in reqs], cache, prefix_ids.shape[1], llm._answer_ids
        )
    assert torch.sigmoid(margins).tolist() == pytest.approx(llm.score(reqs), abs=1e-5)


MORE_TITLES = [
    "Striker signs a four-year deal with the champions (sports, football)",
    "Storm closes schools across the coast (weather)",
    "Museum reopens its dinosaur hall (culture)",
    "Coach fired after a fifth straight defeat (sports, football)",
    "Central bank holds rates steady (finance)",
    "Ten tips for a better night's sleep (health)",
    "Rookie kicker breaks the league record (sports, football)",
    "City council approves new bike lanes (local)",
]


@pytest.fixture(scope="module")
def bf16(llm):
    from llm.backends.transformers import TransformersBackend

    backend = TransformersBackend("smollm2-135m", llm.cache_dir, batch_size=8, dtype="bfloat16")
    backend.warm()
    return backend


def test_bfloat16_scores_rank_as_float32_with_no_ties(llm, bf16):
    """bfloat16 weights with the float32 answer head: each score within a few hundredths of float32's, the same
    order wherever float32 sets two candidates 0.02 apart or more (closer ones may swap, as bfloat16's rounding
    moves each score), and as many distinct scores as candidates (bfloat16 logits alone tied a third of them)."""
    assert bf16.network.dtype == torch.bfloat16 and bf16.network.get_output_embeddings().weight.dtype == torch.float32
    assert bf16.network.get_input_embeddings().weight.dtype == torch.bfloat16  # untied: embeddings stay small
    reqs = sports_requests(llm, titles=[*SPORTS_TITLES, *MORE_TITLES])
    half, full = bf16.score(reqs), llm.score(reqs)
    assert half == pytest.approx(full, abs=0.03)
    apart = [(i, j) for i in range(len(full)) for j in range(i) if abs(full[i] - full[j]) >= 0.02]
    assert len(apart) > len(full)  # most pairs: the order below is checked on them
    assert [half[i] > half[j] for i, j in apart] == [full[i] > full[j] for i, j in apart]
    assert len(set(half)) == len(half)


def test_bfloat16_serves_adapters_and_both_scoring_paths_agree(llm, bf16, tmp_path):
    random_lora(tmp_path / "random-lora", seed=0)
    bf16.load_adapter("random", str(tmp_path / "random-lora"))
    llm.load_adapter("random", str(tmp_path / "random-lora"))
    reqs = sports_requests(llm, adapter="random")
    assert bf16.score(reqs) == pytest.approx(llm.score(reqs), abs=0.03)
    other = [ScoreRequest("Reader profile:\nInterests: cooking.\n", r.suffix, "random") for r in reqs[:2]]
    mixed = bf16.score([*reqs, *other])  # two readers in one packed sequence
    assert mixed[: len(reqs)] == pytest.approx(bf16.score(reqs), abs=0.02)


def test_auto_dtype_is_bfloat16_only_with_amx(monkeypatch):
    from llm.backends.transformers import weights_dtype

    assert weights_dtype("float32") == "float32" and weights_dtype("bfloat16") == "bfloat16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert weights_dtype("auto") == "float32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert weights_dtype("auto") == ("bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32")


def test_a_merged_adapter_scores_as_its_low_rank_products_and_is_merged_again_when_replaced(llm, tmp_path):
    """Served adapters are added into copies of the weights (as fast as the base model); the scores are those of
    PEFT's per-token products, a replaced adapter is merged anew, and only `merged_adapters` copies are kept."""
    reqs = sports_requests(llm, adapter="twin")
    runs = []
    for seed in (1, 2):  # the second load replaces the first under the same name
        llm.load_adapter("twin", str(random_lora(tmp_path / f"lora-{seed}", seed=seed)))
        runs.append(llm.score(reqs))
        assert llm.merged()[-1] == "twin"
        llm.merged_adapters, bound = 0, llm.merged_adapters
        try:
            products = llm.score(reqs)
        finally:
            llm.merged_adapters = bound
        assert runs[-1] == pytest.approx(products, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(*runs, strict=True)) > 1e-3
    assert llm.score(sports_requests(llm)) == pytest.approx(full_prompt_scores(llm, sports_requests(llm)), abs=1e-5)
    for name in ("first", "second", "third"):
        llm.load_adapter(name, str(tmp_path / "lora-1"))
        llm.score(sports_requests(llm, adapter=name)[:1])
    assert llm.merged() == ["second", "third"]  # two copies by default, the least recently used dropped


def test_attention_span_by_span_gives_the_margins_of_one_mask_over_the_packed_sequence(llm):
    """`block_attention` (the default) computes a packed sequence's attention per prefix and per group of
    suffixes; with two blocks and suffixes in several groups, every margin is the masked whole sequence's."""
    from llm.backends.transformers import GROUP_TOKENS, TransformersBackend, attention_spans, packed_margins

    masked = TransformersBackend("smollm2-135m", llm.cache_dir, attention="masked")
    assert (llm.network.config._attn_implementation, masked.network.config._attn_implementation) == (
        "newsrank_blocks",
        "sdpa",
    )
    reqs = sports_requests(llm, titles=[*SPORTS_TITLES, *MORE_TITLES])
    blocks = [(reqs[0].prefix, [r.suffix for r in reqs]), ("Reader profile:\nInterests: cooking.\n", ["Soup ->"])]
    with llm._adapter(None) as model, torch.inference_mode():  # the base model, whatever adapters are loaded
        spans = packed_margins(model, llm.tokenizer, blocks, llm._answer_ids)
        whole = packed_margins(masked.network, masked.tokenizer, blocks, masked._answer_ids)
    assert spans.tolist() == pytest.approx(whole.tolist(), abs=1e-4)
    assert torch.sigmoid(spans[: len(reqs)]).tolist() == pytest.approx(full_prompt_scores(llm, reqs), abs=1e-5)
    layout = [(0, 10, [(10, 10 + GROUP_TOKENS // 2), (42, 42 + GROUP_TOKENS), (106, 110)])]
    cut = attention_spans(layout, torch.float32, "cpu")
    assert [(s.start, s.end, s.mask is None) for s in cut] == [(0, 10, True), (10, 106, False), (106, 110, False)]
    assert cut[1].mask.shape == (1, 1, 96, 10 + 96)


def test_bfloat16_weights_are_packed_once_and_again_after_a_merge(llm, bf16, tmp_path):
    """bfloat16 linear layers compute from weights oneDNN reordered once; a merged adapter's copy is packed from
    its merged weights (a copy still packed from the base weights would score as the base model)."""
    layer = bf16.network.get_decoder().layers[0].mlp.up_proj
    assert type(layer).__name__ == "PrepackedLinear" and isinstance(layer, torch.nn.Linear)
    assert type(llm.network.get_decoder().layers[0].mlp.up_proj) is torch.nn.Linear  # float32: MKL's own products
    random_lora(tmp_path / "lora", seed=3)
    bf16.load_adapter("packed", str(tmp_path / "lora"))
    llm.load_adapter("packed", str(tmp_path / "lora"))
    reqs = sports_requests(llm, adapter="packed")
    merged, base = bf16.score(reqs), bf16.score(sports_requests(llm))
    assert bf16.merged()[-1] == "packed"
    adapted = bf16._merged_model("packed").get_decoder().layers[0].self_attn.q_proj  # a layer the adapter changed
    x = torch.randn(3, adapted.in_features, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(adapted(x), torch.nn.functional.linear(x, adapted.weight))
    assert merged == pytest.approx(llm.score(reqs), abs=0.03)  # float32, PEFT's products
    assert max(abs(a - b) for a, b in zip(merged, base, strict=True)) > 0.05
