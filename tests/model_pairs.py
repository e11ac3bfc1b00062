"""Five source -> target model pairs as users bring them: the same network in another codebase's layout.

Each `Pair` holds a source model (its weights the checkpoint), a target model, the op rules that no
rename can express, the renames that names and module order cannot decide (ALBERT's two LayerNorms:
mapping.suggest lists them as ambiguous), and an input both take. Used by
tests/e2e/test_mapping_pairs.py (suggested rules load everything, verify passes, a broken load fails)
and benchmarks/bench_mapping_aids.py (what each aid costs). Real library layers throughout; the
models are small so every pair runs in about a second on a CPU.

1. `mobilenet`: torchvision's MobileNetV2 into timm's (`BatchNormAct2d`: norm and activation fused).
2. `albert`: a Hugging Face ALBERT into a plain `nn.TransformerEncoder` (q/k/v into one `in_proj`).
3. `pitch`: a residual pitch CNN into a refactored layout whose block bodies hold no skip.
4. `lstm`: a two-layer `nn.LSTM` into a streaming model that steps two `nn.LSTMCell`s.
5. `crnn`: a CRNN into `Conv2dNormActivation` blocks and one bidirectional LSTM per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


@dataclass
class Pair:
    source: nn.Module
    target: nn.Module
    inputs: Any
    op_rules: list[dict[str, Any]] = field(default_factory=list)  # what only an op rule can say
    # renames that names, shapes and module order cannot decide (mapping.suggest lists them as ambiguous)
    hand_rules: list[dict[str, Any]] = field(default_factory=list)
    source_output: int | str | None = None  # where the source model's comparable output is (model.output)


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm/LayerNorm affine values and running statistics: a swapped norm then shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.LayerNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


# --- 1. torchvision MobileNetV2 -> timm ----------------------------------------------------------------------

def mobilenet() -> Pair:
    import timm
    import torchvision

    torch.manual_seed(0)
    source = randomise_norms(torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5))
    target = timm.create_model("mobilenetv2_050", num_classes=10, pretrained=False).eval()
    return Pair(source, target, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))


# --- 2. ALBERT -> nn.TransformerEncoder ----------------------------------------------------------------------

class EncoderLM(nn.Module):
    """ALBERT's computation written with torch's own layers: factorised embeddings, one encoder layer."""

    def __init__(self, vocab: int = 100, embed: int = 16, hidden: int = 32, heads: int = 4, ff: int = 64,
                 positions: int = 64) -> None:
        super().__init__()
        self.tokens, self.positions, self.segments = nn.Embedding(vocab, embed), nn.Embedding(positions, embed), \
            nn.Embedding(2, embed)
        self.embed_norm = nn.LayerNorm(embed, eps=1e-12)
        self.project = nn.Linear(embed, hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, ff, dropout=0.0, activation="gelu", batch_first=True,
                                           layer_norm_eps=1e-12)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(pos) + self.segments(torch.zeros_like(input_ids))
        return self.encoder(self.project(self.embed_norm(x)))


def albert() -> Pair:
    from transformers import AlbertConfig, AlbertModel

    config = AlbertConfig(vocab_size=100, embedding_size=16, hidden_size=32, num_hidden_layers=1,
                          num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, hidden_act="gelu",
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, type_vocab_size=2)
    torch.manual_seed(0)
    source = randomise_norms(AlbertModel(config, add_pooling_layer=False))
    layer = r"encoder\.albert_layer_groups\.0\.albert_layers\.0\.attention\."
    qkv = [{"op": "concat", "from": [layer + f"{p}\\.{kind}" for p in ("query", "key", "value")],
            "to": f"encoder.layers.0.self_attn.in_proj_{kind}"} for kind in ("weight", "bias")]
    # ALBERT declares full_layer_layer_norm (applied last) before attention.LayerNorm: module order says the
    # opposite of the call order, so the suggestion lists the two as ambiguous and a person names them
    norms = [{"from": layer.replace("attention\\.", "") + "attention\\.LayerNorm\\.(\\w+)",
              "to": "encoder.layers.0.norm1.\\1"},
             {"from": layer.replace("attention\\.", "") + "full_layer_layer_norm\\.(\\w+)",
              "to": "encoder.layers.0.norm2.\\1"}]
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    return Pair(source, randomise_norms(EncoderLM(), seed=1), ids, qkv, norms, source_output="last_hidden_state")


# --- 3. residual pitch CNN -> refactored blocks --------------------------------------------------------------

class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv1d(c, c, 5, padding=2, bias=False), nn.BatchNorm1d(c)
        self.conv2, self.bn2 = nn.Conv1d(c, c, 5, padding=2, bias=False), nn.BatchNorm1d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class PitchCNN(nn.Module):
    def __init__(self, c: int = 16, bins: int = 24) -> None:
        super().__init__()
        self.stem = nn.Conv1d(1, c, 7, padding=3)
        self.res1, self.res2, self.res3 = ResBlock(c), ResBlock(c), ResBlock(c)
        self.out = nn.Conv1d(c, bins, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.res3(self.res2(self.res1(self.stem(x)))))


class Stage(nn.Module):
    """The refactor: the block's layers in `body` (no skip); the stage adds the skip."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(c, c, 5, padding=2, bias=False), nn.BatchNorm1d(c), nn.ReLU(),
                                  nn.Conv1d(c, c, 5, padding=2, bias=False), nn.BatchNorm1d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class PitchNet(nn.Module):
    def __init__(self, c: int = 16, bins: int = 24) -> None:
        super().__init__()
        self.input = nn.Conv1d(1, c, 7, padding=3)
        self.stages = nn.Sequential(Stage(c), Stage(c), Stage(c))
        self.classifier = nn.Conv1d(c, bins, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.stages(self.input(x)))


def pitch() -> Pair:
    torch.manual_seed(0)
    return Pair(randomise_norms(PitchCNN()), randomise_norms(PitchNet(), seed=1),
                torch.randn(2, 1, 128, generator=torch.Generator().manual_seed(1)))


# --- 4. nn.LSTM -> streaming LSTMCells ------------------------------------------------------------------------

class Tagger(nn.Module):
    def __init__(self, features: int = 8, hidden: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.proj = nn.Linear(features, hidden)
        self.lstm = nn.LSTM(hidden, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.proj(x))[0])


class StackedCells(nn.Module):
    """One time step through stacked LSTMCells: called once per step, carrying (h, c) per layer."""

    def __init__(self, size: int, layers: int) -> None:
        super().__init__()
        self.cells = nn.ModuleList(nn.LSTMCell(size, size) for _ in range(layers))

    def forward(self, x: torch.Tensor, state: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        for i, cell in enumerate(self.cells):
            state[i] = cell(x, state[i])
            x = state[i][0]
        return x


class StreamingTagger(nn.Module):
    def __init__(self, features: int = 8, hidden: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.input_proj = nn.Linear(features, hidden)
        self.rnn = StackedCells(hidden, 2)
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_proj(x)
        zeros = x.new_zeros(x.shape[0], x.shape[2])
        state = [(zeros, zeros) for _ in self.rnn.cells]
        steps = [self.rnn(x[:, t], state) for t in range(x.shape[1])]
        return self.classifier(torch.stack(steps, dim=1))


def lstm() -> Pair:
    torch.manual_seed(0)
    return Pair(Tagger().eval(), StreamingTagger().eval(), torch.randn(2, 7, 8, generator=torch.Generator().manual_seed(1)))


# --- 5. CRNN -> Conv2dNormActivation + one BiLSTM per layer -----------------------------------------------------

class CRNN(nn.Module):
    def __init__(self, hidden: int = 16, classes: int = 11) -> None:
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                 nn.ReLU(), nn.MaxPool2d((4, 1)))
        self.rnn = nn.LSTM(16 * 2, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.fc = nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.cnn(x)  # (B, C, H, W): the width is the time axis
        return self.fc(self.rnn(f.flatten(1, 2).transpose(1, 2))[0])


class BlockCRNN(nn.Module):
    def __init__(self, hidden: int = 16, classes: int = 11) -> None:
        from torchvision.ops import Conv2dNormActivation

        super().__init__()
        self.features = nn.Sequential(Conv2dNormActivation(1, 8, 3), nn.MaxPool2d(2), Conv2dNormActivation(8, 16, 3),
                                      nn.MaxPool2d((4, 1)))
        self.recurrent = nn.ModuleList([nn.LSTM(32, hidden, bidirectional=True, batch_first=True),
                                        nn.LSTM(2 * hidden, hidden, bidirectional=True, batch_first=True)])
        self.classifier = nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1, 2).transpose(1, 2)
        for layer in self.recurrent:
            x = layer(x)[0]
        return self.classifier(x)


def crnn() -> Pair:
    torch.manual_seed(0)
    return Pair(randomise_norms(CRNN()), randomise_norms(BlockCRNN(), seed=1),
                torch.randn(2, 1, 16, 20, generator=torch.Generator().manual_seed(1)))


PAIRS: dict[str, Callable[[], Pair]] = {"mobilenet": mobilenet, "albert": albert, "pitch": pitch, "lstm": lstm,
                                        "crnn": crnn}


def source_of(name: str) -> nn.Module:
    """A pair's source model, for `source.model: {_target_: model_pairs.source_of, name: ...}` in a run."""
    return PAIRS[name]().source


def target_of(name: str) -> nn.Module:
    """A pair's target model, for `model: {_target_: model_pairs.target_of, name: ...}` in a run."""
    return PAIRS[name]().target
