"""`TextRNN`: one module for every variant, `forward(token_ids, lengths) -> logits`.

Masked recurrent variants read each row only up to its true length, with a formulation that trains and
exports to ONNX the same way (no packed sequences, whose export fixes shapes):

- every layer and direction is a single-layer, one-directional cell run over the whole padded batch;
- the forward direction is causal, so its output at `lengths - 1` never saw a pad;
- the backward direction runs on each row reversed *within its own length* (a gather; pads stay at the
  end), so it too meets the pads only after the real tokens; the same gather puts its outputs back in
  place for the next layer;
- the classifier reads the forward state at `lengths - 1` and the backward state at position 0 (`pool:
  last`), or pools the last layer's outputs over the real steps only (`max`, `mean`, or `attention`: a
  softmax over learned per-step scores), pads excluded by `lengths`.

Adding pad columns to a batch therefore changes no logit. Dropout (`dropout`, `embed_dropout`) draws one
mask per row and channel, shared by every step: a row's mask, like its logits, does not depend on how many
pad columns its batch has, and a pad's zero embedding stays zero.

The unmasked variant (`masked: false`) is the lesson's first model: it reads the padded row to the end,
pads included. `bag` is the mean of the real tokens' embeddings, the baseline that cannot see word order.
"""

from __future__ import annotations

import torch
from torch import nn

from textrnn.config import VariantConfig
from textrnn.tokens import PAD_ID, UNK_ID

EMBEDDING_INIT = 0.05
_CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def init_recurrent(cell: nn.RNNBase) -> None:
    """Start a cell as Keras starts the lesson's: Glorot-uniform input weights, orthogonal recurrent
    weights, zero biases, and an LSTM's forget gate biased open (+1).

    PyTorch's default, uniform ±1/sqrt(hidden) everywhere, gives a 16-unit SimpleRNN a recurrent matrix of
    spectral radius ~0.6, so a state forgets all but the last few tokens and gradients vanish along the
    row; an orthogonal matrix keeps both (tests/model/test_models.py: recalling a row's first token across 60
    steps). It also makes the comparison with the lesson's Keras models one of frameworks, not of recipes.
    """
    for name, parameter in cell.named_parameters():
        if name.startswith("weight_ih"):
            nn.init.xavier_uniform_(parameter)
        elif name.startswith("weight_hh"):
            nn.init.orthogonal_(parameter)
        else:
            nn.init.zeros_(parameter)
    if isinstance(cell, nn.LSTM):
        hidden = cell.hidden_size
        with torch.no_grad():
            # Gates are stacked (input, forget, cell, output); the two biases add, so one of them carries it.
            cell.bias_ih_l0[hidden : 2 * hidden].fill_(1.0)


def _gather_time(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values[b, index[b, t], :] for a [B, T, D] tensor and a [B, T] index."""
    return values.gather(1, index.unsqueeze(-1).expand(-1, -1, values.size(-1)))


def reverse_within_lengths(lengths: torch.Tensor, seq_len: int | torch.Tensor) -> torch.Tensor:
    """[B, T] index that reverses each row's first `lengths[b]` steps and leaves its pads in place.

    It is its own inverse: gathering twice restores the original order.
    """
    steps = torch.arange(seq_len, device=lengths.device).unsqueeze(0)
    lengths = lengths.unsqueeze(1)
    return torch.where(steps < lengths, lengths - 1 - steps, steps)


class TextRNN(nn.Module):
    """A text classifier for one variant config; `forward(token_ids [B, T] int64, lengths [B] int64)`
    returns logits [B, num_classes]. Every length must be in 1..T."""

    def __init__(self, variant: VariantConfig, vocab_size: int, num_classes: int) -> None:
        super().__init__()
        self.variant = variant
        self.vocab_size = vocab_size
        self.num_classes = num_classes
        self.embedding = nn.Embedding(vocab_size, variant.embed_dim, padding_idx=PAD_ID)
        # Small embeddings, as Keras starts them (uniform ±0.05): PyTorch's N(0, 1) saturates the tanh and
        # gates of these small cells, and on AG News costs ~0.3 validation accuracy after two epochs.
        nn.init.uniform_(self.embedding.weight, -EMBEDDING_INIT, EMBEDDING_INIT)
        with torch.no_grad():
            self.embedding.weight[PAD_ID].zero_()
        if variant.cell == "bag":
            self.layers = nn.ModuleList()
            features = variant.embed_dim
        else:
            directions = 2 if variant.bidirectional else 1
            cell = _CELLS[variant.cell]
            self.layers = nn.ModuleList(
                nn.ModuleList(
                    cell(variant.embed_dim if layer == 0 else variant.hidden * directions, variant.hidden, batch_first=True)
                    for _ in range(directions)
                )
                for layer in range(variant.layers)
            )
            for directions_of_layer in self.layers:
                for recurrent in directions_of_layer:
                    init_recurrent(recurrent)
            features = variant.hidden * directions
        self.head = nn.Linear(features + (variant.embed_dim if variant.embedding_skip else 0), num_classes)
        nn.init.xavier_uniform_(self.head.weight)  # Keras' Dense default, as the rest of the recipe
        nn.init.zeros_(self.head.bias)
        if variant.pool == "attention":
            # A learned query dotted with each step's output (no bias: the softmax would cancel it). Zero at
            # first, so attention starts as the mean over the real steps and learns where to look.
            self.attention = nn.Linear(features, 1, bias=False)
            nn.init.zeros_(self.attention.weight)

    def forward(self, token_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(token_ids, lengths), lengths)

    def embed(self, token_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B, T, embed_dim]: the rows' embeddings, after word and embedding dropout in training. Training
        perturbs this tensor for the `adversarial` option (train.py)."""
        token_ids = self._word_dropout(token_ids, lengths, self.variant.token_dropout)
        return self._channel_dropout(self.embedding(token_ids), self.variant.embed_dropout)

    def classify(self, embedded: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes] from embeddings [B, T, embed_dim]."""
        if self.variant.cell == "bag":
            features = self._mean_over_real_steps(embedded, lengths)
        elif self.variant.masked:
            features = self._masked_features(embedded, lengths)
            if self.variant.embedding_skip:
                features = torch.cat([features, self._mean_over_real_steps(embedded, lengths)], dim=-1)
        else:
            features = self._unmasked_features(embedded)
        if self.training and self.variant.dropout > 0:
            features = nn.functional.dropout(features, self.variant.dropout)
        return self.head(features)

    def _word_dropout(self, token_ids: torch.Tensor, lengths: torch.Tensor, p: float) -> torch.Tensor:
        """In training, each real token becomes `[UNK]` with probability `p`: the model cannot lean on any
        one word, and `[UNK]` learns to stand for a word it has not seen. Pads stay pads.

        Extra pad columns change nothing with a fixed seed: the draws are made time-major ([T, B]), so the
        first steps' draws do not depend on how many columns follow, from a generator of their own seeded
        by one draw of the global one, so the later dropout masks do not shift either."""
        if not self.training or p == 0:
            return token_ids
        generator = torch.Generator(device=token_ids.device)
        generator.manual_seed(int(torch.randint(2**62, (1,))))
        draws = torch.rand(token_ids.size(1), token_ids.size(0), device=token_ids.device, generator=generator).t()
        steps = torch.arange(token_ids.size(1), device=lengths.device).unsqueeze(0)
        dropped = (draws < p) & (steps < lengths.unsqueeze(1))
        return token_ids.masked_fill(dropped, UNK_ID)

    def _channel_dropout(self, values: torch.Tensor, p: float) -> torch.Tensor:
        """Dropout of whole channels of a [B, T, D] tensor: one mask per row, the same at every step.

        On embeddings it is spatial dropout (a word vector's dimension is dropped for the whole row, so a
        neighbour cannot stand in for it); between recurrent layers it is variational (locked) dropout,
        which does not inject fresh noise at every step of the recurrence. Either way the mask ([B, 1, D])
        does not depend on the number of pad columns, and a zero (pad) vector stays zero.
        """
        if not self.training or p == 0:
            return values
        keep = values.new_empty(values.size(0), 1, values.size(2)).bernoulli_(1 - p)
        return values * (keep / (1 - p))

    @staticmethod
    def _mean_over_real_steps(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(values.size(1), device=lengths.device).unsqueeze(0)
        real = (steps < lengths.unsqueeze(1)).unsqueeze(-1).to(values.dtype)
        return (values * real).sum(1) / lengths.unsqueeze(1).to(values.dtype)

    def _pool(self, outputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B, F] from the last layer's outputs [B, T, F] over each row's first `lengths[b]` steps only."""
        if self.variant.pool == "mean":
            return self._mean_over_real_steps(outputs, lengths)
        steps = torch.arange(outputs.size(1), device=lengths.device).unsqueeze(0)
        pads = (steps >= lengths.unsqueeze(1)).unsqueeze(-1)
        if self.variant.pool == "max":
            # -inf never wins, and every row has at least one real step (lengths >= 1).
            return outputs.masked_fill(pads, float("-inf")).amax(1)
        weights = self.attention(outputs).masked_fill(pads, float("-inf")).softmax(1)  # [B, T, 1], 0 on pads
        return (weights * outputs).sum(1)

    def _masked_features(self, embedded: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        reverse = reverse_within_lengths(lengths, embedded.size(1)) if self.variant.bidirectional else None
        inputs = embedded
        for layer, directions in enumerate(self.layers):
            if layer:
                inputs = self._channel_dropout(inputs, self.variant.dropout)
            forward_out = directions[0](inputs)[0]
            if reverse is None:
                inputs = forward_out
                continue
            backward_out = _gather_time(directions[1](_gather_time(inputs, reverse))[0], reverse)
            inputs = torch.cat([forward_out, backward_out], dim=-1)
        if self.variant.pool != "last":
            return self._pool(inputs, lengths)
        last = (lengths - 1).view(-1, 1)
        forward_last = _gather_time(inputs[..., : self.variant.hidden], last).squeeze(1)
        if reverse is None:
            return forward_last
        # After un-reversing, position 0 holds the backward direction's state after the whole row.
        return torch.cat([forward_last, inputs[:, 0, self.variant.hidden :]], dim=-1)

    def _unmasked_features(self, embedded: torch.Tensor) -> torch.Tensor:
        inputs = embedded
        for layer, directions in enumerate(self.layers):
            if layer:
                inputs = self._channel_dropout(inputs, self.variant.dropout)
            outputs = [directions[0](inputs)[0]]
            if len(directions) == 2:
                outputs.append(directions[1](inputs.flip(1))[0].flip(1))
            inputs = torch.cat(outputs, dim=-1)
        features = [inputs[:, -1, : self.variant.hidden]]
        if self.variant.bidirectional:
            features.append(inputs[:, 0, self.variant.hidden :])
        return torch.cat(features, dim=-1)


def build_model(variant: VariantConfig, vocab_size: int, num_classes: int) -> TextRNN:
    """The one place a model is built from its config."""
    return TextRNN(variant, vocab_size, num_classes)
