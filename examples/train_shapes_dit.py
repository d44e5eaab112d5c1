"""Train the bigger proxy DiT (`shapes_dit.py`: 8 blocks, hidden 384, 256 tokens) on procedurally generated shapes.

    python examples/train_shapes_dit.py [--steps 12000] [--batch 256] [--out examples/checkpoints/shapes_dit.safetensors]
    torchrun --nproc-per-node 4 examples/train_shapes_dit.py --compile --minutes 8 --lr 6e-4   # data parallel
    ... --steps 40000 --state /tmp/run.pt --stop-minutes 9, then the same with --resume     # longer than one call

Under `torchrun` each process trains on its own GPU with its own shapes and noise (`--batch` is per process, so the
batch seen by a step is `--batch` × processes), gradients averaged by `DistributedDataParallel`; rank 0 saves the
checkpoint and draws the final samples. The learning rate is not scaled with the processes: 1e-3 at 4 × 256 diverged
after 7000 steps on four H200s (benchmarks/RESULTS.md, 2026-11-26 session 10), while 6e-4 at 256 was stable.

Meant for a GPU (bf16 autocast; the shapes are drawn on the GPU, fresh every step: no image is seen twice;
`--compile` halves the step, 72 → 32 ms on an H200); on a CPU use `--steps 2 --batch 4 --samples 10
--classifier-steps 2 --classifier /tmp/c.safetensors` to check that it runs. Where the quality classifier's file
is missing it is trained first (`shapes_dit.train_classifier`: 46 s on an H200 for 0.996 held-out accuracy; 1500
steps on a 2-core CPU took 23 minutes for 0.82). Standard DDPM objective (predict the noise, MSE, cosine schedule),
AdamW with a warm-up and cosine learning rate, EMA of the weights, saved in bf16 (47 MB: over the ~40 MB a
repository should carry, so it is rebuilt, not shipped). Seeded: the same command on the same kind of GPU gives
the same checkpoint up to the GPU's nondeterminism (`--minutes` fits the step count to the machine and prints it;
`--steps` with that count gives the same run but for the warm-up of the first 150 steps). Prints the loss and, at
the end, the class accuracy of `--samples` samples (25 DDIM steps) by the shipped classifier. Not trained enough
yet: 6.2 minutes on an H200 (11716 steps at lr 6e-4) reach 0.53 dense class accuracy; 8 minutes of two H200s
(9574 steps of 2 × 256 at lr 5e-4) 0.54 unguided and 0.75 at guidance 2 (benchmarks/RESULTS.md, 2026-11-26, session
11). `--minutes` undershoots: its count comes from steps 51-150, and later steps ran 24-30% slower on several GPUs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from shapes import CLASSES, SIZE, make_shapes  # noqa: E402
from shapes_dit import (  # noqa: E402
    CHECKPOINT, CLASSIFIER, NULL_LABEL, TRAIN_TIMESTEPS, build_model, classify, load_classifier, sample, sample_quality,
    train_classifier,
)  # fmt: skip


def train_and_save_classifier(path: Path, steps: int, device: str) -> None:
    """The quality function's classifier, on fresh shapes; its accuracy on 2000 shapes it never saw is printed."""
    from safetensors.torch import save_file

    started = time.perf_counter()
    classifier = train_classifier(steps=steps, batch=256, device=device)
    images, labels = make_shapes(2000, seed=987_654_321)
    accuracy = (classify(images, classifier.cpu()) == labels).float().mean().item()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()}, str(path))
    print(f"classifier: {steps} steps in {time.perf_counter() - started:.0f} s, held-out accuracy {accuracy:.3f}; "
          f"saved {path}", flush=True)  # fmt: skip


def warmup_cosine(step: int, steps: int, warmup: float = 0.05) -> float:
    """The learning rate's factor: linear warm-up over the first 5% of the steps, then a cosine down to zero."""
    warm = max(1, int(warmup * steps))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))


def save_bf16(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in model.state_dict().items()}, str(path))


def save_state(path: Path, model: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer,
               schedule: torch.optim.lr_scheduler.LRScheduler, step: int, steps: int) -> None:
    """What --resume needs, written beside and then moved over `path`, so a stopped write leaves the last state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "step": step, "steps": steps}, partial)  # fmt: skip
    os.replace(partial, path)


def out_of_time(started: float, minutes: float, step: int, processes: int, device: str) -> bool:
    """Whether this call's time is up; under torchrun all processes stop at the same step (agreed every 50 steps,
    whoever is out of time first)."""
    if processes == 1:
        return time.perf_counter() - started >= minutes * 60
    if step % 50:
        return False
    import torch.distributed as dist

    late = torch.tensor([float(time.perf_counter() - started >= minutes * 60)], device=device)
    dist.all_reduce(late, op=dist.ReduceOp.MAX)
    return bool(late.item())


def start_processes() -> tuple[int, int, str]:
    """(rank, processes, device): one process per GPU under torchrun (NCCL; gloo on a CPU), else (0, 1, the GPU)."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes == 1:
        return 0, 1, "cuda" if torch.cuda.is_available() else "cpu"
    import torch.distributed as dist

    local = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    # rank 0 may train the quality classifier first (a minute on a GPU) while the others wait in DDP's first broadcast
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=datetime.timedelta(hours=1))
    return dist.get_rank(), processes, f"cuda:{local}" if torch.cuda.is_available() else "cpu"


def agreed_step_count(steps: int, processes: int, device: str) -> int:
    """The fewest of the processes' step counts: each times its own steps, and all must stop at the same one."""
    if processes == 1:
        return steps
    import torch.distributed as dist

    count = torch.tensor([steps], device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MIN)
    return int(count.item())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12000)
    parser.add_argument("--batch", type=int, default=256, help="per process (under torchrun, per GPU)")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--out", type=Path, default=CHECKPOINT)
    parser.add_argument("--samples", type=int, default=200, help="how many samples the final check draws")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0],
                        help="classifier-free guidance scales the final check samples with, each in turn")
    parser.add_argument("--classifier-steps", type=int, default=6000,
                        help="steps of the quality classifier, trained first where its file is missing")
    parser.add_argument("--classifier", type=Path, default=CLASSIFIER)
    parser.add_argument("--compile", action="store_true", help="train through torch.compile (same steps, faster)")
    parser.add_argument("--minutes", type=float, help="fit the step count to this time budget, measured over the "
                        "steps 51-150 (at most --steps; the count used is printed)")
    parser.add_argument("--save-every", type=int, default=0, metavar="N",
                        help="also save the weights every N steps, as <out>.step<N>.safetensors: a run that diverges "
                        "late keeps what it had learned (0: only at the end)")
    parser.add_argument("--state", type=Path, help="the whole training state (fp32 weights, EMA, optimizer, step), "
                        "saved when the run ends or stops and at --save-every")
    parser.add_argument("--resume", action="store_true", help="go on with the run saved in --state: its step, step "
                        "count and learning-rate schedule (--steps and --minutes then change nothing)")
    parser.add_argument("--stop-minutes", type=float, help="stop this call after so many minutes, its state saved in "
                        "--state: a run longer than one machine call goes on with --resume")
    args = parser.parse_args()
    if (args.resume or args.stop_minutes is not None) and args.state is None:
        parser.error("--resume and --stop-minutes need --state")
    rank, processes, device = start_processes()
    torch.manual_seed(0)  # the model's initial weights (under torchrun DDP gives every process rank 0's)
    if rank == 0 and not args.classifier.exists():
        train_and_save_classifier(args.classifier, args.classifier_steps, device)
    model = build_model().to(device).train()
    ema = copy.deepcopy(model).eval()
    parameters, ema_parameters = list(model.parameters()), list(ema.parameters())
    trained = model
    if processes > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=[torch.device(device).index] if "cuda" in device else None)
        torch.manual_seed(1 + rank)  # the label drop-out (diffusers' LabelEmbedding) draws from the global generator
    forward = torch.compile(trained) if args.compile else trained
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    total = {"steps": args.steps}  # --minutes may lower it at step 151, still inside the warm-up
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total["steps"]))
    from diffusers import DDPMScheduler

    noise_schedule = DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="squaredcos_cap_v2")
    generator = torch.Generator(device=device).manual_seed(rank)  # rank 0 alone: the single-process run's draws
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if "cuda" in device else contextlib.nullcontext()
    step = 0
    if args.resume:
        state = torch.load(args.state, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, total["steps"] = state["step"], state["steps"]
        generator.manual_seed(1_000_003 * step + rank)  # other noise than the uninterrupted run would draw
        if rank == 0:
            print(f"resumed at step {step}/{total['steps']} from {args.state}", flush=True)
    started = time.perf_counter()
    stopped = False
    while step < total["steps"]:
        if args.stop_minutes is not None and out_of_time(started, args.stop_minutes, step, processes, device):
            stopped = True
            break
        step += 1
        if args.minutes and not args.resume and step in (51, 151):  # time steps 51-150: past compiling and warming up
            torch.cuda.synchronize() if "cuda" in device else None
            now = time.perf_counter()
            if step == 51:
                timed_from = now
            else:
                per_step = (now - timed_from) / 100
                left = args.minutes * 60 - (now - started)
                fitted = min(args.steps, 150 + max(0, int(left / per_step)))
                total["steps"] = agreed_step_count(fitted, processes, device)
                if rank == 0:
                    print(f"{per_step * 1e3:.1f} ms a step: training {total['steps']} steps to fit {args.minutes} min",
                          flush=True)  # fmt: skip
        clean, label = make_shapes(args.batch, seed=step * processes + rank, device=device)
        noise = torch.randn(clean.shape, device=device, generator=generator)
        t = torch.randint(0, TRAIN_TIMESTEPS, (args.batch,), device=device, generator=generator)
        with autocast:
            predicted = forward(hidden_states=noise_schedule.add_noise(clean, noise, t), timestep=t, class_labels=label,
                              return_dict=False)[0]  # fmt: skip
        loss = F.mse_loss(predicted.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_parameters, parameters, 0.002 if step > 1000 else 1.0)
        if rank == 0 and (step % 500 == 0 or step == total["steps"]):
            print(f"step {step}/{total['steps']}  loss {loss.item():.4f}  {time.perf_counter() - started:.0f} s", flush=True)
        if rank == 0 and args.save_every and step % args.save_every == 0 and step < total["steps"]:
            save_bf16(ema, args.out.with_name(f"{args.out.stem}.step{step}{args.out.suffix}"))
            if args.state is not None:
                save_state(args.state, model, ema, optimizer, schedule, step, total["steps"])

    if processes > 1:
        torch.distributed.destroy_process_group()
    if rank != 0:
        return
    if stopped:
        print(f"stopped at step {step}/{total['steps']} after {time.perf_counter() - started:.0f} s; go on with "
              f"--resume --state {args.state}", flush=True)  # fmt: skip
    if args.state is not None:
        save_state(args.state, model, ema, optimizer, schedule, step, total["steps"])
    save_bf16(ema, args.out)
    labels = torch.arange(args.samples, device=device) % len(CLASSES)
    noise = torch.randn(args.samples, 3, SIZE, SIZE, device=device, generator=torch.Generator(device=device).manual_seed(1))
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) after {time.perf_counter() - started:.0f} s")
    classifier = load_classifier(args.classifier)
    for guidance in args.guidance:
        with torch.no_grad():
            samples = sample(ema, labels, noise, guidance=guidance, null_label=NULL_LABEL)
        quality = sample_quality(samples, labels, classifier=classifier)
        print(f"class accuracy of {args.samples} samples, guidance {guidance}: {quality['class_accuracy']:.2f}")


if __name__ == "__main__":
    main()
