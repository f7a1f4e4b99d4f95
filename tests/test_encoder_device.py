"""The pipeline's encoder runs on CUDA when the machine has one (issue 8, item 4)."""

from __future__ import annotations

import torch

import gmt_model.data.encoder as encoder_mod
from assets.resources import EncoderResource


def _device_used(monkeypatch, cuda: bool, **cfg) -> object:
    seen = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(encoder_mod, "get_encoder", lambda name, **kw: seen.update(kw) or "encoder")
    assert EncoderResource(cache_dir="/tmp/enc-cache", **cfg).get() == "encoder"
    return seen["device"]


def test_pipeline_encoder_uses_cuda_when_present(monkeypatch):
    assert _device_used(monkeypatch, cuda=True) == "cuda"
    assert _device_used(monkeypatch, cuda=False) is None  # CPU: the ONNX backend
    assert _device_used(monkeypatch, cuda=True, device="cpu") == "cpu"  # an explicit setting wins
