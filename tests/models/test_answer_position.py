"""The answer position: CKFModel.answer_hidden, the logits read from it, and the attention it gives
the soft tokens (benchmarks/ctr_probe.py's attention_shares)."""

import torch

from model_samples import PH, make_sample, title
from ckf_dist.data.collate import Collator
from ckf_dist.eval.loop import Evaluator


def _evaluator(model, tok, cfg):
    return Evaluator(model, Collator(tok, cfg, tok.convert_tokens_to_ids(PH), text_twin=False), cfg,
                     [title(i) for i in range(30)])


def test_answer_hidden_is_the_prompts_last_position_of_the_full_forward(build_model):
    model, tok, cfg = build_model()
    ev = _evaluator(model, tok, cfg)
    batch = ev._batch([make_sample("ctr", user=u, n=u) for u in range(5)])  # prompts of different lengths
    plen = batch["prompt_lengths"]
    assert len(set(plen.tolist())) > 1
    with torch.no_grad():
        hidden = model.answer_hidden(batch)
        full = model._decoder_hidden(model.embed(batch["input_ids"], batch), batch["attention_mask"], batch["task_ids"])
        logits = model.answer_logits(batch)
    torch.testing.assert_close(hidden, full[torch.arange(5), plen - 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, model._lm_logits(hidden))


def test_attention_shares_under_uniform_attention_are_one_over_the_prompt_length(build_model, benchmark_script):
    """Zero query weights (and zero adapters) make every score equal: the answer position then gives
    each of its plen visible positions 1 / plen, the user's and the item's token included."""
    model, tok, cfg = build_model(random_b=False)
    with torch.no_grad():
        for layer in model.llm.get_decoder().layers:
            layer.self_attn.q_proj.base_layer.weight.zero_()  # the MultiLoRALinear's frozen layer
    ev = _evaluator(model, tok, cfg)
    samples = [make_sample("ctr", user=u, n=u) for u in range(6)]
    shares = benchmark_script("ctr_probe").attention_shares(ev, samples, batch_size=4)
    plen = ev._batch(samples)["prompt_lengths"].double()
    expected = float((1.0 / plen).mean())
    assert shares.shape == (cfg.tiny.num_layers, 2)
    assert abs(shares - expected).max() < 1e-5, (shares, expected)


def test_attention_shares_read_the_placeholders_positions(build_model, benchmark_script):
    """Against the decoder's own attention maps (output_attentions), read at the placeholder tokens
    of input_ids rather than at the collator's cf_cols."""
    model, tok, cfg = build_model()
    ev = _evaluator(model, tok, cfg)
    samples = [make_sample("ctr", user=u, n=u) for u in range(4)]
    shares = benchmark_script("ctr_probe").attention_shares(ev, samples, batch_size=4)
    batch = ev._batch(samples)
    plen = batch["prompt_lengths"]
    width = int(plen.max())
    ids = batch["input_ids"][:, :width]
    with torch.no_grad(), model._adapters(batch["task_ids"], width, None):
        out = model.llm.get_decoder()(inputs_embeds=model.embed(ids, batch), attention_mask=batch["attention_mask"][:, :width],
                                      output_attentions=True)
    ph = tok.convert_tokens_to_ids(PH)
    expected = torch.zeros(len(out.attentions), 2, dtype=torch.float64)
    for r in range(4):
        user_col, item_col = (ids[r] == ph).nonzero()[:, 0].tolist()
        for k, att in enumerate(out.attentions):
            row = att[r].double().mean(0)[plen[r] - 1]
            expected[k] += torch.stack([row[user_col], row[item_col]]) / 4
    assert expected.min() > 0
    torch.testing.assert_close(torch.from_numpy(shares), expected, atol=1e-5, rtol=1e-4)
