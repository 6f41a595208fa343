"""Train ``toy://shapes`` from scratch on ShapesBench scenes.

    python -m freeatm.runtime.toy.train --out runtime/toy/weights --device cuda --workers 4
    python -m freeatm.runtime.toy.train --variant clutter --init runtime/toy/weights \
        --out runtime/toy/weights-clutter --threads 2

A v-prediction pixel-space diffusion model: AdamW with linear warm-up then cosine decay, caption
dropout for classifier-free guidance, an exponential moving average (EMA) of the weights. The EMA
pipeline is saved with ``save_pretrained`` (and every ``--save-every`` steps on the way), then scored
by the share of the prompted objects it draws on evaluation captions. ``--variant clutter`` trains on the
clutter scenes with the vocabulary of both variants; ``--init`` may then name a plain model, whose words keep
their embeddings (the new words' and positions' start at the mean of the learnt ones).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from freeatm.runtime.shapes import VARIANTS, render
from freeatm.runtime.toy.pipeline import PixelTextToImagePipeline, build_random_pipeline, scheduler_config
from freeatm.runtime.toy.quality import drawn_object_share, eval_captions, generate, save_grid

console = Console()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the saved EMA pipeline")
    parser.add_argument("--variant", choices=VARIANTS, default="plain", help="the ShapesBench scenes to draw")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--caption-dropout", type=float, default=0.1, help="share of empty captions")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the weights, the noise and the scene stream"
    )
    parser.add_argument("--init", type=Path, help="start from this saved pipeline instead of random weights")
    parser.add_argument(
        "--state",
        type=Path,
        help="training-state file: written every --save-every steps, resumed from if present",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="torch device for training, e.g. cuda")
    parser.add_argument(
        "--workers", type=int, default=0, help="processes rendering scene batches ahead (0: in the loop)"
    )
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--save-every", type=int, default=500, help="0: save only at the end")
    parser.add_argument("--eval-captions", type=int, default=128, help="0: skip the final evaluation")
    parser.add_argument("--samples", type=Path, help="PNG grid of samples for the evaluation captions")
    return parser.parse_args(argv)


class EMA:
    """Exponential moving average of a set of parameters, with the usual short-run warm-up."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float) -> None:
        self.params = params
        self.shadow = [p.detach().clone() for p in params]
        self.decay = decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Blend the current parameters into the average after optimiser step ``step`` (1-based)."""
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - decay)

    def state_dict(self) -> dict[str, Any]:
        """The averaged values, for checkpoints."""
        return {"shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the averaged values of :meth:`state_dict`."""
        self.shadow = [value.clone() for value in state["shadow"]]

    @torch.no_grad()
    def copy_to(self, params: list[torch.nn.Parameter]) -> None:
        """Write the averaged values into ``params`` (same order as at construction)."""
        for target, value in zip(params, self.shadow, strict=True):
            target.copy_(value)


def scene_batch(
    seed: int, step: int, batch_size: int, variant: str = "plain"
) -> tuple[torch.Tensor, list[str]]:
    """Training batch ``step`` of the `variant` scene stream ``seed``: images in [-1, 1] (B x 3 x H x W) and
    captions."""
    scenes = [render(seed, step * batch_size + i, variant=variant) for i in range(batch_size)]
    pixels = np.stack([s.image for s in scenes]).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), [s.caption for s in scenes]


class SceneBatches(torch.utils.data.Dataset):
    """Training batch ``step`` of the scene stream ``seed``, for a ``DataLoader`` that renders ahead."""

    def __init__(self, seed: int, batch_size: int, variant: str) -> None:
        self.seed = seed
        self.batch_size = batch_size
        self.variant = variant

    def __getitem__(self, step: int) -> tuple[torch.Tensor, list[str]]:
        return scene_batch(self.seed, step, self.batch_size, self.variant)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def save_ema(pipe: PixelTextToImagePipeline, ema: EMA, out: Path, variant: str) -> PixelTextToImagePipeline:
    """Save a CPU copy of ``pipe`` (drawing `variant`) carrying the EMA weights to ``out``; return that copy."""
    snapshot = build_random_pipeline(variant=variant)
    snapshot.unet.load_state_dict(pipe.unet.state_dict())
    snapshot.text_encoder.load_state_dict(pipe.text_encoder.state_dict())
    ema.copy_to(trainable(snapshot))
    snapshot.save_pretrained(out)
    return snapshot


def save_state(
    path: Path,
    step: int,
    pipe: PixelTextToImagePipeline,
    generator: torch.Generator,
    stateful: dict[str, Any],
) -> None:
    """Write everything needed to resume after ``step`` steps (models, optimiser, EMA, RNG) atomically."""
    state = {
        "step": step,
        "unet": pipe.unet.state_dict(),
        "text_encoder": pipe.text_encoder.state_dict(),
        "generator": generator.get_state(),
        **{name: obj.state_dict() for name, obj in stateful.items()},
    }
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    partial.replace(path)


@torch.no_grad()
def start_from(init: Path, variant: str) -> PixelTextToImagePipeline:
    """The pipeline for `variant` starting from the weights saved at `init`. When `init` was trained with fewer
    words or positions (a plain model), the shared token ids keep their embeddings (the toy tokenizers give the
    plain words the same ids) and the new rows start at the mean of the learnt ones."""
    saved = PixelTextToImagePipeline.from_pretrained(init)
    pipe = build_random_pipeline(variant=variant)
    pipe.unet.load_state_dict(saved.unet.state_dict())
    target = pipe.text_encoder.state_dict()
    for name, value in saved.text_encoder.state_dict().items():
        rows = value.shape[0]
        if value.shape == target[name].shape:
            target[name] = value
        elif value.ndim == 2 and value.shape[1] == target[name].shape[1] and rows < target[name].shape[0]:
            vocab = saved.tokenizer.get_vocab()
            if any(pipe.tokenizer.get_vocab().get(word) != i for word, i in vocab.items()):
                raise ValueError(f"{init}: its token ids are not a prefix of the {variant} tokenizer's")
            extra = value.mean(0, keepdim=True).expand(target[name].shape[0] - rows, -1)
            target[name] = torch.cat([value, extra])
        else:
            raise ValueError(
                f"{init}: {name} has shape {tuple(value.shape)}, expected {tuple(target[name].shape)}"
            )
    pipe.text_encoder.load_state_dict(target)
    return pipe


def trainable(pipe: PixelTextToImagePipeline) -> list[torch.nn.Parameter]:
    """The trained parameters: UNet, then text encoder."""
    return [*pipe.unet.parameters(), *pipe.text_encoder.parameters()]


def train(args: argparse.Namespace) -> PixelTextToImagePipeline:
    """Run the training loop; return the EMA pipeline (also saved to ``args.out``)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if args.init:
        pipe = start_from(args.init, args.variant)
    else:
        pipe = build_random_pipeline(seed=args.seed, variant=args.variant)
    pipe.to(device)
    pipe.unet.train()
    pipe.text_encoder.train()
    params = trainable(pipe)
    noise_schedule = DDPMScheduler(**scheduler_config())
    optimiser = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: lr_factor(s, args.warmup, args.steps))
    ema = EMA(params, args.ema_decay)
    generator = torch.Generator().manual_seed(args.seed)
    stateful = {"optimiser": optimiser, "schedule": schedule, "ema": ema}
    first = 0
    if args.state and args.state.exists():
        state = torch.load(args.state, map_location=device, weights_only=False)
        pipe.unet.load_state_dict(state["unet"])
        pipe.text_encoder.load_state_dict(state["text_encoder"])
        for name, obj in stateful.items():
            obj.load_state_dict(state[name])
        generator.set_state(state["generator"])
        first = state["step"]
        console.log(f"resumed from {args.state} after step {first}")
    console.log(f"training {sum(p.numel() for p in params):,} parameters for {args.steps} steps")

    columns = (
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    # Batch ``step`` depends only on (seed, step), so the worker count never changes what is trained on.
    batches = torch.utils.data.DataLoader(
        SceneBatches(args.seed, args.batch_size, args.variant),
        batch_size=None,
        sampler=range(first, args.steps),
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
    )
    started, running = time.monotonic(), 0.0
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("train", total=args.steps, completed=first, loss=float("nan"))
        for step, (images, captions) in enumerate(batches, start=first):
            drop = torch.rand(len(captions), generator=generator) < args.caption_dropout
            captions = ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]
            # Noise and timesteps come from the CPU generator, so the random stream is the same on every device.
            noise = torch.randn(images.shape, generator=generator)
            t = torch.randint(
                0, noise_schedule.config.num_train_timesteps, (len(images),), generator=generator
            )
            images, noise, t = images.to(device), noise.to(device), t.to(device)
            noisy = noise_schedule.add_noise(images, noise, t)
            target = noise_schedule.get_velocity(images, noise, t)

            prediction = pipe.unet(
                noisy, t, encoder_hidden_states=pipe.encode_prompt(captions, device)
            ).sample
            loss = torch.nn.functional.mse_loss(prediction, target)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            schedule.step()
            ema.update(step + 1)

            running = loss.item() if step == first else 0.98 * running + 0.02 * loss.item()
            progress.update(task, advance=1, loss=running)
            if (step + 1) % args.log_every == 0:
                elapsed = time.monotonic() - started
                console.log(
                    f"step {step + 1}/{args.steps} loss {running:.4f} lr {schedule.get_last_lr()[0]:.2e} "
                    f"{elapsed / (step + 1 - first):.2f} s/step"
                )
            if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < args.steps:
                save_ema(pipe, ema, args.out, args.variant)
                if args.state:
                    save_state(args.state, step + 1, pipe, generator, stateful)
                console.log(f"saved EMA weights of step {step + 1} to {args.out}")

    final = save_ema(pipe, ema, args.out, args.variant)
    console.log(f"saved EMA weights to {args.out} after {time.monotonic() - started:.0f} s")
    return final


def main(argv: list[str] | None = None) -> None:
    """Train, save, and report the drawn-object share on the evaluation captions."""
    args = parse_args(argv)
    pipe = train(args)
    if args.eval_captions:
        pipe.set_progress_bar_config(disable=True)
        captions = eval_captions(args.eval_captions, args.variant)
        images = generate(pipe, captions)
        share = drawn_object_share(images, captions, args.variant)
        console.log(f"drawn-object share on {len(captions)} captions: {share:.3f}")
        if args.samples:
            save_grid(images, args.samples)
            console.log(f"samples written to {args.samples}")


if __name__ == "__main__":
    main()
