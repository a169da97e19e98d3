"""The PyTorch twin of bench_recurrent.py, run as a worker in its own process (PyTorch is not a dependency of
samediff_py): it builds the models once, then answers commands on stdin, one line each:

    <case> <steps>      run ``steps`` timed training steps of ``lstm``, ``conv`` or ``conv_wide``; prints a
                        JSON list of ms
    quit

    build/bench-venv/bin/python bench/torch_recurrent.py '{"batch": 16, "time": 64, ...}'

Same architecture, sizes, data and optimiser (Adam) as the samediff_py side:

- lstm: ``nn.LSTM(batch_first=True)`` over ``pack_padded_sequence`` (right padding, per-row lengths), the
  packed outputs padded back, masked mean over time, a linear head, mean squared error;
- conv: three ``nn.Conv1d`` (kernel 3, 'same' padding) with ReLU, the input zeroed at padded steps before
  every convolution (``x * mask``), masked mean over time, a linear head, mean squared error;
- conv_wide: the same at width ``wide`` (when the config has it), on the batch's ``x_wide``.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class LSTMModel(nn.Module):
    def __init__(self, d: int, h: int, out: int):
        super().__init__()
        self.lstm = nn.LSTM(d, h, batch_first=True)
        self.head = nn.Linear(h, out)

    def forward(self, x, lengths, mask):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        y, _ = self.lstm(packed)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        pooled = y.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.head(pooled)


class ConvModel(nn.Module):
    def __init__(self, d: int, out: int, layers: int = 3, k: int = 3):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(d, d, k, padding=k // 2) for _ in range(layers))
        self.head = nn.Linear(d, out)

    def forward(self, x, lengths, mask):
        m = mask[:, None, :]  # [B, 1, T]
        h = x.transpose(1, 2)  # [B, C, T]
        for conv in self.convs:
            h = torch.relu(conv(h * m))
        pooled = (h * m).sum(2) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.head(pooled)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    torch.set_num_threads(int(cfg.get("threads", 1)))
    torch.manual_seed(0)
    data = np.load(cfg["data"])
    x, mask, y = (torch.from_numpy(data[k]) for k in ("x", "mask", "y"))
    inputs = {"lstm": x, "conv": x}
    lengths = mask.sum(1).long()
    models = {
        "lstm": LSTMModel(cfg["width"], cfg["hidden"], cfg["out"]),
        "conv": ConvModel(cfg["width"], cfg["out"]),
    }
    if "wide" in cfg:
        models["conv_wide"] = ConvModel(cfg["wide"], cfg["out"])
        inputs["conv_wide"] = torch.from_numpy(data["x_wide"])
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}

    def step(case: str) -> float:
        model, opt = models[case], opts[case]
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = ((model(inputs[case], lengths, mask) - y) ** 2).mean()
        loss.backward()
        opt.step()
        return (time.perf_counter() - t0) * 1e3

    print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] == "quit":
            break
        case, n = parts[0], int(parts[1])
        print(json.dumps([step(case) for _ in range(n)]), flush=True)


if __name__ == "__main__":
    main()
