"""The ``protoscope`` command: the dashboard, dataset-scale jobs, and training and shipping the built-in models.

    protoscope app                                  # the dashboard (streamlit run app.py, warmed: ui.serve)
    protoscope explain digits folder/ --methods gradcam,cam --block B4 --out maps/
    protoscope evaluate digits folder/ --methods gradcam,cam --metrics confidence,deletion --out eval/
    protoscope fit digits train_folder/ --depth B234 --per-class 5      # into .cache/prototypes/, read by the pages
    protoscope sanity digits folder/ --methods gradcam,spectral_residual --out sanity/
    (each also with --device, and explain, evaluate and fit with --engine ray [--ray-address auto|host:port])

The shipping commands (``python -m explainers.cli ...`` is the same as ``protoscope ...``):

    python -m explainers.cli train digits        # reproduces assets/digits_resnet.pt
    python -m explainers.cli train digits_marked # reproduces assets/digits_marked_resnet.pt
    python -m explainers.cli train digits_vit    # reproduces assets/digits_vit.pt (about 4 minutes on 2 idle cores)
    python -m explainers.cli prototypes digits   # reproduces digits' files in assets/prototypes/ from those weights
    python -m explainers.cli qsenn digits        # reproduces digits' file in assets/qsenn/ (Concepts' default layer)
    python -m explainers.cli prototypes digits_marked   # the same for digits_marked (each model's files its own)
    python -m explainers.cli qsenn digits_marked

The digits network itself, its weights' path and its input are ``explainers.models.builtin.digits``; this module
is the command line on top of the library (it imports it; nothing in the library imports it).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.datasets import dataset_splits, load_dataset
from .evaluation import METRICS, SANITY_MODES, EvaluationSettings
from .fitted.alignment import (
    accuracy_filename,
    accuracy_models,
    accuracy_table,
    alignment_filename,
    alignment_models,
    alignment_table,
    projection_filename,
    save_projection,
    stored_projection,
    write_rows,
)
from .fitted.checks import model_labels
from .fitted.features import FeatureCache
from .fitted.prototypes import cache_key, embeddings, fit_prototypes
from .fitted.qsenn import (
    CONCEPT_SPLITS,
    QSENN,
    QSENNRecipe,
    concept_table,
    concept_table_filename,
    write_concept_table,
)
from .fitted.store import write_atomically
from .jobs import (
    ENGINES,
    EngineOptions,
    JobInterrupted,
    JobReport,
    evaluate_folder,
    explain_folder,
    fit_folder,
    sanity_folder,
)
from .models.builtin.digits import (
    ASSETS,
    DIGITS_CARD,
    DIGITS_DEPTHS,
    DIGITS_MARKED_CARD,
    DIGITS_MARKED_WEIGHTS,
    DIGITS_MEAN,
    DIGITS_STD,
    DIGITS_WEIGHTS,
    DIGITS_WIDTHS,
    DigitsResNet,
    digits_transform,
)
from .models.builtin.digits_vit import DIGITS_VIT_CARD, DIGITS_VIT_CONFIG, DIGITS_VIT_WEIGHTS, digits_vit_network
from .models.loading import load_model
from .runtime import HOME, UserInputError
from .runtime.progress import terminal, with_eta

__all__ = ["DIGITS_CARD", "DIGITS_MARKED_CARD", "DIGITS_MARKED_WEIGHTS", "DIGITS_MEAN", "DIGITS_STD", "DIGITS_WEIGHTS",
           "DigitsResNet", "SHIPPED_FIGURE2_CLASSES", "SHIPPED_FITS", "SHIPPED_PER_CLASS", "TRAINABLE", "accuracy",
           "SHIPPED_MANIFEST", "digits_tensors", "fit_digits", "main", "record_shipped", "run_job", "ship_prototypes",
           "ship_qsenn", "train_digits"]

PROTOTYPES = ASSETS / "prototypes"
# What the prototype pages and the k-means attribution ask for by default (K/C = 5 except KMEx's
# K/C = 1 row of Table 1): Segments at B4 (or B34, B234, B1234 by the sidebar's depth), Figure 1's
# B4 + B234, the Prototypes page's KMEx K/C = 1 and 5, B4, B234, and Figure 2 of classes 0-4.
SHIPPED_FITS = (("pooled", 1), ("pooled", 5), ("B4", 5), ("B34", 5), ("B234", 5), ("B1234", 5))
SHIPPED_PER_CLASS = 5
SHIPPED_FIGURE2_CLASSES = (0, 1, 2, 3, 4)
# In each folder of shipped files: which model's shipping wrote which files (model name -> file names). The
# files are named by hashes of their keys, which say nothing of the model; this is how shipping one model
# knows its own stale files from another model's current ones.
SHIPPED_MANIFEST = "shipped.json"


# What ``train`` can train: each built-in DigitsResNet, trained on the registered dataset of its name,
# with the files its weights and model card are written to.
TRAINABLE = {"digits": (DIGITS_WEIGHTS, DIGITS_CARD), "digits_marked": (DIGITS_MARKED_WEIGHTS, DIGITS_MARKED_CARD),
             "digits_vit": (DIGITS_VIT_WEIGHTS, DIGITS_VIT_CARD)}
# The models that are not a DigitsResNet trained on the dataset of their name: (network, dataset, epochs, lr, what).
OTHER_NETWORKS: dict[str, tuple[Callable[[], nn.Module], str, int, float, str]] = {"digits_vit": (
    digits_vit_network, "digits", 60, 3e-3,
    f"timm VisionTransformer({', '.join(f'{k}={v!r}' for k, v in DIGITS_VIT_CONFIG.items())})")}


def digits_tensors(split: str, dataset: str = "digits") -> tuple[torch.Tensor, torch.Tensor]:
    """A split of ``dataset`` (``digits`` or ``digits_marked``) as normalised 1x64x64 tensors (the
    model's input) and labels."""
    images = load_dataset(dataset, split)
    transform = digits_transform()
    tensors = torch.stack([transform(images[i][0]) for i in range(len(images))])
    return tensors, torch.as_tensor(images.labels)


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Small random rotations, shifts and scalings, as handwriting varies.

    On ``digits_marked`` the mark moves with the digit (it is part of the image): a few pixels, so it
    stays where its class puts it relative to the digit and near its place in the frame; a corner mark
    can be cut partly by the frame (``tests/test_marked.py`` measures how much of it stays)."""
    n = batch.shape[0]
    angle = (torch.rand(n, generator=generator) - 0.5) * math.radians(24)
    scale = 1 + (torch.rand(n, generator=generator) - 0.5) * 0.2
    shift = (torch.rand(n, 2, generator=generator) - 0.5) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    background = -DIGITS_MEAN / DIGITS_STD
    return F.grid_sample(batch - background, grid, align_corners=False, padding_mode="zeros") + background


@torch.inference_mode()
def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """The share of ``images`` whose argmax logit is their label, in batches of ``batch_size``."""
    net.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = net(images[start:start + batch_size])
        correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
    return correct / len(images)


def fit_digits(dataset: str = "digits", epochs: int = 40, seed: int = 0, batch_size: int = 64, lr: float = 3e-3,
               stop_after: int | None = None, network: Callable[[], nn.Module] = DigitsResNet
               ) -> tuple[nn.Module, list[float]]:
    """Train a ``DigitsResNet`` from scratch on ``dataset``'s training split: AdamW, one-cycle learning
    rate over ``epochs``, ``_augment``, label smoothing 0.05, everything seeded by ``seed``. The recipe
    is the same for every dataset, so ``digits`` and ``digits_marked`` differ only in their images.

    ``stop_after`` ends the run after that many epochs of the same schedule (the tests replay the first
    epoch of the shipped run). Returns the network (eval mode) and each epoch's mean training loss."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = digits_tensors("train", dataset)
    test_x, test_y = digits_tensors("test", dataset)
    net = network()  # a DigitsResNet, or the digits ViT (``OTHER_NETWORKS``)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * math.ceil(len(train_x) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    losses: list[float] = []
    for epoch in range(epochs if stop_after is None else min(stop_after, epochs)):
        net.train()
        order = torch.randperm(len(train_x), generator=generator)
        total = 0.0
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            loss = F.cross_entropy(net(_augment(train_x[index], generator)), train_y[index], label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(index)
        losses.append(total / len(train_x))
        if stop_after is None and (epoch % 5 == 4 or epoch == epochs - 1):
            print(f"epoch {epoch + 1:3d}/{epochs}  loss {losses[-1]:.4f}  "
                  f"test accuracy {accuracy(net, test_x, test_y):.4f}", flush=True)
    return net.eval(), losses


def train_digits(model: str = "digits", epochs: int = 40, seed: int = 0, batch_size: int = 64, lr: float = 3e-3,
                 out: Path | None = None, card: Path | None = None) -> dict:
    """Train the built-in model ``model`` (a key of ``TRAINABLE``) on the dataset of its name from
    scratch (``fit_digits``) and write its weights and model card (default: its files in assets/).
    The card records the accuracy on every split of the dataset (``<split>_accuracy``) and the mean
    training loss of the first and the last epoch."""
    out = out or TRAINABLE[model][0]
    card = card or TRAINABLE[model][1]
    network: Callable[[], nn.Module]
    network, dataset, architecture = DigitsResNet, model, (f"DigitsResNet(widths={list(DIGITS_WIDTHS)}, "
                                                            f"depths={list(DIGITS_DEPTHS)}, BasicBlock)")
    if model in OTHER_NETWORKS:
        network, dataset, _, _, architecture = OTHER_NETWORKS[model]
    started = time.perf_counter()
    net, losses = fit_digits(dataset, epochs=epochs, seed=seed, batch_size=batch_size, lr=lr, network=network)
    seconds = time.perf_counter() - started
    splits = {split: digits_tensors(split, dataset) for split in dataset_splits(dataset)}
    measured = {f"{split}_accuracy": round(accuracy(net, *tensors), 4) for split, tensors in splits.items()}
    summary = {
        "model": model,
        "dataset": dataset,
        "architecture": architecture,
        "input_size": [64, 64],
        **measured,  # train_accuracy, test_accuracy, and those of any other split (digits_marked's test_clean, ...)
        "epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr,
        "train_images": len(splits["train"][1]), "test_images": len(splits["test"][1]),
        "training_seconds": round(seconds, 1),
        "first_epoch_loss": round(losses[0], 6),  # the tests replay the first epoch and compare
        "final_loss": round(losses[-1], 6),
        "command": f"python -m explainers.cli train {model}",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out)
    card.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return summary


def ship_prototypes(model_name: str = "digits", out: Path = PROTOTYPES) -> list[Path]:
    """Fit the prototype explainers the pages ask for by default, compute Figure 2 of the default
    classes and Tables 1-2, and write them to ``out`` under the keys the disk cache looks up
    (``fit_prototypes``, ``alignment.stored_*``); files this model shipped before and not now (earlier
    weights or settings) are removed, other models' files are left alone (``record_shipped``).
    Nothing is read from any cache: this is what a fresh machine would compute (the feature cache the
    fits, embeddings and tables share goes to a temporary folder, deleted after)."""
    with tempfile.TemporaryDirectory(prefix="protoscope-ship-") as scratch:
        previous = os.environ.get("PROTOSCOPE_CACHE")
        os.environ["PROTOSCOPE_CACHE"] = scratch
        try:
            return _ship_prototypes(model_name, out)
        finally:
            if previous is None:
                os.environ.pop("PROTOSCOPE_CACHE", None)
            else:
                os.environ["PROTOSCOPE_CACHE"] = previous


def _ship_prototypes(model_name: str, out: Path) -> list[Path]:
    model = load_model(model_name, device="cpu")  # shipped files are the CPU's, as the tests refit them
    if model.dataset is None:
        raise UserInputError(f"{model_name} names no dataset to fit its prototypes on")
    train, test = load_dataset(model.dataset, "train"), load_dataset(model.dataset, "test")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    fitted = {}
    for depth, per_class in SHIPPED_FITS:
        label = f"{depth}, K/C={per_class}"
        explainer = fit_prototypes(model, train, depth, per_class, cache=False, progress=with_eta(terminal(label)))
        path = out / f"{cache_key(model, train, explainer)}.npz"
        explainer.save(path)
        fitted[depth, per_class] = explainer
        written.append(path)
    kmex1, kmex = fitted["pooled", 1], fitted["pooled", SHIPPED_PER_CLASS]
    train_z = embeddings(model, train, progress=terminal("embeddings"))
    table1 = alignment_models(kmex1, kmex)
    written.append(out / alignment_filename(model, train, table1))
    write_rows(written[-1], alignment_table(model, train_z, model_labels(model, train), table1))
    table2 = accuracy_models(kmex, fitted["B4", SHIPPED_PER_CLASS], fitted["B234", SHIPPED_PER_CLASS])
    written.append(out / accuracy_filename(model, train, test, table2))
    write_rows(written[-1], accuracy_table(model, train, test, table2, progress=with_eta(terminal("Table 2"))))
    print("Figure 2: UMAP of classes", ", ".join(map(str, SHIPPED_FIGURE2_CLASSES)), flush=True)
    placed = stored_projection(model, train, test, kmex, SHIPPED_FIGURE2_CLASSES, cache=False,
                               embed=lambda dataset: train_z if dataset is train else embeddings(model, dataset))
    written.append(out / projection_filename(model, train, test, kmex, SHIPPED_FIGURE2_CLASSES))
    save_projection(placed, written[-1])
    record_shipped(out, model_name, written)
    total = sum(path.stat().st_size for path in written)
    for path in written:
        print(f"{path.stat().st_size / 1024:8.1f} KB  {_shown(path)}")
    print(f"{total / 1024:8.1f} KB  in all")
    return written


def ship_qsenn(model_name: str = "digits", out: Path = ASSETS / "qsenn") -> Path:
    """Fit the Concepts page's default layer (post hoc, n_f* = 50, 5 weights per class) and write it to ``out``
    under the key the store looks up (read there, second tier, on a fresh machine); the file this model shipped
    before is removed, other models' are left alone (``record_shipped``). Nothing is read from any cache: the
    features go to a temporary feature cache, deleted after (what a fresh machine would compute)."""
    model = load_model(model_name, device="cpu")  # shipped files are the CPU's, as the tests refit them
    if model.dataset is None:
        raise UserInputError(f"{model_name} names no dataset to fit Q-SENN on")
    train = load_dataset(model.dataset, "train")
    recipe = QSENNRecipe(model, train, QSENN())
    with FeatureCache(model, train, persistent=False) as features:
        layer = QSENN(**recipe.settings).fit(model, train, with_eta(terminal("Q-SENN")),  # type: ignore[arg-type]
                                             features=features)
    path = out / recipe.filename
    out.mkdir(parents=True, exist_ok=True)
    layer.save(path)
    table = ship_concept_table(QSENN.load(path, model), out)  # the layer as the page reads it
    record_shipped(out, model_name, [path, table])
    for written in (path, table):
        print(f"{written.stat().st_size / 1024:8.1f} KB  {_shown(written)}")
    return path


def ship_concept_table(layer: QSENN, out: Path = ASSETS / "qsenn") -> Path:
    """Write the Concepts page's Table 1 of ``layer`` over its model's splits (train, test and any of
    ``CONCEPT_SPLITS``) to ``out``, under the name the page looks up: the page reads it instead of a pass
    over every image in each new server."""
    model = layer.model_
    if model.dataset is None:
        raise UserInputError(f"{model.name} has no dataset of its own to ship Table 1 for")
    splits = {}
    for split in ("train", *CONCEPT_SPLITS):
        try:
            splits[split] = load_dataset(model.dataset, split)
        except UserInputError:  # the dataset has no such split
            continue
    path = out / concept_table_filename(layer, splits)
    write_concept_table(path, concept_table(layer, splits, with_eta(terminal("Table 1"))))
    return path


def _shown(path: Path) -> str:
    """A written file's path for the terminal: relative to the project when inside it (another ``out`` may not be)."""
    return str(path.relative_to(ASSETS.parent)) if path.is_relative_to(ASSETS.parent) else str(path)


def record_shipped(out: Path, model_name: str, written: list[Path]) -> list[Path]:
    """Note in ``out``'s manifest (``SHIPPED_MANIFEST``) that ``written`` are ``model_name``'s shipped files,
    and remove the files its previous shipping wrote that this one did not (earlier weights or settings).
    Files another model's entry names are never removed; a file no entry names is reported, not removed
    (it may be another model's, shipped before there was a manifest). Returns the files removed."""
    manifest_path = out / SHIPPED_MANIFEST
    manifest: dict[str, list[str]] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    names = sorted({path.name for path in written})
    others = {name for model, files in manifest.items() if model != model_name for name in files}
    removed = []
    for name in sorted(set(manifest.get(model_name, [])) - set(names) - others):
        if (out / name).is_file():
            print(f"removed {name} ({model_name}'s, not written by this run: earlier weights or settings)")
            (out / name).unlink()
            removed.append(out / name)
    manifest[model_name] = names
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    write_atomically(manifest_path, lambda temporary: temporary.write_text(text))
    claimed = others | set(names) | {SHIPPED_MANIFEST}
    for path in sorted(out.iterdir()):
        if path.is_file() and path.name not in claimed:
            print(f"note: {path.name} is no model's in {SHIPPED_MANIFEST}: left in place; delete it if it is stale")
    return removed


def _listed(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _engine_arguments(parser: argparse.ArgumentParser, engine: bool = True) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: a GPU when there is one)")
    if not engine:
        return
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="local: this process (default); ray: batches on Ray actors, one model each")
    parser.add_argument("--ray-address", default=None,
                        help="auto (the cluster running here) or host:port; default: a local cluster for this job")
    parser.add_argument("--workers", type=int, default=None, help="Ray actors (default: one per GPU, else per CPU)")
    parser.add_argument("--retries", type=int, default=2, help="times a lost Ray worker is restarted (default 2)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds a --ray-address may take to answer")


def _job_parsers(commands: Any) -> None:
    commands.add_parser("app", help="start the dashboard (streamlit run app.py); other arguments go to streamlit")
    explain = commands.add_parser("explain", help="saliency maps of every image: overlays (PNG), raw maps (.npy), CSV")
    explain.add_argument("model", help="a built-in name (digits), a torchvision or timm: name, or a checkpoint")
    explain.add_argument("images", nargs="+", help="image files, folders (every image below), or a built-in dataset")
    explain.add_argument("--methods", type=_listed, required=True, help="comma-separated registry names")
    explain.add_argument("--block", default="B4")
    explain.add_argument("--target", type=int, default=None, help="class to explain (default: the predicted one)")
    explain.add_argument("--batch", type=int, default=16, help="images per shared trace (default 16)")
    explain.add_argument("--out", type=Path, required=True)
    explain.add_argument("--overwrite", action="store_true", help="replace the outputs of another job in --out")
    _engine_arguments(explain)
    evaluate = commands.add_parser("evaluate", help="the Evaluation page's tables and curves over a folder (CSV, PNG)")
    evaluate.add_argument("model")
    evaluate.add_argument("images", nargs="+")
    evaluate.add_argument("--methods", type=_listed, required=True)
    evaluate.add_argument("--metrics", type=_listed, default=list(METRICS), help=f"among {', '.join(METRICS)}")
    evaluate.add_argument("--block", default="B4")
    evaluate.add_argument("--steps", type=int, default=20, help="deletion / insertion steps")
    evaluate.add_argument("--blur", type=float, default=None, help="insertion blur sigma in pixels (default: measured "
                                                                  "for the model and images, as the page does)")
    evaluate.add_argument("--out", type=Path, required=True)
    evaluate.add_argument("--overwrite", action="store_true")
    _engine_arguments(evaluate)
    fit = commands.add_parser("fit", help="fit k-means prototypes into the cache the pages read (.cache/prototypes/)")
    fit.add_argument("model")
    fit.add_argument("data", help="a training folder (one sub-folder per class) or a built-in dataset")
    fit.add_argument("--depth", default="B234", help="pooled (KMEx), B4, B34, B234 or B1234")
    fit.add_argument("--per-class", type=int, default=5)
    fit.add_argument("--seed", type=int, default=0)
    _engine_arguments(fit)
    sanity = commands.add_parser("sanity", help="model-randomisation sanity check (Adebayo et al.) over images")
    sanity.add_argument("model")
    sanity.add_argument("images", nargs="+")
    sanity.add_argument("--methods", type=_listed, required=True)
    sanity.add_argument("--block", default="B4")
    sanity.add_argument("--mode", choices=SANITY_MODES, default="cascading")
    sanity.add_argument("--out", type=Path, required=True)
    sanity.add_argument("--overwrite", action="store_true")
    _engine_arguments(sanity, engine=False)


def _options(args: argparse.Namespace) -> EngineOptions:
    return EngineOptions(engine=args.engine, address=args.ray_address, workers=args.workers, retries=args.retries,
                         timeout=args.timeout, device=args.device)


def run_job(args: argparse.Namespace) -> int:
    """Run one job command (``args`` from ``main``'s parser); the exit status: 0 done, 1 bad input (one line
    on stderr, no traceback), 3 stopped by a lost worker, 130 stopped by Ctrl-C (outputs whole; rerun resumes)."""
    if args.command == "app":
        # ui.serve: streamlit run app.py, with the libraries and the default model loaded before the first visitor
        return subprocess.call([sys.executable, "-m", "ui.serve", *args.streamlit_arguments], cwd=HOME)
    progress = with_eta(terminal(args.command))
    try:
        report: JobReport
        where: Path | str
        if args.command == "explain":
            report = explain_folder(args.model, args.images, args.methods, args.out, args.block, args.target,
                                    _options(args), args.overwrite, args.batch, progress=progress)
            where = args.out
        elif args.command == "evaluate":
            settings = EvaluationSettings(steps=args.steps, blur_sigma=args.blur)  # None: measured for the folder
            report = evaluate_folder(args.model, args.images, args.methods, args.out, args.block, args.metrics,
                                     settings, _options(args), args.overwrite, progress=progress)
            where = args.out
        elif args.command == "fit":
            report, _ = fit_folder(args.model, args.data, args.depth, args.per_class, args.seed, _options(args),
                                   progress)
            where = ", ".join(map(str, report.outputs)) or "the prototype cache"
        else:
            report = sanity_folder(args.model, args.images, args.methods, args.out, args.block, args.mode,
                                   args.device, args.overwrite, progress=progress)
            where = args.out
    except UserInputError as error:
        print(f"\nprotoscope {args.command}: {error}", file=sys.stderr)
        return 1
    except JobInterrupted as error:
        print(f"\nprotoscope {args.command}: stopped: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"\nprotoscope {args.command}: stopped (Ctrl-C); every file written is whole: run the same command "
              "again to resume", file=sys.stderr)
        return 130
    print(f"protoscope {args.command}: {report.summary()}; written to {where}")
    return 0


JOBS = ("app", "explain", "evaluate", "fit", "sanity")


def main(argv: Sequence[str] | None = None) -> None:
    """The ``protoscope`` command (``python -m explainers.cli``): see the module docstring."""
    parser = argparse.ArgumentParser(prog="protoscope", description=(__doc__ or "").split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _job_parsers(commands)
    train = commands.add_parser("train", help="train a built-in model and write its weights to assets/")
    train.add_argument("model", choices=sorted(TRAINABLE))
    train.add_argument("--epochs", type=int, default=None, help="default: 40 (60 for digits_vit)")
    train.add_argument("--seed", type=int, default=0)
    shipped = commands.add_parser("prototypes", help="fit the prototype pages' defaults and write them to "
                                                     "assets/prototypes/ (read there on a fresh machine)")
    shipped.add_argument("model", choices=sorted(TRAINABLE))
    concepts = commands.add_parser("qsenn", help="fit the Concepts page's default Q-SENN layer and write it to "
                                                 "assets/qsenn/ (read there on a fresh machine)")
    concepts.add_argument("model", choices=sorted(TRAINABLE))
    args, extra = parser.parse_known_args(list(argv) if argv is not None else None)
    if extra and args.command != "app":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.streamlit_arguments = extra
    if args.command in JOBS:
        status = run_job(args)
        if status:
            raise SystemExit(status)
        return
    if args.command == "prototypes":
        ship_prototypes(args.model)
        return
    if args.command == "qsenn":
        ship_qsenn(args.model)
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    np.random.seed(args.seed)
    recipe = OTHER_NETWORKS.get(args.model)
    epochs, lr = (args.epochs or recipe[2], recipe[3]) if recipe else (args.epochs or 40, 3e-3)
    train_digits(args.model, epochs=epochs, seed=args.seed, lr=lr)


if __name__ == "__main__":
    main()
