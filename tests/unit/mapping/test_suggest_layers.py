"""mapping.suggest on whole layer types: recurrent layers per layer and direction, leaves whose order differs
inside a block, fused q/k/v (an op hint, never a rename), and nothing dropped without a line.

The basics (alignment, generalising, narrowing): test_suggest.py. Five real pairs end to end: test_model_pairs.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import yaml
from torch import nn

import transfer_pipeline as tp
from transfer_pipeline.mapping.plan import plan_load
from transfer_pipeline.mapping.suggest import leaves, suggest_rules
from transfer_pipeline.schema import MappingConfig, OnMismatch, SourceConfig
from transfer_pipeline.tensor_meta import TensorMeta, meta_of

SKIP = MappingConfig(on_mismatch=OnMismatch.skip)


def suggested(source, target, mapping=SKIP):
    """(suggestion, {target: source} loaded with mapping.rules + the suggested rules)."""
    src = meta_of(source) if isinstance(next(iter(source.values())), torch.Tensor) else source
    tgt = meta_of(target) if isinstance(next(iter(target.values())), torch.Tensor) else target
    plan = plan_load(src, tgt, mapping, SourceConfig())
    got = suggest_rules(src, tgt, plan, mapping, SourceConfig())
    after = plan_load(src, tgt, replace(mapping, rules=list(mapping.rules) + got.rules), SourceConfig())
    return got, {e.target: e.sources[0] for e in after.entries}


def module(**children: nn.Module) -> nn.Module:
    m = nn.Module()
    for name, child in children.items():
        setattr(m, name, child)
    return m


def printed_op_rules(got) -> list[dict]:
    """The op rules as the YAML block prints them (commented out), uncommented and parsed."""
    lines = [ln.strip()[2:] for ln in got.yaml().splitlines() if ln.strip().startswith("# - ")]
    return [yaml.safe_load(ln[2:]) for ln in lines]


# --- recurrent layers ---------------------------------------------------------------------------------

def test_a_two_layer_lstm_goes_into_one_lstm_cell_per_layer():
    lstm = module(lstm=nn.LSTM(8, 16, num_layers=2))
    cells = module(cells=nn.ModuleList([nn.LSTMCell(8, 16), nn.LSTMCell(16, 16)]))
    got, loaded = suggested(lstm.state_dict(), cells.state_dict())
    assert got.rules == [{"from": r"lstm\.(\w+)_l(\d+)", "to": r"cells.\2.\1"}]
    assert loaded == {f"cells.{k}.{w}": f"lstm.{w}_l{k}" for k in (0, 1)
                      for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    assert not got.ambiguous and not got.unpaired and got.missing == []


def test_the_cells_back_into_a_multi_layer_lstm_and_a_gru_into_gru_cells():
    cells = module(cells=nn.ModuleList([nn.LSTMCell(8, 16), nn.LSTMCell(16, 16)]))
    got, loaded = suggested(cells.state_dict(), module(lstm=nn.LSTM(8, 16, num_layers=2)).state_dict())
    assert loaded["lstm.weight_hh_l1"] == "cells.1.weight_hh" and loaded["lstm.bias_ih_l0"] == "cells.0.bias_ih"
    assert len(loaded) == 8 and got.missing == []
    got, loaded = suggested(module(gru=nn.GRU(8, 16, num_layers=3)).state_dict(),
                            module(cells=nn.ModuleList([nn.GRUCell(8, 16), nn.GRUCell(16, 16),
                                                        nn.GRUCell(16, 16)])).state_dict())
    assert len(loaded) == 12 and loaded["cells.2.weight_ih"] == "gru.weight_ih_l2" and got.missing == []


def test_a_bidirectional_lstm_splits_into_one_bilstm_per_layer_each_direction_in_its_place():
    """A CRNN's 2-layer BiLSTM into one 1-layer BiLSTM per layer: same outputs after the load."""
    torch.manual_seed(0)
    src = module(rnn=nn.LSTM(8, 6, num_layers=2, bidirectional=True))
    tgt = module(layers=nn.ModuleList([nn.LSTM(8, 6, bidirectional=True), nn.LSTM(12, 6, bidirectional=True)]))
    got, loaded = suggested(src.state_dict(), tgt.state_dict())
    assert got.rules == [{"from": r"rnn\.(\w+)_l(\d+)", "to": r"layers.\2.\1_l0"},
                         {"from": r"rnn\.(\w+)_l(\d+)_reverse", "to": r"layers.\2.\1_l0_reverse"}]
    assert loaded == {f"layers.{k}.{w}_l0{d}": f"rnn.{w}_l{k}{d}" for k in (0, 1) for d in ("", "_reverse")
                      for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    tp.load_weights(tgt, src, rules=got.rules)
    x = torch.randn(5, 2, 8)
    y = x
    for layer in tgt.layers:
        y = layer(y)[0]
    assert torch.allclose(src.rnn(x)[0], y, atol=1e-6)  # the reverse direction went into the reverse weights


def test_projections_and_a_sorted_checkpoint_split_the_same_way():
    """`weight_hr_l0` (proj_size) belongs to its layer; a safetensors file lists names sorted, not per layer."""
    src = module(lstm=nn.LSTM(8, 16, num_layers=2, proj_size=4, bidirectional=True)).state_dict()
    tgt = module(layers=nn.ModuleList([nn.LSTM(8, 16, proj_size=4, bidirectional=True),
                                       nn.LSTM(8, 16, proj_size=4, bidirectional=True)])).state_dict()
    got, loaded = suggested(dict(sorted(src.items())), tgt)
    assert loaded["layers.1.weight_hr_l0_reverse"] == "lstm.weight_hr_l1_reverse"
    assert loaded["layers.0.weight_ih_l0"] == "lstm.weight_ih_l0" and len(loaded) == 20 and got.missing == []
    [unit] = [u for u in leaves(list(src), meta_of(src)) if u.unit == "l1_reverse"]
    assert unit.names == ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def test_three_rnn_layers_into_two_cells_are_ambiguous_not_guessed():
    got, loaded = suggested(module(rnn=nn.RNN(8, 8, num_layers=3)).state_dict(),
                            module(a=nn.RNNCell(8, 8), b=nn.RNNCell(8, 8)).state_dict())
    assert got.rules == [] and loaded == {}
    assert len(got.ambiguous) == 3 and got.ambiguous[1].startswith("source rnn (*_l1) [weight_ih_l1 (8, 8)")
    assert "could be target a or b" in got.ambiguous[1]


# --- leaves in another order inside a block ---------------------------------------------------------------

def blocks(norm_first: bool, n: int = 3, name: str = "blocks") -> nn.Module:
    def block() -> nn.Module:
        if norm_first:  # the source declares its norm first (as ALBERT's full_layer_layer_norm)
            return module(norm=nn.LayerNorm(16), proj=nn.Linear(16, 16), fc=nn.Linear(16, 32))
        return module(attn=nn.Linear(16, 16), mlp=nn.Linear(16, 32), ln=nn.LayerNorm(16))
    return module(**{name: nn.ModuleList(block() for _ in range(n))})


def test_a_norm_declared_first_goes_to_the_norm_declared_last_of_the_same_block():
    """In module order block 1's norm sits between block 0's linears and block 1's: the alignment alone
    paired it with block 0's norm. Checked against the blocks, it goes into its own block's."""
    got, loaded = suggested(blocks(True).state_dict(), blocks(False, name="layers").state_dict())
    assert {"from": r"blocks\.(\d+)\.norm\.(\w+)", "to": r"layers.\1.ln.\2"} in got.rules
    assert loaded == {f"layers.{i}.{t}.{w}": f"blocks.{i}.{s}.{w}" for i in range(3) for w in ("weight", "bias")
                      for s, t in (("norm", "ln"), ("proj", "attn"), ("fc", "mlp"))}
    assert not got.ambiguous and not got.unpaired


def test_two_same_shaped_norms_in_another_order_are_listed_not_guessed():
    src = module(layer=module(norm_a=nn.LayerNorm(16), attn=nn.Linear(16, 16), norm_b=nn.LayerNorm(16),
                              ffn=nn.Linear(16, 32)))
    tgt = module(block=module(attn=nn.Linear(16, 16), ffn=nn.Linear(16, 32), n1=nn.LayerNorm(16),
                              n2=nn.LayerNorm(16)))
    got, loaded = suggested(src.state_dict(), tgt.state_dict())
    assert loaded == {f"block.{m}.{w}": f"layer.{m}.{w}" for m in ("attn", "ffn") for w in ("weight", "bias")}
    assert [a.split(" [")[0] for a in got.ambiguous] == ["source layer.norm_a", "source layer.norm_b"]
    assert all("could be target block.n1 or block.n2" in a for a in got.ambiguous)


def test_a_source_module_with_no_target_of_its_signature_is_listed():
    src = module(fc=nn.Linear(4, 4), pooler=nn.Linear(4, 3))
    got, loaded = suggested(src.state_dict(), module(head=nn.Linear(4, 4)).state_dict())
    assert loaded == {"head.weight": "fc.weight", "head.bias": "fc.bias"}
    assert got.unpaired == ["source pooler [weight (3, 4), bias (3,)]"] and "Unpaired (1 source" in got.describe()


# --- fused projections: an op hint ----------------------------------------------------------------------------

def test_qkv_into_multihead_attention_gets_the_shipped_experiments_concat_rule_as_a_hint(compose):
    from transfer_pipeline.models.attention import MHATransformer, QKVTransformer

    torch.manual_seed(0)
    src, tgt = QKVTransformer(), MHATransformer()
    got, loaded = suggested(src.state_dict(), tgt.state_dict())
    assert not any("in_proj" in t for t in loaded) and loaded["layers.1.attn.out_proj.weight"] == "enc.1.o.weight"
    shipped = compose("experiment=qkv_to_mha").mapping.rules[0]
    assert got.op_rules == [{"from": list(shipped["from"]), "to": shipped["to"], "op": "concat", "dim": 0}]
    assert printed_op_rules(got) == got.op_rules
    assert "Op rule: target layers.0.attn [in_proj_weight (96, 32), in_proj_bias (96,)] = source enc.0.q, " \
           "enc.0.k, enc.0.v stacked along dim 0 (and 1 more like it)" in got.describe()
    report = tp.load_weights(tgt, src, rules=got.rules + printed_op_rules(got))
    assert report.plan.missing == []
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(src.eval()(x), tgt.eval()(x), atol=1e-5)  # the same function: q, k, v in their places


def albert_and_encoder():
    from transformers import AlbertConfig, AlbertModel

    torch.manual_seed(0)
    albert = AlbertModel(AlbertConfig(vocab_size=50, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                                      num_hidden_groups=2, num_attention_heads=4, intermediate_size=64,
                                      max_position_embeddings=20))
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2,
                                    enable_nested_tensor=False)
    return albert, encoder


def test_albert_into_a_transformer_encoder():
    """Linears by rule, q/k/v as a checked concat hint, the two LayerNorms listed (order cannot tell which is
    norm1), the embeddings listed as unpaired: every unmatched source module has a line."""
    albert, encoder = albert_and_encoder()
    got, loaded = suggested(albert.state_dict(), encoder.state_dict())
    layer = "encoder.albert_layer_groups.{}.albert_layers.0."
    assert loaded == {f"layers.{g}.{t}.{w}": layer.format(g) + f"{s}.{w}" for g in (0, 1) for w in ("weight", "bias")
                      for s, t in (("attention.dense", "self_attn.out_proj"), ("ffn", "linear1"),
                                   ("ffn_output", "linear2"))}
    assert len(got.ambiguous) == 4 and all("could be target layers.{0}.norm1 or layers.{0}.norm2".format(g) in a
                                           for g in (0, 1) for a in got.ambiguous if f"groups.{g}." in a)
    assert {a.split(" [")[0].rpartition(".")[2] for a in got.ambiguous} == {"full_layer_layer_norm", "LayerNorm"}
    assert [u.split(" [")[0] for u in got.unpaired] == [
        "source embeddings.word_embeddings", "source embeddings.position_embeddings",
        "source embeddings.token_type_embeddings", "source embeddings.LayerNorm",
        "source encoder.embedding_hidden_mapping_in", "source pooler"]
    [rule] = printed_op_rules(got)
    assert rule["op"] == "concat" and rule["to"] == r"layers.\1.self_attn.in_proj_\2"
    assert [p.rpartition(r"attention\.")[2] for p in rule["from"]] == [rf"{x}\.(weight|bias)"
                                                                       for x in ("query", "key", "value")]
    report = tp.load_weights(encoder, albert, rules=got.rules + [rule], on_mismatch="skip")
    src, tgt = albert.state_dict(), encoder.state_dict()
    for g in (0, 1):
        for w in ("weight", "bias"):
            parts = [src[layer.format(g) + f"attention.{x}.{w}"] for x in ("query", "key", "value")]
            assert torch.equal(tgt[f"layers.{g}.self_attn.in_proj_{w}"], torch.cat(parts))
    assert sorted(report.plan.missing) == sorted(f"layers.{g}.norm{k}.{w}" for g in (0, 1) for k in (1, 2)
                                                 for w in ("weight", "bias"))


def test_a_fused_target_that_could_stack_several_runs_is_listed():
    src = {f"m.{p}.w": TensorMeta((4, 4)) for p in ("a", "b", "c", "d")} | {"m.x.w": TensorMeta((2,))}
    tgt = {"n.fused.w": TensorMeta((12, 4)), "n.x.w": TensorMeta((2,))}
    got, loaded = suggested(src, tgt)
    assert got.op_rules == [] and "n.fused.w" in got.missing
    assert got.ambiguous == ["target n.fused [w (12, 4)] could stack (op: concat) source m.a, m.b, m.c or "
                             "m.b, m.c, m.d"]


@pytest.mark.parametrize("k", [2, 4])
def test_two_and_four_parts_stack_too(k):
    """k, v into a fused kv projection; four gate linears into an LSTMCell's stacked weight_ih."""
    parts = "kv" if k == 2 else "ifgo"
    src = {f"blk.{p}.weight": TensorMeta((8, 8)) for p in parts}
    tgt = {"blk2.fused_weight": TensorMeta((8 * k, 8))}
    got, _ = suggested(src, tgt)
    assert got.op_rules == [{"from": [rf"blk\.{p}\.weight" for p in parts], "to": "blk2.fused_weight", "op": "concat",
                             "dim": 0}]
