"""The answer position: CKFModel.answer_hidden, the logits read from it, and the attention it gives
the soft tokens (benchmarks/ctr_probe.py's probe_pass)."""

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
    reps, shares = benchmark_script("ctr_probe").probe_pass(ev, samples, batch_size=4)
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
    attn_before = model.llm.config._attn_implementation
    reps, shares = benchmark_script("ctr_probe").probe_pass(ev, samples, batch_size=3)
    assert model.llm.config._attn_implementation == attn_before  # the eager pass is undone
    batch = ev._batch(samples)
    with torch.no_grad():  # the same pass's representations, against the model's own readings
        torch.testing.assert_close(torch.from_numpy(reps["answer hidden state"]).float(), model.answer_hidden(batch),
                                   atol=1e-5, rtol=1e-4)
        p_yes = model.yes_probability(batch, ev.yes_id, ev.no_id).double()
        torch.testing.assert_close(torch.from_numpy(reps["ctr log-odds"][:, 0]), torch.log(p_yes / (1 - p_yes)),
                                   atol=1e-4, rtol=1e-4)
        users, items = model.cf_vectors(batch)
        torch.testing.assert_close(torch.from_numpy(reps["user token"]).float(), users.float())
        torch.testing.assert_close(torch.from_numpy(reps["item token"]).float(), items.float())
    plen = batch["prompt_lengths"]
    width = int(plen.max())
    ids = batch["input_ids"][:, :width]
    model.llm.set_attn_implementation("eager")  # the reference maps: output_attentions needs eager attention
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
