"""The toy text task (transfer_pipeline/data/toy_text.py) and the text transformer (models/text.py).

The data is deterministic and its labels follow the stated rules; the model is called like a
Hugging Face classifier (keyword inputs, an output object with .logits), ignores padding, builds
on the meta device and from a config.json; and a short plain-torch training learns sentiment,
negation included, so the shipped text experiments have something to learn.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, default_collate

from helpers import CONF, compose_config
from transfer_pipeline.data import toy_text
from transfer_pipeline.errors import UserError
from transfer_pipeline.models.text import TextClassifierOutput, TextTransformer, text_transformer_from_config
from transfer_pipeline.data.toy_text import NEGATION, PAD_ID, POSITIVE, TOPICS, UNK_ID, VOCAB_SIZE, splits, vocab

ASSET = os.path.join(os.path.dirname(os.path.dirname(toy_text.__file__)), "assets", "text_transformer_sport_food.safetensors")
NOUN_TOPIC = {noun: i for i, nouns in enumerate(TOPICS.values()) for noun in nouns}


def model(**kwargs) -> TextTransformer:
    torch.manual_seed(0)
    return TextTransformer(**{"vocab_size": VOCAB_SIZE, "max_len": 16, **kwargs})


def batch(texts: list[str], max_len: int = 16) -> dict[str, torch.Tensor]:
    encoded = [vocab().encode(t, max_len) for t in texts]
    return {"input_ids": torch.stack([e[0] for e in encoded]), "attention_mask": torch.stack([e[1] for e in encoded])}


# ---- the data

def test_model_config_vocab_size_is_the_toy_vocabulary():
    node = OmegaConf.load(CONF / "model" / "text_transformer.yaml")
    assert node.vocab_size == len(vocab()) == VOCAB_SIZE
    assert 40 <= VOCAB_SIZE <= 60
    assert node.max_len >= 16 and node.output == "logits"
    assert vocab().itos[PAD_ID] == "<pad>" and vocab().itos[UNK_ID] == "<unk>"
    assert len(set(vocab().itos)) == len(vocab())


def test_every_generated_word_is_in_the_vocabulary_and_every_word_is_used():
    words = {w for text, _, _ in toy_text.all_sentences() for w in text.split()}
    assert words <= set(vocab().itos)
    assert set(vocab().itos) - words == {"<pad>", "<unk>"}


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = splits(seed=0), splits(seed=0), splits(seed=1)
    for split in ("train", "val", "test"):
        assert a[split].texts == b[split].texts and a[split].labels == b[split].labels
        assert torch.equal(a[split].input_ids, b[split].input_ids)
        assert a[split].texts != c[split].texts
    assert len(set(a["train"].texts) & set(c["train"].texts)) < len(a["train"]) // 2


def test_split_sizes_are_disjoint_and_cover_num_samples():
    data = splits(num_samples=1000, val_fraction=0.1, test_fraction=0.3)
    assert [len(data[s]) for s in ("train", "val", "test")] == [600, 100, 300]
    texts = [set(data[s].texts) for s in ("train", "val", "test")]
    assert sum(map(len, texts)) == 1000 == len(set.union(*texts))  # no sentence twice, none in two splits
    no_test = splits(num_samples=100, test_fraction=0)
    assert "test" not in no_test and len(no_test["train"]) + len(no_test["val"]) == 100


def test_both_tasks_label_the_same_sentences_by_their_rules():
    sentiment, topic = splits("sentiment"), splits("topic")
    assert sentiment["classes"] == ["negative", "positive"] and topic["classes"] == list(TOPICS)
    assert sentiment["train"].texts == topic["train"].texts  # one draw, two labellings: the vocabulary transfers
    for text, s, t in zip(sentiment["train"].texts, sentiment["train"].labels, topic["train"].labels):
        words = text.split()
        assert t == next(NOUN_TOPIC[w] for w in words if w in NOUN_TOPIC), text
        assert s == int(any(w in POSITIVE for w in words) != (NEGATION in words)), text
    labels = sentiment["train"].labels + sentiment["val"].labels
    assert 0.4 < sum(labels) / len(labels) < 0.6  # balanced
    negated = sum(NEGATION in t.split() for t in sentiment["train"].texts) / len(sentiment["train"])
    assert 0.3 < negated < 0.6  # negation is common enough that a bag of words fails
    assert {len(set(topic["val"].labels))} == {4}


def test_topics_restrict_the_sentences_and_order_the_topic_classes():
    data = splits("sentiment", num_samples=200, topics=["weather", "music"])
    assert all({NOUN_TOPIC[w] for w in t.split() if w in NOUN_TOPIC} <= {2, 3} for t in data["train"].texts)
    topic = splits("topic", num_samples=200, topics=["music", "sport"])
    assert topic["classes"] == ["music", "sport"]
    for text, label in zip(topic["train"].texts, topic["train"].labels):
        assert label == {3: 0, 0: 1}[next(NOUN_TOPIC[w] for w in text.split() if w in NOUN_TOPIC)]


def test_items_are_tokenized_dicts_that_collate_into_keyword_inputs():
    data = splits(max_len=12)
    item = data["train"][0]
    assert set(item) == {"input_ids", "attention_mask", "labels"}
    assert item["input_ids"].dtype == item["attention_mask"].dtype == torch.long
    assert item["input_ids"].shape == item["attention_mask"].shape == (12,)
    assert isinstance(item["labels"], int) and item["labels"] in (0, 1)
    assert vocab().decode(item["input_ids"]) == data["train"].texts[0]
    assert torch.equal(item["attention_mask"], (item["input_ids"] != PAD_ID).long())
    b = default_collate([data["train"][i] for i in range(5)])
    assert b["input_ids"].shape == (5, 12) and b["labels"].tolist() == data["train"].labels[:5]


def test_encode_pads_marks_unknown_words_and_truncates():
    ids, mask = vocab().encode("The GAME was zzz", 6)
    assert ids.tolist() == [vocab().stoi["the"], vocab().stoi["game"], vocab().stoi["was"], UNK_ID, PAD_ID, PAD_ID]
    assert mask.tolist() == [1, 1, 1, 1, 0, 0]
    ids, mask = vocab().encode("the game was not very good today", 3)
    assert vocab().decode(ids) == "the game was" and mask.tolist() == [1, 1, 1]
    with pytest.raises(UserError, match="max_len"):
        vocab().encode("the game", 0)


@pytest.mark.parametrize("kwargs, key", [
    ({"task": "sentimnt"}, "data.task='sentimnt'.*Closest names: sentiment"),
    ({"task": None}, "data.task"),
    ({"num_samples": 0}, "data.num_samples=0"),
    ({"num_samples": True}, "data.num_samples=True"),
    ({"num_samples": 10**6}, "data.num_samples=1000000.*11000"),
    ({"num_samples": 12.5}, "data.num_samples"),
    ({"max_len": 4}, "data.max_len=4"),
    ({"seed": -1}, "data.seed=-1"),
    ({"val_fraction": 0}, "data.val_fraction=0"),
    ({"val_fraction": 1.0}, "data.val_fraction"),
    ({"test_fraction": 1}, "data.test_fraction=1"),
    ({"test_fraction": float("nan")}, "data.test_fraction"),
    ({"val_fraction": 0.6, "test_fraction": 0.4}, "every split needs at least one"),
    ({"num_samples": 3, "val_fraction": 0.1}, "every split needs at least one"),
    ({"topics": ["sports"]}, r"data.topics\[0\]='sports'.*Closest names: sport"),
    ({"topics": "sport"}, "data.topics='sport'"),
    ({"topics": ["food", "food"]}, "data.topics"),
    ({"task": "topic", "topics": ["food"]}, "data.topics.*two"),
])
def test_bad_arguments_name_their_config_key(kwargs, key):
    with pytest.raises(UserError, match=key):
        splits(**kwargs)


# ---- the model

def test_model_returns_an_output_object_with_logits_and_pooled():
    m = model(num_classes=3)
    out = m(**batch(["the game was good", "what a lovely song"]))
    assert isinstance(out, TextClassifierOutput) and not isinstance(out, (torch.Tensor, tuple))
    assert out.logits.shape == (2, 3) and out.pooled.shape == (2, 32)
    assert torch.isfinite(out.logits).all()
    assert sum(p.numel() for p in m.parameters()) < 30_000
    names = dict(m.named_modules())
    for name in ("embeddings.word_embeddings", "embeddings.position_embeddings", "embeddings.norm",
                 "encoder.layers.0", "encoder.layers.1", "encoder.norm", "pooler.dense", "classifier"):
        assert name in names, name
    assert isinstance(names["classifier"], torch.nn.Linear) and names["classifier"].out_features == 3
    assert "encoder.layers.2" not in names


def test_layers_start_different():  # not nn.TransformerEncoder's deep copies of one layer
    m = model()
    a, b = (m.encoder.layers[i].self_attn.in_proj_weight for i in (0, 1))
    assert not torch.equal(a, b)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_padding_does_not_change_the_logits(training):
    m = model().train(training)
    texts = ["the game was not very good", "what a lovely song", "i did not find the soup awful"]
    short, long = batch(texts, 9), batch(texts, 16)
    with torch.no_grad():
        ref = m(**short).logits
        assert torch.allclose(m(**long).logits, ref, atol=1e-5)  # more padding at the end
        junk = long["input_ids"].clone()
        junk[long["attention_mask"] == 0] = torch.randint(2, VOCAB_SIZE, junk.shape)[long["attention_mask"] == 0]
        assert torch.allclose(m(input_ids=junk, attention_mask=long["attention_mask"]).logits, ref, atol=1e-5)
        assert torch.allclose(m(input_ids=long["input_ids"]).logits, ref, atol=1e-5)  # default mask: ids != pad
        unmasked = m(input_ids=junk, attention_mask=torch.ones_like(junk)).logits  # the mask is what hides them
        assert not torch.allclose(unmasked, ref, atol=1e-3)


def test_bad_inputs_and_arguments_are_user_errors():
    m = model()
    with pytest.raises(UserError, match="model.max_len=16"):
        m(input_ids=torch.ones(2, 17, dtype=torch.long))
    with pytest.raises(UserError, match="attention_mask of shape"):
        m(input_ids=torch.ones(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))
    with pytest.raises(UserError, match="model.dim=30, model.heads=4"):
        model(dim=30, heads=4)
    with pytest.raises(UserError, match="model.vocab_size"):
        model(vocab_size=0)
    with pytest.raises(UserError, match="model.pad_id"):
        model(pad_id=VOCAB_SIZE)


def test_builds_on_the_meta_device():
    with torch.device("meta"):
        m = TextTransformer(vocab_size=VOCAB_SIZE, max_len=16, num_classes=4)
    real = model(num_classes=4)
    assert all(p.is_meta for p in m.parameters())
    assert {n: p.shape for n, p in m.named_parameters()} == {n: p.shape for n, p in real.named_parameters()}


def test_the_pipeline_builds_it_on_meta_without_falling_back():
    from transfer_pipeline.build import build_model

    node = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "text_transformer.yaml"))
    node.pop("output")
    m = build_model(node, meta=True)
    assert isinstance(m, TextTransformer) and all(p.is_meta for p in m.parameters())


def test_from_config_builds_the_same_architecture(tmp_path):
    m = model(num_classes=4, depth=3)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**m.config, "model_type": "text_transformer", "architectures": ["TextTransformer"]}))
    for built in (text_transformer_from_config(path), TextTransformer.from_config(str(path)),
                  TextTransformer.from_config(m.config)):
        assert isinstance(built, TextTransformer) and built.config == m.config
        assert {n: p.shape for n, p in built.named_parameters()} == {n: p.shape for n, p in m.named_parameters()}
    built.load_state_dict(m.state_dict())  # strict: same names and shapes
    x = batch(["the band was really great"])
    assert torch.allclose(built(**x).logits, m(**x).logits)
    with pytest.raises(UserError, match="no vocab_size, max_len"):
        text_transformer_from_config({"dim": 32})
    with pytest.raises(UserError, match="model_type='bert'"):
        text_transformer_from_config({**m.config, "model_type": "bert"})
    with pytest.raises(UserError, match="no such config file"):
        text_transformer_from_config(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not a readable JSON config"):
        text_transformer_from_config(tmp_path / "bad.json")


# ---- learnable, and the configs fit together

def accuracy(m: TextTransformer, dataset) -> float:
    m.eval()
    b = default_collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        pred = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.argmax(1)
    m.train()
    return (pred == b["labels"]).float().mean().item()


def test_sentiment_is_learnable_in_a_few_hundred_steps_negation_included():
    # 250 AdamW steps of 32: about 1 s on 2 CPU cores (0.99 val accuracy at seed 0; >= 0.98 at seeds 0-4)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        data = splits("sentiment")
        m = model()
        opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
        loader = DataLoader(data["train"], batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
        step = 0
        while step < 250:
            for b in loader:
                y = b.pop("labels")
                loss = torch.nn.functional.cross_entropy(m(**b).logits, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                if step == 250:
                    break
    finally:
        torch.set_num_threads(threads)
    assert accuracy(m, data["val"]) >= 0.85
    negated = [i for i, t in enumerate(data["val"].texts) if NEGATION in t.split()]
    assert len(negated) > 50
    # a model that ignored `not` would get these all wrong: the tokens look at each other
    assert accuracy(m, torch.utils.data.Subset(data["val"], negated)) >= 0.8


def test_text_experiments_compose_and_their_models_fit_together():
    pre, fine = compose_config("experiment=pretrain_text"), compose_config("experiment=text_classifier")
    assert pre.source.path is None and pre.data.target["topics"] == ["sport", "food"]
    assert fine.data.target["topics"] == ["weather", "music"]  # the same task on sentences the source never saw
    assert pre.data.target["task"] == fine.data.target["task"] == "sentiment"
    assert fine.source.path == "pkg://transfer_pipeline/assets/text_transformer_sport_food.safetensors"
    assert fine.mapping.expect.missing == [] and fine.mapping.expect.min_loaded == 1.0
    assert fine.freeze.frozen == ["embeddings.*"] and fine.freeze.trainable is None
    for cfg in (pre, fine):
        assert cfg.data.target["_target_"] == "transfer_pipeline.data.toy_text.splits"
        args = {k: v for k, v in cfg.data.target.items() if k != "_target_"}
        assert len(splits(**args)["classes"]) == cfg.model["num_classes"]
        assert cfg.model["output"] == "logits"
    target = TextTransformer(**{k: v for k, v in fine.model.items() if k not in ("_target_", "output")})
    assert len([n for n, _ in target.named_parameters() if n.startswith("embeddings.")]) == 4


def test_shipped_text_asset_fits_the_model_config():
    from safetensors.torch import load_file

    assert os.path.getsize(ASSET) < 1_000_000
    node = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "text_transformer.yaml"))
    args = {k: v for k, v in node.items() if k not in ("_target_", "output")}
    TextTransformer(**args).load_state_dict(load_file(ASSET))  # strict: every tensor, same shapes
