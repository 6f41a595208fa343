"""What attention capture costs: images per second and peak memory with capture vs without.

    python benchmarks/generation.py [--batch 16] [--steps 10] [--repeats 3] [--sd] [--quick]
    python benchmarks/generation.py --family sd15|sdxl|sd3|flux [--family ...] [--scale 8] [--latent 64]

Each workload is timed in this one process with the same seeds, the two variants interleaved
(plain, capture, plain, capture, …) after one warm-up of each, the median of the repetitions compared:

* ``toy`` (without ``--family``) — the whole dataset path (:class:`freeatm.runtime.generate.sampler.Sampler`:
  pipeline call, capture, masks) of the toy pipeline (random weights, same architecture as ``toy://shapes``)
  at 32 px, a batch of 16, 10 DDIM steps, capture of the 16×16 layers with modifiers;
* ``sd15`` (``--sd`` or ``--family sd15``; minutes on a CPU) — denoising steps of a UNet shaped like Stable
  Diffusion 1.5's (860 M parameters, random weights) at 128 px (a 16×16 latent), classifier-free guidance
  (UNet batch 2), capture of the two resolutions that correspond to SD's default 16×16 and 32×32 at 512 px
  (4×4 and 8×8 here: the same UNet levels);
* ``sdxl``, ``sd3``, ``flux`` (``--family``) — the whole dataset path of that family's random pipeline
  (:mod:`freeatm.runtime.toy.families`, every width multiplied by ``--scale``) at a ``--latent`` × ``--latent``
  latent (the real ones: 128 for SDXL, SD3 and FLUX at 1024 px) with ``--family-steps`` steps and a batch of
  ``--family-batch``, with each family's default capture (SDXL: the
  cross-attention layers of the two deepest levels; SD3: every joint block; FLUX: the double-stream blocks),
  guidance 3.5 (classifier-free for SDXL and SD3, FLUX's distilled guidance input).

The ratio compares the median process CPU time per call on a CPU (one thread: the work done, not the
neighbours' load on a shared machine; the wall-clock ratio is reported beside it) and wall time on a GPU.
Peak memory is what the torch profiler saw allocated above the start of one call (CPU allocations; on a GPU,
``torch.cuda.max_memory_allocated``). Each workload prints ``capture_overhead_ratio`` (capture / plain); the
last line is a JSON object whose ``capture_overhead_ratio`` is the largest of them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def peak_memory(fn: Callable[[], Any], device: str) -> int:
    """Bytes allocated at the peak of `fn()` above what was allocated when it started."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    current = peak = 0
    for event in events:
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def interleaved(
    variants: dict[str, Callable[[], Any]], repeats: int, device: str
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(wall seconds, CPU seconds of this process) of each variant per repetition, the variants alternating;
    one untimed warm-up each."""
    for fn in variants.values():
        fn()
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            if device == "cuda":
                torch.cuda.synchronize()
            began, began_cpu = time.perf_counter(), time.process_time()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            wall[name].append(time.perf_counter() - began)
            cpu[name].append(time.process_time() - began_cpu)
    return wall, cpu


def toy_workload(
    batch: int, steps: int, device: str
) -> tuple[dict[str, Callable[[], Any]], int, dict[str, Any]]:
    from freeatm.api.synthetic_dataset import Attention, Generation
    from freeatm.runtime.generate.prompts import ShapesPrompts
    from freeatm.runtime.generate.sampler import Sampler, sample_seed
    from freeatm.runtime.toy import build_random_pipeline

    pipe = build_random_pipeline(seed=0).to(device)
    generation = Generation(images=batch, resolution=32, steps=steps, guidance_scale=1.0, batch_size=batch)
    attention = Attention(resolutions=[16], timesteps=(0.0, 1.0), modifiers=True)
    source = ShapesPrompts(0)
    items = [source.item(i) for i in range(batch)]
    indices = list(range(batch))
    seeds = [sample_seed(0, i) for i in indices]
    plain = Sampler(pipe, generation, attention, capture=False)

    def run_plain() -> None:
        plain.generate(items, indices, seeds)

    def run_capture() -> None:
        # install for the call and remove after, so that the plain variant really runs without capture
        with Sampler(pipe, generation, attention) as sampler:
            sampler.generate(items, indices, seeds)

    setup = {
        "model": "toy (random weights)",
        "resolution": 32,
        "batch": batch,
        "steps": steps,
        "captured": [16],
    }
    return {"plain": run_plain, "capture": run_capture}, batch, setup


def sd15_unet_config() -> dict[str, Any]:
    """Stable Diffusion 1.5's UNet2DConditionModel config."""
    return {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
    }


def sd15_workload(
    latent: int, steps: int, device: str
) -> tuple[dict[str, Callable[[], Any]], int, dict[str, Any]]:
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from freeatm.runtime.generate.capture import AttentionStore, Capture

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**sd15_unet_config()).to(device).eval()
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    text = torch.randn(2, 77, 768, generator=torch.Generator().manual_seed(1)).to(device)  # [uncond, cond]
    noise = torch.randn(1, 4, latent, latent, generator=torch.Generator().manual_seed(2)).to(device)
    columns = torch.tensor([[2, 3, 5]], device=device)
    levels = [latent // 4, latent // 2]  # SD's 16 and 32 at 512 px: UNet levels 2 and 1

    @torch.no_grad()
    def denoise(store: AttentionStore | None) -> torch.Tensor:
        scheduler.set_timesteps(steps)
        x = noise * scheduler.init_noise_sigma
        if store is not None:
            store.begin(1, True, columns)
        for t in scheduler.timesteps:
            out = unet(torch.cat([x, x]), t, encoder_hidden_states=text).sample
            uncond, cond = out.chunk(2)
            x = scheduler.step(uncond + 7.5 * (cond - uncond), t, x).prev_sample
        if store is not None:
            store.maps()
            store.end()
        return x

    def run_plain() -> None:
        denoise(None)

    def run_capture() -> None:
        store = AttentionStore(levels, (0.0, 1.0))
        with Capture(unet, store, latent, lambda: len(scheduler.timesteps)):
            denoise(store)

    params = sum(p.numel() for p in unet.parameters())
    setup = {"model": f"SD-1.5-shaped UNet ({params / 1e6:.0f} M, random)", "latent": latent, "steps": steps,
             "guidance": 7.5, "captured": levels}  # fmt: skip
    return {"plain": run_plain, "capture": run_capture}, 1, setup


def family_workload(
    family: str, scale: int, latent: int, steps: int, batch: int, device: str
) -> tuple[dict[str, Callable[[], Any]], int, dict[str, Any]]:
    from freeatm.api.synthetic_dataset import Attention, Generation
    from freeatm.runtime.generate.prompts import ShapesPrompts
    from freeatm.runtime.generate.sampler import Sampler, sample_seed
    from freeatm.runtime.toy.families import BUILDERS

    pipe = BUILDERS[family](seed=0, scale=scale).to(device)
    transformer = family in ("sd3", "flux")
    resolution = latent * pipe.vae_scale_factor
    generation = Generation(
        images=batch, resolution=resolution, steps=steps, guidance_scale=3.5, batch_size=batch,
        scheduler="flow-euler" if transformer else "ddim",
    )  # fmt: skip
    attention = Attention(resolutions=[latent // 4, latent // 2], modifiers=True)
    source = ShapesPrompts(0)
    items = [source.item(i) for i in range(batch)]
    indices = list(range(batch))
    seeds = [sample_seed(0, i) for i in indices]
    plain = Sampler(pipe, generation, attention, capture=False)

    def run_plain() -> None:
        plain.generate(items, indices, seeds)

    def run_capture() -> None:
        with Sampler(pipe, generation, attention) as sampler:
            sampler.generate(items, indices, seeds)

    with Sampler(pipe, generation, attention) as probe:
        captured = len(probe.capture.layers) if probe.capture is not None else 0
    denoiser = pipe.transformer if transformer else pipe.unet
    params = sum(p.numel() for p in denoiser.parameters())
    setup = {"model": f"{family} random ({params / 1e6:.1f} M denoiser parameters, scale {scale})",
             "resolution": resolution, "latent": latent, "batch": batch, "steps": steps,
             "captured_layers": captured}  # fmt: skip
    return {"plain": run_plain, "capture": run_capture}, batch, setup


def measure(
    name: str,
    workload: tuple,  # type: ignore[type-arg]
    repeats: int,
    device: str,
) -> dict[str, Any]:
    variants, images, setup = workload
    wall, cpu = interleaved(variants, repeats, device)
    memory = {k: peak_memory(fn, device) for k, fn in variants.items()}
    # On a shared CPU the wall clock measures the neighbours too: compare the CPU time this process spent
    # (the work done, with one thread); on a GPU compare the wall clock.
    times = wall if device == "cuda" else cpu
    plain, capture = statistics.median(times["plain"]), statistics.median(times["capture"])
    result = {
        "setup": setup,
        "basis": "wall seconds" if device == "cuda" else "process CPU seconds",
        "images_per_second": {"plain": round(images / plain, 3), "capture": round(images / capture, 3)},
        "wall_seconds": {k: [round(t, 3) for t in v] for k, v in wall.items()},
        "cpu_seconds": {k: [round(t, 3) for t in v] for k, v in cpu.items()},
        "wall_ratio": round(statistics.median(wall["capture"]) / statistics.median(wall["plain"]), 4),
        "peak_memory_kib": {k: round(v / 1024) for k, v in memory.items()},
        "overhead_ratio": round(capture / plain, 4),
    }
    print(
        f"{name:5s} {setup['model']}: plain {images / plain:.2f} img/s, capture {images / capture:.2f} img/s "
        f"(capture_overhead_ratio {capture / plain:.3f}); "
        f"peak memory plain {memory['plain'] / 1024:.0f} KiB, "
        f"capture {memory['capture'] / 1024:.0f} KiB",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="toy batch size")
    parser.add_argument("--steps", type=int, default=10, help="toy denoising steps")
    parser.add_argument("--quick", action="store_true", help="a smoke run: batch 8, 4 steps, 2 repetitions")
    parser.add_argument("--sd", action="store_true", help="also time the SD-1.5-shaped UNet (slow on a CPU)")
    parser.add_argument("--family", action="append", choices=["sd15", "sdxl", "sd3", "flux"],
                        help="time this family instead of the toy (repeatable)")  # fmt: skip
    parser.add_argument("--scale", type=int, default=8, help="width multiplier of the family pipelines")
    parser.add_argument("--latent", type=int, default=64, help="latent size of the family pipelines")
    parser.add_argument("--family-steps", type=int, default=4, help="denoising steps of the family pipelines")
    parser.add_argument("--family-batch", type=int, default=2, help="batch of the family pipelines")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    repeats = 2 if args.quick else args.repeats
    batch, steps = (8, 4) if args.quick else (args.batch, args.steps)
    results: dict[str, Any] = {"device": device, "threads": args.threads}
    ratios = []
    for family in args.family or []:
        if family == "sd15":
            workload = sd15_workload(16, 2 if args.quick else 3, device)
        else:
            workload = family_workload(
                family, args.scale, args.latent, args.family_steps, args.family_batch, device
            )
        results[family] = measure(family, workload, repeats, device)
        ratios.append(results[family]["overhead_ratio"])
    if not args.family:
        results["toy"] = measure("toy", toy_workload(batch, steps, device), repeats, device)
        ratios.append(results["toy"]["overhead_ratio"])
        if args.sd:
            results["sd15"] = measure(
                "sd15", sd15_workload(16, 2 if args.quick else 3, device), repeats, device
            )
            ratios.append(results["sd15"]["overhead_ratio"])
    results["capture_overhead_ratio"] = max(ratios)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
