"""The Silero voice-activity detector (16 kHz branch) as a plain torch module.

The network follows the description in the ``silero-vad`` package (MIT licence):
a learned STFT as a strided convolution, four convolution blocks, an LSTM cell
whose state the caller carries from chunk to chunk, and a sigmoid head. The
parameter names match the publisher's ``silero_vad_16k.safetensors`` file.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

SAMPLE_RATE = 16_000
CHUNK_SAMPLES = 512
CONTEXT_SAMPLES = 64
WINDOW_SAMPLES = CONTEXT_SAMPLES + CHUNK_SAMPLES
HIDDEN_SIZE = 128
_FILTER_LENGTH = 256
_HOP_LENGTH = 128
_FREQUENCY_BINS = _FILTER_LENGTH // 2 + 1

TORCHSCRIPT_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^_model\.stft\.forward_basis_buffer$", "stft_conv.weight"),
    (r"^_model\.encoder\.0\.reparam_conv\.", "conv1."),
    (r"^_model\.encoder\.1\.reparam_conv\.", "conv2."),
    (r"^_model\.encoder\.2\.reparam_conv\.", "conv3."),
    (r"^_model\.encoder\.3\.reparam_conv\.", "conv4."),
    (r"^_model\.decoder\.rnn\.", "lstm_cell."),
    (r"^_model\.decoder\.decoder\.2\.", "final_conv."),
)
"""Rename rules from the publisher's TorchScript state dict to this module."""


class SileroVad16k(nn.Module):
    """Speech probability of one 32 ms chunk of 16 kHz audio.

    ``forward`` takes a window of 576 samples (the last 64 samples of the
    previous chunk, zeros at first, then the 512-sample chunk) and the LSTM
    state returned by the previous call, and returns the speech probability
    and the new state. :func:`speech_probabilities` runs a whole recording.

    Examples
    --------
    >>> model = SileroVad16k().eval()
    >>> window = torch.zeros(1, WINDOW_SAMPLES)
    >>> probability, state = model(window, torch.zeros(2, 1, HIDDEN_SIZE))
    >>> tuple(probability.shape), tuple(state.shape)
    ((1, 1), (2, 1, 128))
    """

    def __init__(self) -> None:
        super().__init__()
        self.stft_conv = nn.Conv1d(
            1, 2 * _FREQUENCY_BINS, _FILTER_LENGTH, stride=_HOP_LENGTH, bias=False
        )
        self.conv1 = nn.Conv1d(_FREQUENCY_BINS, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, HIDDEN_SIZE, 3, padding=1)
        self.lstm_cell = nn.LSTMCell(HIDDEN_SIZE, HIDDEN_SIZE)
        self.final_conv = nn.Conv1d(HIDDEN_SIZE, 1, 1)

    def forward(
        self, window: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(probability, state)`` for a batch of 576-sample windows."""
        padded = functional.pad(window, (0, CONTEXT_SAMPLES), mode="reflect")
        spectrum = self.stft_conv(padded.unsqueeze(1))
        real = spectrum[:, :_FREQUENCY_BINS, :]
        imaginary = spectrum[:, _FREQUENCY_BINS:, :]
        features = torch.sqrt(real**2 + imaginary**2)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features = functional.relu(conv(features))
        hidden, cell = self.lstm_cell(features.squeeze(-1), (state[0], state[1]))
        logits = self.final_conv(functional.relu(hidden).unsqueeze(-1))
        probability = torch.sigmoid(logits).squeeze(1).mean(dim=1, keepdim=True)
        return probability, torch.stack([hidden, cell])


def initial_state(batch_size: int = 1) -> torch.Tensor:
    """Return the zero LSTM state that starts a recording.

    Examples
    --------
    >>> tuple(initial_state(3).shape)
    (2, 3, 128)
    """
    return torch.zeros(2, batch_size, HIDDEN_SIZE)


def speech_probabilities(model: nn.Module, audio: torch.Tensor) -> torch.Tensor:
    """Run a model chunk by chunk over 16 kHz mono audio, carrying its state.

    The audio is zero-padded to a whole number of 512-sample chunks; the
    result holds one probability per chunk.

    Examples
    --------
    >>> model = SileroVad16k().eval()
    >>> tuple(speech_probabilities(model, torch.zeros(1000)).shape)
    (2,)
    """
    remainder = audio.numel() % CHUNK_SAMPLES
    if remainder:
        audio = functional.pad(audio, (0, CHUNK_SAMPLES - remainder))
    audio = functional.pad(audio.reshape(1, -1), (CONTEXT_SAMPLES, 0))
    state = initial_state()
    probabilities = []
    with torch.no_grad():
        for start in range(CONTEXT_SAMPLES, audio.shape[1], CHUNK_SAMPLES):
            window = audio[:, start - CONTEXT_SAMPLES : start + CHUNK_SAMPLES]
            probability, state = model(window, state)
            probabilities.append(probability.reshape(()))
    return torch.stack(probabilities)
