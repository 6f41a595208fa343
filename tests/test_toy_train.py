"""The toy model's training command: the worker count and a resume never change what is trained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from freeatm.runtime.toy import train

SMALL = ["--batch-size", "4", "--warmup", "2", "--log-every", "1", "--eval-captions", "0"]


def run(out: Path, *extra: str) -> dict[str, torch.Tensor]:
    train.main(["--out", str(out), *SMALL, *extra])
    return load_file(out / "unet" / "diffusion_pytorch_model.safetensors")


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_rendering_ahead_in_workers_trains_the_same_weights(tmp_path: Path) -> None:
    inline = run(tmp_path / "inline", "--steps", "3")
    ahead = run(tmp_path / "ahead", "--steps", "3", "--workers", "2")
    assert_same(inline, ahead)


def test_resume_from_the_training_state_is_bit_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    straight = run(tmp_path / "straight", "--steps", "4")
    state = tmp_path / "state.pt"
    # The state is written at step 2 only (the end is saved as weights), as if the run had died after step 2.
    run(tmp_path / "resumed", "--steps", "4", "--save-every", "2", "--state", str(state))
    assert torch.load(state, weights_only=False)["step"] == 2
    capsys.readouterr()
    resumed = run(tmp_path / "resumed", "--steps", "4", "--save-every", "2", "--state", str(state))
    assert "after step 2" in capsys.readouterr().out
    assert_same(straight, resumed)
