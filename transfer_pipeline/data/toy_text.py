"""A tokenized toy text task, made on the spot: no download, the same sentences for the same seed.

Every sentence names one thing of one of four topics (sport, food, weather, music) and says
something good or bad about it, sometimes negated:

    the match was not very good          topic: sport    sentiment: negative
    i did not find the soup awful        topic: food     sentiment: positive
    what a lovely storm                  topic: weather  sentiment: positive

So one vocabulary serves two tasks: `task="topic"` (4 classes, the pretext task a text
transformer is pretrained on, `experiment=pretrain_text`) and `task="sentiment"` (2 classes, the
downstream task it is fine-tuned on, `experiment=text_classifier`). The sentiment of a negated
sentence is the opposite of its adjective's, and the `not` is sometimes several words away from
the adjective, so a bag of words cannot solve it: the tokens must look at each other (attention).

`splits(...)` is a `data._target_` for the pipeline: it returns `{"train", "val", "test",
"classes"}`, each split a Dataset of dicts `{"input_ids", "attention_mask", "labels"}` as a
Hugging Face tokenizer + datasets would give them; `dataset.texts[i]` is the sentence of item i.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence

import torch
from torch.utils.data import Dataset

from ..schema.checks import check_count, check_number
from ..errors import UserError, did_you_mean

PAD_ID = 0
UNK_ID = 1
PAD, UNK = "<pad>", "<unk>"

TOPICS: dict[str, tuple[str, ...]] = {
    "sport": ("game", "team", "match", "goal", "player"),
    "food": ("pizza", "soup", "cake", "dinner", "bread"),
    "weather": ("rain", "sun", "storm", "weather", "wind"),
    "music": ("song", "band", "concert", "album", "guitar"),
}
POSITIVE = ("good", "great", "lovely", "wonderful", "amazing")
NEGATIVE = ("bad", "awful", "terrible", "boring", "horrible")
INTENSIFIERS = ("very", "really", "so", "quite")
NEGATION = "not"
# {neg} is "" or "not", {adv} "" or an intensifier; "what a ..." is never negated
TEMPLATES = (
    "the {noun} was {neg} {adv} {adj}",
    "i think the {noun} is {neg} {adv} {adj}",
    "this {noun} is {neg} {adv} {adj} today",
    "it was {neg} a {adv} {adj} {noun}",
    "i did {neg} find the {noun} {adv} {adj}",
    "what a {adv} {adj} {noun}",
)
FILLERS = ("the", "was", "i", "think", "is", "this", "today", "it", "a", "did", "find", "what")

TASKS: dict[str, list[str]] = {
    "topic": list(TOPICS),
    "sentiment": ["negative", "positive"],  # label 0 = negative, 1 = positive (as in SST-2)
}
MAX_WORDS = max(len(t.split()) for t in TEMPLATES)  # the longest sentence, in words (= tokens)


class Vocab:
    """A word-level tokenizer: lower-cased whitespace words -> ids; 0 is padding, 1 an unknown word."""

    def __init__(self, words: Iterable[str]) -> None:
        self.itos: list[str] = [PAD, UNK]
        for w in words:
            if w not in self.itos:
                self.itos.append(w)
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: object) -> bool:
        return word in self.stoi

    def tokenize(self, text: str) -> list[str]:
        return text.lower().split()

    def encode(self, text: str, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), LongTensors [max_len]: padded with 0 at the end (mask 0), or cut at max_len."""
        check_count("max_len", max_len, 1)
        ids = [self.stoi.get(w, UNK_ID) for w in self.tokenize(text)][:max_len]
        pad = max_len - len(ids)
        return (torch.tensor(ids + [PAD_ID] * pad, dtype=torch.long),
                torch.tensor([1] * len(ids) + [0] * pad, dtype=torch.long))

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The words of `ids`, padding left out."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return " ".join(self.itos[i] for i in ids if i != PAD_ID)


VOCAB = Vocab([*FILLERS, NEGATION, *INTENSIFIERS, *POSITIVE, *NEGATIVE,
               *(w for nouns in TOPICS.values() for w in nouns)])
VOCAB_SIZE = len(VOCAB)  # conf/model/text_transformer.yaml's vocab_size (a test checks they agree)


def vocab() -> Vocab:
    """The toy task's tokenizer (the same object every call)."""
    return VOCAB


def all_sentences(topics: Sequence[str] | None = None) -> list[tuple[str, int, int]]:
    """Every sentence the templates make about `topics` (default all), once, in a fixed order.

    Rows are (text, topic label, sentiment label); the topic label is the index in TOPICS
    whatever `topics` holds.
    """
    out = []
    chosen = list(TOPICS) if topics is None else list(topics)
    nouns = [(t, noun) for t, topic in enumerate(TOPICS) if topic in chosen for noun in TOPICS[topic]]
    for template in TEMPLATES:
        negations = ("", NEGATION) if "{neg}" in template else ("",)
        for (t, noun), adj, adv, neg in itertools.product(nouns, [*POSITIVE, *NEGATIVE], ("", *INTENSIFIERS),
                                                          negations):
            text = " ".join(template.format(noun=noun, adj=adj, adv=adv, neg=neg).split())
            positive = (adj in POSITIVE) != bool(neg)
            out.append((text, t, int(positive)))
    return out


class ToyTextDataset(Dataset):
    """Tokenized sentences: item i is {"input_ids": [max_len], "attention_mask": [max_len], "labels": int}."""

    augmented = False  # the same tokens every epoch: trainer.cache_features may cache a frozen encoder's outputs

    def __init__(self, texts: Sequence[str], labels: Sequence[int], classes: Sequence[str], max_len: int,
                 tokenizer: Vocab = VOCAB) -> None:
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts and {len(labels)} labels")
        self.texts = list(texts)
        self.labels = [int(y) for y in labels]
        self.classes = list(classes)
        self.max_len = max_len
        encoded = [tokenizer.encode(t, max_len) for t in self.texts]
        self.input_ids = torch.stack([e[0] for e in encoded]) if encoded else torch.zeros(0, max_len, dtype=torch.long)
        self.attention_mask = (torch.stack([e[1] for e in encoded]) if encoded
                               else torch.zeros(0, max_len, dtype=torch.long))

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i], "labels": self.labels[i]}


def splits(task: str = "sentiment", num_samples: int = 1200, max_len: int = 16, seed: int = 0,
           val_fraction: float = 0.2, test_fraction: float = 0.2, topics: Sequence[str] | None = None) -> dict:
    """`{"train", "val", "test", "classes"}`: `num_samples` distinct sentences, drawn and split by `seed`.

    task: "sentiment" (classes negative, positive) or "topic" (sport, food, weather, music).
    topics: only the sentences about these topics (null: all four), e.g. sentiment on sport and
    food for a source model and on weather and music for its target; with task="topic" the
    classes are these topics, in this order.

    The same seed (and topics) draws the same sentences for both tasks, only the labels differ.
    No sentence is in two splits. `test_fraction=0` leaves the "test" split out. Arguments are
    checked with the names they have as config keys (`data.task`, `data.num_samples` ...).
    """
    if not isinstance(task, str) or task not in TASKS:
        hint = did_you_mean(task, TASKS) if isinstance(task, str) else ""
        raise UserError(f"data.task={task!r}: the toy text task is one of {', '.join(TASKS)}.{hint}")
    if topics is not None:
        if isinstance(topics, str) or not isinstance(topics, Iterable):
            raise UserError(f"data.topics={topics!r}: a list of topics, e.g. [sport, food] (null: all of "
                            f"{', '.join(TOPICS)}).")
        topics = list(topics)
        for i, t in enumerate(topics):
            if t not in TOPICS:
                hint = did_you_mean(t, TOPICS) if isinstance(t, str) else ""
                raise UserError(f"data.topics[{i}]={t!r}: the toy topics are {', '.join(TOPICS)}.{hint}")
        if not topics or len(set(topics)) != len(topics) or (task == "topic" and len(topics) < 2):
            raise UserError(f"data.topics={topics}: each topic at most once, at least "
                            f"{'two (the classes of task=topic)' if task == 'topic' else 'one'}; null = all.")
    pool = all_sentences(topics)
    check_count("data.num_samples", num_samples, 3, len(pool),
                want=f"a whole number of sentences from 3 to {len(pool)} (the distinct sentences the toy "
                     "generator makes)")
    check_count("data.max_len", max_len, MAX_WORDS,
                want=f"a whole number of tokens >= {MAX_WORDS} (the longest toy sentence; shorter would cut "
                     "the words that decide the label)")
    check_count("data.seed", seed, 0)
    check_number("data.val_fraction", val_fraction, 0, 1, low_open=True, high_open=True)
    check_number("data.test_fraction", test_fraction, 0, 1, high_open=True)
    n_val, n_test = round(num_samples * val_fraction), round(num_samples * test_fraction)
    n_train = num_samples - n_val - n_test
    if n_val < 1 or (test_fraction > 0 and n_test < 1) or n_train < 1:
        raise UserError(f"data.val_fraction={val_fraction}, data.test_fraction={test_fraction}, "
                        f"data.num_samples={num_samples}: give {n_train} train, {n_val} val and {n_test} test "
                        "samples; every split needs at least one (lower the fractions or raise data.num_samples).")

    chosen = random.Random(seed).sample(pool, num_samples)
    if task == "topic":
        classes = list(TOPICS) if topics is None else topics
        index = {list(TOPICS).index(t): i for i, t in enumerate(classes)}

        def label(row: tuple[str, int, int]) -> int:
            return index[row[1]]
    else:
        classes = TASKS[task]

        def label(row: tuple[str, int, int]) -> int:
            return row[2]

    def part(rows: list[tuple[str, int, int]]) -> ToyTextDataset:
        return ToyTextDataset([r[0] for r in rows], [label(r) for r in rows], classes, max_len)

    out = {"train": part(chosen[:n_train]), "val": part(chosen[n_train:n_train + n_val])}
    if test_fraction > 0:
        out["test"] = part(chosen[n_train + n_val:])
    out["classes"] = list(classes)
    return out
