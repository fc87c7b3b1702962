"""ROOT says once, through ``logging``, which matrix shapes have no published Newton–Schulz coefficients."""

from __future__ import annotations

import logging

import torch

from optfit.optim import ROOT
from optfit.optim import newton_schulz as ns


def test_unfitted_shapes_are_logged_once_at_construction(monkeypatch, caplog):
    monkeypatch.setattr(ns, "_warned", set())
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3), torch.nn.Conv2d(3, 5, 3))
    with caplog.at_level(logging.WARNING):
        opt = ROOT(model.parameters(), lr=0.01)
        for p in model.parameters():  # what the steps orthogonalise: no further messages
            if p.ndim >= 2:
                ns.orthogonalize(p.detach().reshape(p.shape[0], -1), 5, "root")
        ROOT(model.parameters(), lr=0.01)  # a second optimizer on the same shapes: nothing new to say
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(6, 7))]})  # a new shape: said once
    records = [r for r in caplog.records if "Newton-Schulz" in r.getMessage()]
    assert [r.name for r in records] == ["optfit.optim.root", "optfit.optim.root"]
    assert all(r.levelno == logging.WARNING for r in records)
    assert "3 matrix shape(s) (4x8, 3x8, 5x27)" in records[0].getMessage()
    assert "1 matrix shape(s) (6x7)" in records[1].getMessage()
