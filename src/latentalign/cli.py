"""The `latentalign` command line."""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
from pathlib import Path

from .embedded import embedded_folder


def _train_world(args: argparse.Namespace) -> int:
    import torch

    from .pipeline import SHAPES_WEIGHTS
    from .training.world import WorldTrainConfig, train_world

    torch.set_num_threads(args.threads)
    given = {"high_noise_share": args.high_noise_share, "seed": args.seed}
    extra = {k: v for k, v in given.items() if v is not None}  # unset: the config's default
    cfg = WorldTrainConfig(vae_steps=args.vae_steps, unet_steps=args.unet_steps, **extra)
    final = train_world(args.out, cfg)
    if args.ship:
        if SHAPES_WEIGHTS.exists():
            shutil.rmtree(SHAPES_WEIGHTS)
        shutil.copytree(final, SHAPES_WEIGHTS)
        print(f"shipped to {SHAPES_WEIGHTS}")
    return 0


def _train_flow(args: argparse.Namespace) -> int:
    from .training.flow import FlowTrainConfig

    extra = {} if args.category_weights is None else {"category_weights": tuple(args.category_weights)}
    cfg = FlowTrainConfig(  # validates before work
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        high_noise_share=args.high_noise_share,
        pair_order=args.pair_order,
        **extra,
    )
    import torch

    from .training.flow import ship_flow, train_flow

    torch.set_num_threads(args.threads)
    final = train_flow(args.out, cfg)
    if args.ship:
        print(f"shipped to {ship_flow(final)}")
    return 0


def _train_scorer(args: argparse.Namespace) -> int:
    from .training.scorer import ScorerTrainConfig

    cfg = ScorerTrainConfig(  # validates before any work
        kind=args.kind,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        pool_size=args.pool_size,
        trajectories=args.trajectories,
        trajectory_share=args.trajectory_share,
        trajectories_per_prompt=args.trajectories_per_prompt,
        ranking_weight=args.ranking_weight,
        init_from=args.init,
        distill_weight=args.distill_weight,
        distill_target=args.distill_target,
        vision_width=args.vision_width,
        vision_layers=args.vision_layers,
        noisy_reads=args.noisy_reads,
        renoise=args.renoise,
        reward_samples=args.reward_samples,
        reward_iterations=args.reward_iterations,
        verdict_weight=args.verdict_weight,
        eval_per_suite=args.eval_per_suite,
        seed=args.seed,
    )

    import torch

    from .pipeline import load_pipeline
    from .scorers.factory import ship_scorer
    from .training.scorer import train_scorer

    if os.environ.get("WORLD_SIZE", "1") == "1":  # one process owns the threads; under accelerate, one each
        torch.set_num_threads(args.threads)
    else:
        torch.set_num_threads(1)
    out = Path(args.out or f"runs/scorer_{args.kind}")
    final = train_scorer(out, cfg, load_pipeline(args.model))
    if args.ship and os.environ.get("RANK", "0") == "0":
        print(f"shipped to {ship_scorer(final, f'shapes-{args.kind}')}")
    return 0


def _train_distill(args: argparse.Namespace) -> int:
    from .training.distill import DistillConfig

    if args.ship and args.student != "latent":
        raise ValueError("--ship ships a latent student (as shapes-latent-distilled); no noisy one is shipped")

    cfg = DistillConfig(  # validates before any work
        teacher=args.teacher,
        student=args.student,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        stem_width=args.stem_width,
        stem_layers=args.stem_layers,
        token_weight=args.token_weight,
        samples=args.samples,
        samples_per_prompt=args.samples_per_prompt,
        renders=args.renders,
        perturb=args.perturb,
        holdout=args.holdout,
        renoise=args.renoise,
        init_from=args.init,
        reward_samples=args.reward_samples,
        reward_iterations=args.reward_iterations,
        eval_per_suite=args.eval_per_suite,
        seed=args.seed,
    )

    import torch

    from .pipeline import load_pipeline
    from .training.distill import distill_latent_clip

    torch.set_num_threads(args.threads)
    final = distill_latent_clip(args.out, cfg, load_pipeline(args.model))
    print(f"saved {final}")
    if args.ship:
        from .scorers.factory import ship_scorer

        print(f"shipped to {ship_scorer(final, 'shapes-latent-distilled')} as shapes-latent-distilled")
    return 0


def _use_device(args: argparse.Namespace) -> None:
    """Refuse a CUDA --device on a machine without one; set the CPU threads (--threads)."""
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no CUDA device is available")
    torch.set_num_threads(args.threads)


def _train_one_step(args: argparse.Namespace) -> int:
    from .training.one_step import OneStepTrainConfig

    cfg = OneStepTrainConfig(  # validates before any work
        pairs=args.pairs, steps=args.steps, batch=args.batch, lr=args.lr, pair_batch=args.pair_batch, seed=args.seed
    )

    from .pipeline import load_pipeline, ship_one_step
    from .training.one_step import train_accuracy, train_one_step

    _use_device(args)
    teacher = load_pipeline(args.model, device=args.device)
    final = train_one_step(args.out, cfg, teacher)
    if args.eval_per_suite > 0:
        student = load_pipeline(str(final), device=args.device)
        report_path = final / "training.json"
        report = json.loads(report_path.read_text())
        seeds = 4
        report["train_accuracy"] = {
            "per_suite_prompts": args.eval_per_suite,
            "seeds": seeds,
            "teacher": train_accuracy(teacher, args.eval_per_suite, seeds),
            "student": train_accuracy(student, args.eval_per_suite, seeds),
        }
        report_path.write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps(report["train_accuracy"], indent=1))
    if args.ship:
        print(f"shipped to {ship_one_step(final)}")
    return 0


def _train_projector(args: argparse.Namespace) -> int:
    from .training.projector import PAPER_SETTINGS, ProjectorTrainConfig

    paper = args.recipe == "paper"
    if paper and args.noise_reward is None:
        raise ValueError("--recipe paper needs --noise-reward FOLDER (from latentalign train noise-reward)")
    if not paper and args.noise_reward is not None:
        raise ValueError("--noise-reward is the paper recipe's reward: pass --recipe paper (or --scorer)")
    if paper and args.scorer is not None:
        raise ValueError("--scorer is the reward recipe's reward; the paper recipe reads --noise-reward")
    if not paper and args.warmup_steps is not None:
        raise ValueError("--warmup-steps is the paper recipe's warm-up: pass --recipe paper")
    from .methods.noise_projection import REWARD_PROJECTOR_NAMES, SHIPPED_PROJECTORS

    short = args.model.removeprefix("shapes-")
    ship_name = f"shapes-projector-paper-{short}" if paper else REWARD_PROJECTOR_NAMES.get(args.model, "")

    if args.ship and ship_name not in SHIPPED_PROJECTORS:
        raise ValueError(f"--ship ships a projector for an embedded pipeline; {args.model!r} has no shipped name")
    options = {"steps": args.steps, "kl_weight": args.kl_weight, "warmup_steps": args.warmup_steps}
    options = {**(PAPER_SETTINGS if paper else {}), **{k: v for k, v in options.items() if v is not None}}
    cfg = ProjectorTrainConfig(  # validates before any work
        recipe=args.recipe, batch=args.batch, lr=args.lr, width=args.width, seed=args.seed,
        **{k: v for k, v in options.items() if v is not None},
    )  # fmt: skip

    from .generation import sampling_defaults
    from .methods.noise_projection import ship_projector
    from .pipeline import load_pipeline
    from .scorers import load_scorer
    from .training.projector import train_projector

    _use_device(args)
    pipe = load_pipeline(args.model, device=args.device)
    if paper:
        from .scorers.noise_reward import load_noise_reward

        scorer_name = args.noise_reward
        scorer = load_noise_reward(args.noise_reward).to(args.device)
    else:
        recommended = sampling_defaults(pipe).for_method("noise-optimization").get("scorer")
        scorer_name = args.scorer or recommended or "shapes-latent"
        scorer = load_scorer(scorer_name, vae=pipe.vae).to(args.device)
    folder = train_projector(args.out, cfg, pipe, scorer, scorer_name=scorer_name)
    if args.ship:
        print(f"shipped to {ship_projector(folder, ship_name)} as {ship_name}")
    return 0


def _train_noise_reward(args: argparse.Namespace) -> int:
    import torch

    from .training.noise_reward import NoiseRewardTrainConfig

    cfg = NoiseRewardTrainConfig(  # validates before any work
        start=args.start, preview_steps=args.preview_steps, prompts=args.prompts,
        seeds_per_prompt=args.seeds_per_prompt, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
    )  # fmt: skip
    from .scorers.factory import check_scorer_source

    check_scorer_source(cfg.start, "start")
    from .pipeline import load_pipeline
    from .training.noise_reward import train_noise_reward

    torch.set_num_threads(args.threads)
    train_noise_reward(args.out or f"runs/noise_reward_{args.model}", cfg, load_pipeline(args.model))
    return 0


def _train_judge(args: argparse.Namespace) -> int:
    from .training.judge import JudgeTrainConfig, resolve_judge

    cfg = JudgeTrainConfig(  # validates before any work
        judge=args.judge,
        prompt_file=args.prompt_file,
        towers=None if args.towers == "none" else args.towers,
        prompts=args.prompts,
        seeds_per_prompt=args.seeds_per_prompt,
        renders=args.renders,
        render_share=args.render_share,
        final_share=args.final_share,
        ranking_weight=args.ranking_weight,
        foresight_weight=args.foresight_weight,
        object_weight=args.object_weight,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
    )
    resolve_judge(cfg.judge)  # a misspelt judge fails before the pipeline loads
    from .scorers.factory import JUDGE_SHIP_NAMES

    if args.ship and args.model not in JUDGE_SHIP_NAMES:
        names = ", ".join(f"{m} ({n})" for m, n in JUDGE_SHIP_NAMES.items())
        raise ValueError(f"--ship ships the judge of an embedded pipeline: {names}; {args.model!r} has none")

    import torch

    from .pipeline import load_pipeline
    from .scorers.factory import ship_scorer
    from .training.judge import train_judge

    torch.set_num_threads(args.threads if os.environ.get("WORLD_SIZE", "1") == "1" else 1)
    out = Path(args.out or f"runs/judge_{args.model}")
    final = train_judge(out, cfg, load_pipeline(args.model))
    if args.ship and os.environ.get("RANK", "0") == "0":
        name = JUDGE_SHIP_NAMES[args.model]
        print(f"shipped to {ship_scorer(final, name)} as {name}")
    return 0


def _user_errors(command):
    """Bad input ends a command with a one-line `error: ...` and exit code 2, not a traceback."""

    @functools.wraps(command)
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return wrapped


def _world_of(model: str) -> str | None:
    """The world a model draws, from its folder's latentalign.json, without importing torch or loading it."""
    from .files import read_json

    folder = embedded_folder(model) or Path(model).expanduser()
    defaults = folder / "latentalign.json"
    if not defaults.is_file():
        return None
    data = read_json(defaults)
    if not isinstance(data, dict):
        raise ValueError(f"{defaults} must hold a JSON object")
    return data.get("world")


def _check_settings(args: argparse.Namespace) -> None:
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.guidance is not None and args.guidance < 0:
        raise ValueError(f"--guidance must be >= 0, got {args.guidance}")


# the generate flags that set a stage option of the same name (the stages that take it are found in the registry)
GENERATE_OPTIONS = (
    "n",
    "scorer",
    "max_batch",
    "avoid",
    "iterations",
    "words",
    "projector",
    "loss",
    "step_size",
    "at_steps",
    "at",
    "keep_share",
)
OPTION_FIELDS = {"at_steps": "steps"}  # flags named apart from their stage field (--steps is the run's)


def default_threads() -> int:
    """CPU threads for torch: the machine's cores, at most 8 (more rarely helps these models and hurts when the
    machine is shared)."""
    return max(1, min(8, os.cpu_count() or 1))


def _method_options(args: argparse.Namespace) -> dict:
    """--method's stage options from the flags, checked (and the composition built once) before any work."""
    from .methods.base import compose, method_names

    for flag in ("n", "max_batch"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.iterations is not None and args.iterations < 0:
        raise ValueError(f"--iterations must be >= 0, got {args.iterations}")
    names = [] if args.method == "plain" else [m.strip() for m in args.method.split("+")]
    unknown = [m for m in names if m not in method_names() or m == "plain"]
    if unknown:
        raise ValueError(f"--method: unknown method {unknown[0]!r}; choose from {', '.join(method_names())}")
    options = _stage_options(args, names)
    try:
        compose(args.method, options)  # refuses nonsense compositions before loading the pipeline
    except TypeError as e:
        raise ValueError(str(e)) from None
    return options


def _add_method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--method",
        default="plain",
        help="alignment method, or methods joined by '+' acting at different places, e.g. "
        "noise-projection+early-exit (default: plain sampling; `latentalign methods` lists them)",
    )
    p.add_argument(
        "--projector",
        default=None,
        help="noise-projection: a projector folder or shipped name (default: the one the pipeline names)",
    )
    p.add_argument("--n", type=int, default=None, help="candidates for the Best-of-N methods (default 4)")
    p.add_argument(
        "--scorer",
        default=None,
        help="scorer folder or shipped name (shapes-pixel|latent|noisy|latent-distilled|judge|judge-x0|judge-pixel)",
    )
    p.add_argument("--max-batch", type=int, default=None, help="candidates denoised at once (default 64)")
    p.add_argument("--avoid", default=None, help="noise-optimization: a concept to steer away from (e.g. red)")
    p.add_argument(
        "--words",
        default=None,
        help="attention methods: comma-separated subject words (Shapes default: the shape nouns)",
    )
    p.add_argument(
        "--loss", default=None, help="attention methods: attend-and-excite (default), iou or syngen (Shapes' colours)"
    )
    p.add_argument("--step-size", type=float, default=None, help="attention methods: the update's scale")
    p.add_argument(
        "--at-steps", default=None, help="iterref / gsn-guidance: comma-separated step indices (0 = the first step)"
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="noise-optimization iterations (default: the pipeline's latentalign.json, else 50)",
    )
    p.add_argument(
        "--at", type=float, default=None, help="early-exit: prune after this share of the steps (default 0.3)"
    )
    p.add_argument(
        "--keep-share", type=float, default=None, help="early-exit: keep this share of the candidates (default 0.5)"
    )


def _stage_options(args: argparse.Namespace, names: list[str]) -> dict:
    """The --flags given, as options of the composition's stages; a flag no stage takes is refused by name."""
    from dataclasses import fields

    from .methods.base import registered

    registry = registered()
    options = {}
    for option in GENERATE_OPTIONS:
        value = getattr(args, option)
        if value is None:
            continue
        field = OPTION_FIELDS.get(option, option)
        takers = [n for n in names if field in {f.name for f in fields(registry[n])}]
        if not takers:
            able = [n for n, cls in registry.items() if field in {f.name for f in fields(cls)}]
            raise ValueError(f"--{option.replace('_', '-')} needs --method {' or '.join(able)}")
        if option == "words":
            value = tuple(w.strip() for w in value.split(","))
        if option == "at_steps":
            value = tuple(_int_list("at-steps", value))
        options[field] = value
    return options


def _record_outputs(result) -> dict:
    """What the stages reported for the one image, under the record's keys."""
    out, outputs = {}, result.outputs
    row = 0
    if "chosen" in outputs:
        row = outputs["chosen"][0]
        out.update(
            chosen=row,
            candidate_seeds=outputs["candidate_seeds"][0],
            candidate_scores=outputs["scores"][0],
            pruned_at=outputs["pruned_at"][0],
        )
    if "rewards" in outputs:
        out.update(rewards=outputs["rewards"][row], best_iteration=outputs["best_iteration"][row])
    if "losses" in outputs:
        losses = {str(k): v for k, v in outputs["losses"][row].items()}
        out.update(attention_losses=losses, refine_iterations=outputs["refine_iterations"][row])
    return out


def _check_out(out: str) -> None:
    """Refuse an --out that cannot become a folder (a file on its path, no write permission), creating nothing."""
    path = Path(out).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"--out {out}: {existing} is not a folder")
    if not os.access(existing, os.W_OK):
        raise ValueError(f"--out {out}: {existing} is not writable")


@_user_errors
def _generate(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        raise ValueError("empty prompt")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    _check_settings(args)
    shapes = _world_of(args.model) == "shapes"
    if shapes:
        from .world import parse

        parse(args.prompt)

    import torch
    from PIL import Image

    from .bench import file_stem
    from .generation import generate
    from .pipeline import load_pipeline

    options = _method_options(args)
    _check_out(args.out)  # before any work, so a bad --out loses none
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    result = generate(
        pipe,
        args.prompt,
        seed=args.seed,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        method=args.method,
        **options,
    )
    image = result.images[0]
    record = {
        "prompt": args.prompt,
        "seed": args.seed,
        "model": args.model,
        "method": args.method,
        "settings": result.settings,
        "stages": result.stages,
        "cost": result.cost.to_dict(),
        **_record_outputs(result),
    }
    if shapes:
        from .world import check

        record["verdict"] = check(image, args.prompt).to_dict()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / file_stem(args.prompt, args.seed)
    image.save(f"{stem}.png")
    image.resize((image.width * 8, image.height * 8), Image.Resampling.NEAREST).save(f"{stem}_x8.png")
    Path(f"{stem}.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    judged = ""
    if shapes:
        kinds = [f["kind"] for f in record["verdict"]["failures"]]
        judged = " failed: " + ", ".join(kinds) if kinds else " ok"
    print(f"{stem}.png{judged} ({result.cost.seconds:.2f}s)")
    return 0


@_user_errors
def _demo(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ValueError("the demo needs Gradio: pip install 'latentalign[demo]'") from None
    import torch

    from .demo import launch

    torch.set_num_threads(args.threads)
    options = {k: v for k, v in (("scorer", args.scorer), ("projector", args.projector)) if v is not None}
    launch(args.model, port=args.port, host=args.host, options=options)
    return 0


@_user_errors
def _methods(args: argparse.Namespace) -> int:
    from .methods.base import method_names, registered

    registry = registered()
    for name in method_names():
        if name == "plain":
            print("plain                 (no stage: ordinary sampling)")
            continue
        cls = registry[name]
        doc = (cls.__doc__ or "").strip().split("\n")[0]
        print(f"{name:<21} [{cls.place}] {doc}")
    return 0


@_user_errors
def _check(args: argparse.Namespace) -> int:
    from PIL import Image, UnidentifiedImageError

    from .world import check, parse

    parse(args.prompt)
    if not Path(args.image).is_file():
        raise FileNotFoundError(f"{args.image} is not a file")
    try:
        image = Image.open(args.image)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError):  # SyntaxError: Pillow's damaged-PNG error
        raise ValueError(f"{args.image} is not a readable image") from None
    verdict = check(image, args.prompt)
    if args.json:
        print(json.dumps(verdict.to_dict()))
    else:
        print(f"{'ok' if verdict.ok else 'failed'}: {args.prompt}")
        for f in verdict.failures:
            print(f"  {f.kind}: {f.detail}")
    return 0 if verdict.ok else 1


@_user_errors
def _bench(args: argparse.Namespace) -> int:
    from .bench import format_table, plan, run_bench, run_sweep

    if args.config is not None:
        given = [
            f
            for f in ("seeds", "seed_base", "suite", "limit_prompts", "steps", "guidance", *GENERATE_OPTIONS)
            if getattr(args, f)
        ]
        given += [
            f
            for f, default in (("method", "plain"), ("model", "shapes"), ("split", "heldout"))
            if getattr(args, f) != default
        ]
        if given:
            raise ValueError(f"--config holds the runs' settings: --{given[0].replace('_', '-')} cannot come with it")
        processes = _bench_processes(args.threads)
        if run_sweep(args.config, args.out, processes) is not None:
            print((Path(args.out) / "frontier.md").read_text())
        return 0
    if args.seeds is None:
        raise ValueError("bench needs --seeds N (or --config FILE)")
    suites = args.suite or ["all"]
    plan(suites, args.seeds, split=args.split, limit_prompts=args.limit_prompts, seed_base=args.seed_base)
    _check_settings(args)
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: not a folder")
    if embedded_folder(args.model) is None and not Path(args.model).expanduser().is_dir():
        raise FileNotFoundError(f"no pipeline folder at {args.model!r}")
    if _world_of(args.model) != "shapes":
        raise ValueError(f"{args.model!r} is not a Shapes-world pipeline: its latentalign.json must say world: shapes")
    options = _method_options(args)

    from .pipeline import load_pipeline

    processes = _bench_processes(args.threads)
    pipe = load_pipeline(args.model)
    summary = run_bench(
        pipe,
        suites,
        args.seeds,
        split=args.split,
        limit_prompts=args.limit_prompts,
        out=args.out,
        steps=args.steps,
        guidance=args.guidance,
        batch=args.batch,
        rejudge=args.rejudge,
        method=args.method,
        options=options,
        seed_base=args.seed_base,
        processes=processes,
    )
    if summary is not None:  # the main process's (under accelerate launch, the others return None)
        print(format_table(summary["categories"]))
        print(f"wrote {Path(args.out) / 'results.jsonl'}, summary.json, summary.md and grid.png")
    return 0


def _bench_processes(threads: int):
    """Torch's threads, and the processes to shard the rows over: under `accelerate launch` (WORLD_SIZE > 1) its
    PartialState, each process with `threads` threads; alone None."""
    import torch

    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    if os.environ.get("WORLD_SIZE", "1") == "1":
        return None
    from accelerate import PartialState

    return PartialState(cpu=True)


def _export(args: argparse.Namespace) -> int:
    from . import exports

    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    if args.format == "shapes-metadata":  # no pipeline: the suites as a GenEval metadata file
        path = exports.write_jsonl(args.out, exports.shapes_geneval_metadata(args.split, args.limit_prompts))
        print(f"wrote {path}")
        return 0
    if args.format == "geneval":
        if args.metadata is None:
            raise ValueError("--format geneval needs --metadata FILE (GenEval's evaluation_metadata.jsonl)")
        entries = exports.read_geneval_metadata(args.metadata)
    else:
        if args.prompts is None:
            raise ValueError(f"--format {args.format} needs --prompts FILE (one prompt a line)")
        prompts = [line.strip() for line in Path(args.prompts).read_text().splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"{args.prompts} holds no prompt")
    options = _method_options(args)
    import torch

    from .pipeline import load_pipeline

    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    common = dict(samples=args.samples, method=args.method, options=options, batch=args.batch)
    if args.format == "geneval":
        out = exports.write_geneval(pipe, entries, args.out, **common)
    elif args.format == "tiam":
        out = exports.write_tiam(pipe, prompts, args.out, **common)
    else:
        out = exports.write_t2i_compbench(pipe, prompts, args.out, **common)
    print(f"wrote {out}")
    return 0


def _score_geneval(args: argparse.Namespace) -> int:
    from .exports import score_geneval_folder

    print(json.dumps(score_geneval_folder(args.folder), indent=1))
    return 0


def _int_list(name: str, text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--{name} takes comma-separated integers, got {text!r}") from None


def _attention_options(args: argparse.Namespace) -> dict:
    """The attention methods' options given as flags (None ones left to the method's defaults)."""
    options = {}
    if args.words is not None:
        options["words"] = tuple(w.strip() for w in args.words.split(","))
    for name in ("step_size", "threshold", "max_refine_iterations"):
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    return options


def _select_steps(args: argparse.Namespace) -> int:
    from .attention_losses import loss_names
    from .bench import plan

    if args.loss not in loss_names():
        raise ValueError(f"--loss: unknown attention loss {args.loss!r}; choose from {', '.join(loss_names())}")
    candidates = _int_list("candidates", args.candidates)
    shard = None
    if args.shard is not None:
        index, _, count = args.shard.partition("/")
        if not (index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
            raise ValueError(f"--shard takes INDEX/COUNT with 0 <= INDEX < COUNT, got {args.shard!r}")
        shard = (int(index), int(count))
    suites = args.suite or ["two_objects", "relation"]
    plan(suites, args.seeds, split=args.split, limit_prompts=args.limit_prompts)  # validated before loading
    folder = embedded_folder(args.model) or Path(args.model).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"no pipeline folder at {args.model!r}")
    from .methods import IterRef

    options = _attention_options(args)
    IterRef(steps=(0,), loss=args.loss, **options)  # checked before loading
    import torch

    from .pipeline import load_pipeline
    from .step_selection import select_steps

    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    scorer = None
    if args.scorer is not None:
        from .scorers import shared_scorer

        scorer = shared_scorer(args.scorer, vae=pipe.vae)
    summary = select_steps(
        pipe,
        args.out,
        loss=args.loss,
        candidates=candidates,
        suites=suites,
        split=args.split,
        seeds=args.seeds,
        limit_prompts=args.limit_prompts,
        steps=args.steps,
        guidance=args.guidance,
        options=options,
        scorer=scorer,
        batch=args.batch,
        shard=shard,
        record=args.record,
        model_folder=folder,
    )
    print((Path(args.out) / "summary.md").read_text())
    if summary["selected"] is None:
        print("not every step has all its images yet (other shards, or an interrupted run): run again to finish")
    else:
        where = f"; recorded in {folder / 'latentalign.json'}" if args.record else ""
        print(f"selected step {summary['selected']}{where}")
    return 0


def _attention(args: argparse.Namespace) -> int:
    from .methods.base import compose

    method = None
    if args.method != "plain":
        options = _attention_options(args)
        if args.loss is not None:
            options["loss"] = args.loss
        if args.at_steps is not None:
            options["steps"] = tuple(_int_list("at-steps", args.at_steps))
        try:
            method = compose(args.method, options).stages[0]
        except TypeError as e:
            raise ValueError(str(e)) from None
        from .methods import AttentionGuidance

        if not isinstance(method, AttentionGuidance):
            raise ValueError(f"--method {args.method}: maps are shown around an attention method, not this one")
    import torch

    from .attention_maps import attention_grid
    from .pipeline import load_pipeline

    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    kwargs = {
        k: v for k, v in (("num_inference_steps", args.steps), ("guidance_scale", args.guidance)) if v is not None
    }
    print(attention_grid(pipe, args.prompt, args.out, method, seed=args.seed, **kwargs))
    return 0


def _report(args: argparse.Namespace) -> int:
    from .bench import frontier

    frontier(args.folders, args.out)
    print((Path(args.out) / "frontier.md").read_text())
    print(f"wrote {Path(args.out) / 'frontier.png'}, frontier.md and frontier.json")
    return 0


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="shapes", help="'shapes' (embedded), a pipeline folder or a Hub id")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the pipeline's)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentalign", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the embedded Shapes models")
    train_sub = train.add_subparsers(dest="what", required=True)
    tw = train_sub.add_parser("world", help="train the tiny Shapes latent diffusion pipeline from scratch (resumable)")
    tw.add_argument("--out", default="runs/world", help="working folder: checkpoint/ and the final pipeline/")
    tw.add_argument("--vae-steps", type=int, default=1200)
    tw.add_argument("--unet-steps", type=int, default=3500)
    tw.add_argument(
        "--high-noise-share",
        type=float,
        default=None,
        help="share of each UNet batch with timesteps from the upper half, where layout (hence relations) is set"
        " (default 0.5)",
    )
    tw.add_argument("--seed", type=int, default=None, help="seeds weights, scenes, batches (default: the shipped run)")
    tw.add_argument("--threads", type=int, default=2)
    tw.add_argument("--ship", action="store_true", help="copy the result into the package as the embedded default")
    tw.set_defaults(func=_user_errors(_train_world))
    tf = train_sub.add_parser(
        "flow", help="train shapes-flow: SD3's architecture by rectified flow over the Shapes VAE (resumable)"
    )
    tf.add_argument("--out", default="runs/flow", help="working folder: checkpoint/ and the final pipeline/")
    tf.add_argument("--steps", type=int, default=5000)
    tf.add_argument("--batch", type=int, default=64)
    tf.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (cosine schedule after warm-up)")
    tf.add_argument("--seed", type=int, default=1, help="seeds weights, scenes, batches (1: the shipped run)")
    tf.add_argument(
        "--high-noise-share", type=float, default=0.5, help="share of each batch drawn from the upper half of s"
    )
    tf.add_argument(
        "--category-weights",
        type=float,
        nargs=4,
        default=None,
        metavar=("SINGLE", "TWO", "RELATION", "COUNTING"),
        help="shares of the rendered scenes per suite (default 0.1 0.25 0.4 0.25)",
    )
    tf.add_argument(
        "--pair-order",
        choices=("prompt", "left-to-right"),  # world.dataset.PAIR_ORDERS (the CLI imports no numpy to start)
        default="prompt",
        help="left-to-right: a two-object scene's caption names its left group first where that phrasing is a train"
        " prompt too, so 'and' carries position",
    )
    tf.add_argument("--threads", type=int, default=2)
    tf.add_argument("--ship", action="store_true", help="copy the result into the package as 'shapes-flow'")
    tf.set_defaults(func=_user_errors(_train_flow))
    ts = train_sub.add_parser(
        "scorer",
        help="train a Shapes scorer: InfoNCE with grammar hard negatives (resumable; runs under accelerate launch)",
    )
    ts.add_argument("--kind", required=True, choices=["pixel", "latent", "noisy"])
    ts.add_argument("--model", default="shapes", help="the pipeline whose VAE (and trajectories) the scorer reads")
    ts.add_argument("--out", default=None, help="working folder (default runs/scorer_<kind>)")
    ts.add_argument("--steps", type=int, default=3000)
    ts.add_argument("--batch", type=int, default=128, help="global batch, split across processes")
    ts.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine schedule after warm-up)")
    ts.add_argument(
        "--init",
        default=None,
        help="fine-tune this saved scorer (folder or shapes-<kind>); --kind noisy --noisy-reads latents may start "
        "from a Latent-CLIP (shapes-latent)",
    )
    ts.add_argument("--pool-size", type=int, default=20000, help="rendered train-split scenes")
    ts.add_argument(
        "--trajectories", type=int, default=3072, help="generator samples of --model on train prompts, recorded"
    )
    ts.add_argument(
        "--trajectory-share",
        type=float,
        default=None,
        help="share of each batch drawn from the generator's samples, the rest renders: noisy reads z_t at a random "
        "step, latent the final latents, pixel their decode (default 0.5 for noisy, 0 for the others)",
    )
    ts.add_argument(
        "--trajectories-per-prompt",
        type=int,
        default=1,
        help="seeds per trajectory prompt (above 1, prompts have accepted and rejected samples)",
    )
    ts.add_argument(
        "--ranking-weight",
        type=float,
        default=0.0,
        help="weight of a within-prompt ranking term on (accepted, rejected) generator samples of one prompt",
    )
    ts.add_argument(
        "--reward-samples",
        type=int,
        default=0,
        help="pixel/latent: noise-optimisation runs on train prompts with --init as the reward; their iterates, "
        "labelled by the checker, join the generator samples",
    )
    ts.add_argument("--reward-iterations", type=int, default=10, help="iterations per --reward-samples run")
    ts.add_argument(
        "--renoise",
        type=float,
        default=0.0,
        help="noisy: share of trajectory samples shown as their final latents noised afresh to the same timestep",
    )
    ts.add_argument(
        "--noisy-reads",
        choices=("preview", "latents"),
        default="preview",
        help="noisy: the clamped linear RGB preview of z_t (the published layout, shipped) or the latent channels",
    )
    ts.add_argument(
        "--verdict-weight",
        type=float,
        default=0.0,
        help="weight of a logistic term ranking each image's caption against its hard negatives by its verdict",
    )
    ts.add_argument(
        "--distill-weight",
        type=float,
        default=0.0,
        help="noisy: weight of a KL term matching pixel CLIP's caption ranking on the decoded x0 prediction",
    )
    ts.add_argument(
        "--distill-target",
        choices=("current", "final"),
        default="current",
        help="noisy: the teacher reads the x0 prediction at the sample's step, or the trajectory's final one",
    )
    ts.add_argument("--vision-width", type=int, default=None, help="image tower width (default 64, the shipped size)")
    ts.add_argument("--vision-layers", type=int, default=None, help="image tower layers (default 2)")
    ts.add_argument("--eval-per-suite", type=int, default=200, help="held-out renders per suite in the report")
    ts.add_argument("--seed", type=int, default=0)
    ts.add_argument("--threads", type=int, default=2)
    ts.add_argument("--ship", action="store_true", help="copy the result into the package's shipped scorers")
    ts.set_defaults(func=_user_errors(_train_scorer))
    tj = train_sub.add_parser(
        "judge",
        help="distil a pixel judge (the Shapes checker, or your callable) into a latent cross-encoder that reads the "
        "prompt with z_t and t, from the pipeline's own trajectories on train prompts (resumable; accelerate launch)",
    )
    tj.add_argument("--model", default="shapes", help="the pipeline whose trajectories the judge learns to read")
    tj.add_argument(
        "--judge",
        default="checker",
        help="the pixel judge: 'checker' (Shapes) or 'module:function' / 'file.py:function', called as "
        "judge(images, prompts) -> one score in [0, 1] per image",
    )
    tj.add_argument("--prompt-file", default=None, help="train prompts, one per line (outside the Shapes world)")
    tj.add_argument("--out", default=None, help="working folder (default runs/judge_<model>)")
    tj.add_argument("--prompts", type=int, default=1536, help="train prompts recorded")
    tj.add_argument("--seeds-per-prompt", type=int, default=16, help="trajectories per prompt")
    tj.add_argument("--renders", type=int, default=8000, help="Shapes: rendered (prompt, corruption) pairs")
    tj.add_argument("--render-share", type=float, default=0.5, help="share of each batch from the renders")
    tj.add_argument(
        "--towers",
        default="shapes-latent",
        help="start from this Latent-CLIP's towers (shipped name or folder); 'none': the pipeline's text encoder",
    )
    tj.add_argument("--final-share", type=float, default=0.25, help="share of trajectory items read at t = 0")
    tj.add_argument("--ranking-weight", type=float, default=1.0, help="weight of the within-prompt ranking term")
    tj.add_argument(
        "--foresight-weight", type=float, default=5.0, help="weight of the foresight head's final-image term"
    )
    tj.add_argument("--object-weight", type=float, default=1.0, help="weight of the object head's cell term")
    tj.add_argument("--steps", type=int, default=3000)
    tj.add_argument("--checkpoint-every", type=int, default=250, help="steps between checkpoints and AUROC reports")
    tj.add_argument("--batch", type=int, default=256)
    tj.add_argument("--lr", type=float, default=5e-4)
    tj.add_argument("--seed", type=int, default=0)
    tj.add_argument("--threads", type=int, default=2)
    tj.add_argument(
        "--ship",
        action="store_true",
        help="copy the result into the package: shapes-judge (--model shapes), shapes-flow-judge (--model shapes-flow)",
    )
    tj.set_defaults(func=_user_errors(_train_judge))
    td = train_sub.add_parser(
        "distill",
        help="distil a pixel CLIP (decode + CLIP) into a Latent-CLIP that reads the latents, or a NoisyCLIP that reads "
        "z_t: a conv stem plus the teacher's own towers (resumable)",
    )
    td.add_argument(
        "--student",
        choices=("latent", "noisy"),
        default="latent",
        help="latent: reads clean latents; noisy: reads z_t, taught the teacher's view of the decoded x0 prediction",
    )
    td.add_argument("--model", default="shapes", help="the pipeline whose VAE and samples the student reads")
    td.add_argument("--teacher", default="shapes-pixel", help="the pixel scorer to distil (folder or shipped name)")
    td.add_argument("--out", default="runs/latent_distilled", help="working folder: data caches, checkpoint/, scorer/")
    td.add_argument("--steps", type=int, default=2000)
    td.add_argument("--batch", type=int, default=128)
    td.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine schedule after warm-up)")
    td.add_argument("--stem-width", type=int, default=128, help="channels of the convolutional stem")
    td.add_argument("--stem-layers", type=int, default=3, help="3x3 convolutions in the stem")
    td.add_argument("--token-weight", type=float, default=1.0, help="weight of the patch-embedding term")
    td.add_argument("--samples", type=int, default=16384, help="generator samples (noisy: trajectories)")
    td.add_argument("--samples-per-prompt", type=int, default=4)
    td.add_argument("--renders", type=int, default=None, help="encoded renders of train scenes (8192; noisy: 0)")
    td.add_argument(
        "--perturb", type=float, default=None, help="noise of the perturbed copies, in latent stds (0.5; noisy: 0)"
    )
    td.add_argument(
        "--init",
        default=None,
        help="start from this distilled scorer (folder or shipped name); a noisy student may start from a latent one",
    )
    td.add_argument(
        "--reward-samples",
        type=int,
        default=0,
        help="noise-optimisation runs on train prompts with --init as the reward; their iterates join the latents",
    )
    td.add_argument("--reward-iterations", type=int, default=10, help="iterations per --reward-samples run")
    td.add_argument(
        "--renoise",
        type=float,
        default=0.0,
        help="noisy: share of rows shown as their trajectory's final latents noised afresh, with its targets",
    )
    td.add_argument(
        "--holdout",
        type=int,
        default=None,
        help="kept out of training, for the report: latents (1024) or, noisy, trajectories (256)",
    )
    td.add_argument("--eval-per-suite", type=int, default=200, help="held-out renders per suite in the report")
    td.add_argument("--seed", type=int, default=0)
    td.add_argument("--threads", type=int, default=2)
    td.add_argument(
        "--ship", action="store_true", help="copy a latent student into the package: shapes-latent-distilled"
    )
    td.set_defaults(func=_user_errors(_train_distill))
    to = train_sub.add_parser(
        "one-step",
        help="distil a pipeline into a one-step generator (SD-Turbo style) for noise optimisation (resumable)",
    )
    to.add_argument("--model", default="shapes", help="the teacher pipeline (run at its recommended settings)")
    to.add_argument("--out", default="runs/one_step", help="working folder: pairs, checkpoint/ and pipeline/")
    to.add_argument("--pairs", type=int, default=4096, help="teacher samples on train prompts")
    to.add_argument("--steps", type=int, default=2000)
    to.add_argument("--batch", type=int, default=64)
    to.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (cosine schedule after warm-up)")
    to.add_argument("--pair-batch", type=int, default=64, help="teacher prompts per batch when drawing the pairs")
    to.add_argument("--eval-per-suite", type=int, default=24, help="train prompts per suite (x 4 seeds) judged")
    to.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    to.add_argument("--seed", type=int, default=0)
    to.add_argument("--threads", type=int, default=2)
    to.add_argument("--ship", action="store_true", help="copy the result into the package as 'shapes-one-step'")
    to.set_defaults(func=_user_errors(_train_one_step))
    tn = train_sub.add_parser(
        "noise-reward",
        help="a noise reward model R(noise, prompt) -> per-word log-odds, from the checker's word verdicts on the "
        "generator's own TRAIN-prompt samples (noise projection's reward model; resumable)",
    )
    tn.add_argument("--model", default="shapes-one-step", help="the generator whose samples R learns to predict")
    tn.add_argument("--start", default="shapes-judge", help="the latent judge R starts from (shipped name or folder)")
    tn.add_argument(
        "--preview-steps", type=int, default=None, help="sampler steps R reads the noise through (default: ReNO's)"
    )
    tn.add_argument("--prompts", type=int, default=768, help="TRAIN prompts recorded")
    tn.add_argument("--seeds-per-prompt", type=int, default=8)
    tn.add_argument("--steps", type=int, default=600)
    tn.add_argument("--batch", type=int, default=128)
    tn.add_argument("--lr", type=float, default=3e-4)
    tn.add_argument("--seed", type=int, default=0)
    tn.add_argument("--threads", type=int, default=2)
    tn.add_argument("--out", default=None, help="working folder (default runs/noise_reward_<model>)")
    tn.set_defaults(func=_user_errors(_train_noise_reward))
    tp = train_sub.add_parser(
        "projector",
        help="train a noise projector (prompt-aware initial noise) against a differentiable reward (resumable)",
    )
    tp.add_argument("--model", default="shapes-one-step", help="the generator the reward is read through")
    tp.add_argument(
        "--scorer", default=None, help="the reward (default: the pipeline's ReNO scorer, else shapes-latent)"
    )
    tp.add_argument("--out", default="runs/projector", help="working folder: checkpoint/ and projector/")
    tp.add_argument(
        "--recipe",
        default="reward",
        choices=["reward", "paper"],
        help="reward: ascend --scorer through the generator; paper: KL + reconstruction warm-up, then quasi-DPO "
        "against --noise-reward",
    )
    tp.add_argument("--noise-reward", default=None, help="paper recipe: the reward model folder (train noise-reward)")
    tp.add_argument(
        "--steps", type=int, default=None, help="optimiser steps, warm-up included (default: reward 1500, paper 500)"
    )
    tp.add_argument("--warmup-steps", type=int, default=None, help="paper recipe: KL + reconstruction steps (150)")
    tp.add_argument("--batch", type=int, default=32)
    tp.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (cosine schedule after warm-up)")
    tp.add_argument(
        "--kl-weight",
        type=float,
        default=None,
        help="weight of the KL to N(0, I), summed over elements (default: reward 0.0001, paper 0.001)",
    )
    tp.add_argument("--width", type=int, default=128)
    tp.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument("--threads", type=int, default=2)
    tp.add_argument(
        "--ship",
        action="store_true",
        help="copy the result into the package under its pipeline's shipped name: shapes-projector (shapes-one-step), "
        "shapes-projector-flow (shapes-flow); paper recipe: shapes-projector-paper-<model>",
    )
    tp.set_defaults(func=_user_errors(_train_projector))

    gen = sub.add_parser("generate", help="generate one image; on the Shapes world, also check it")
    gen.add_argument("prompt")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", default="runs/generate", help="folder for <slug>_s<seed>.png, _x8.png and .json")
    gen.add_argument("--threads", type=int, default=default_threads(), help="CPU threads for torch")
    _add_method_args(gen)
    _add_sampling_args(gen)
    gen.set_defaults(func=_generate)

    met = sub.add_parser("methods", help="list the registered methods and where each acts")
    met.set_defaults(func=_methods)

    demo = sub.add_parser("demo", help="a web demo: plain beside each method on the same seeds (needs [demo])")
    demo.add_argument("--model", default="shapes", help="'shapes' (embedded), a pipeline folder or a Hub id")
    demo.add_argument("--port", type=int, default=7860)
    demo.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    demo.add_argument("--scorer", default=None, help="the methods' scorer outside the Shapes world")
    demo.add_argument("--projector", default=None, help="noise projection's projector outside shapes-one-step")
    demo.add_argument("--threads", type=int, default=default_threads(), help="CPU threads for torch")
    demo.set_defaults(func=_demo)

    chk = sub.add_parser("check", help="judge a Shapes image against a prompt; exit 0 if it follows it, 1 if not")
    chk.add_argument("image")
    chk.add_argument("prompt")
    chk.add_argument("--json", action="store_true", help="print the verdict as JSON")
    chk.set_defaults(func=_check)

    bench = sub.add_parser("bench", help="GenEval-style accuracy on the Shapes suites (resumable)")
    bench.add_argument("--suite", action="append", help="a suite name or 'all' (repeatable; default all)")
    bench.add_argument(
        "--seeds", type=int, default=None, help="seeds per prompt (required without --config): --seed-base .. + N-1"
    )
    bench.add_argument("--seed-base", type=int, default=0, help="the first seed (new seeds for a preregistered run)")
    bench.add_argument(
        "--config",
        default=None,
        help="a TOML sweep (benchmarks/configs/*.toml): every run into --out/<run>, then the frontier into --out",
    )
    bench.add_argument("--split", default="heldout", choices=["train", "heldout", "all"])
    bench.add_argument("--limit-prompts", type=int, default=None, help="first K prompts per suite (fixed shuffle)")
    bench.add_argument("--out", default="runs/bench", help="folder for results.jsonl, summary.*, grid.png, images/")
    bench.add_argument("--batch", type=int, default=32, help="images per generate call")
    bench.add_argument(
        "--rejudge", action="store_true", help="check the saved images of --out again (after a checker change)"
    )
    bench.add_argument("--threads", type=int, default=default_threads(), help="CPU threads for torch")
    _add_method_args(bench)
    _add_sampling_args(bench)
    bench.set_defaults(func=_bench)
    exp = sub.add_parser(
        "export", help="images in GenEval's, T2I-CompBench's or TIAM's layout, for their own evaluators"
    )
    exp.add_argument("--format", required=True, choices=["geneval", "t2i-compbench", "tiam", "shapes-metadata"])
    exp.add_argument("--metadata", default=None, help="geneval: GenEval's evaluation_metadata.jsonl")
    exp.add_argument("--prompts", default=None, help="t2i-compbench, tiam: a text file, one prompt a line")
    exp.add_argument("--split", default="heldout", choices=["train", "heldout"], help="shapes-metadata: the split")
    exp.add_argument("--limit-prompts", type=int, default=None, help="shapes-metadata: first K prompts per suite")
    exp.add_argument("--samples", type=int, default=4, help="images per prompt (seeds 0..N-1)")
    exp.add_argument("--batch", type=int, default=16, help="images per generate call")
    exp.add_argument("--out", required=True, help="the output folder (shapes-metadata: the .jsonl file)")
    exp.add_argument("--threads", type=int, default=default_threads(), help="CPU threads for torch")
    exp.add_argument("--model", default="shapes", help="'shapes' (embedded), a pipeline folder or a Hub id")
    _add_method_args(exp)
    exp.set_defaults(func=_user_errors(_export))
    sg = sub.add_parser("score-geneval", help="judge a GenEval-layout folder of Shapes images with the checker")
    sg.add_argument("folder")
    sg.set_defaults(func=_user_errors(_score_geneval))
    ss = sub.add_parser(
        "select-steps", help="IterRef at each step on TRAIN prompts: accuracy per step, plot, the best step (resumable)"
    )
    ss.add_argument("--model", default="shapes", help="embedded name or pipeline folder")
    ss.add_argument("--loss", default="attend-and-excite", help="attention loss: attend-and-excite, iou or syngen")
    ss.add_argument("--split", default="train", choices=["train"], help="steps are chosen on train prompts only")
    ss.add_argument("--candidates", default=None, help="comma-separated step indices (default: every step)")
    ss.add_argument(
        "--suite", action="append", help="a Shapes suite to judge on (repeatable; default two_objects and relation)"
    )
    ss.add_argument("--seeds", type=int, default=2)
    ss.add_argument("--limit-prompts", type=int, default=16, help="prompts per suite")
    ss.add_argument("--steps", type=int, default=None, help="denoising steps (default: the pipeline's)")
    ss.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's)")
    ss.add_argument("--words", default=None, help="subject words (Shapes default: the shape nouns)")
    ss.add_argument("--step-size", type=float, default=None, help="IterRef's update scale (default 20)")
    ss.add_argument("--threshold", type=float, default=None, help="refine until the A&E loss is 1 - threshold")
    ss.add_argument("--max-refine-iterations", type=int, default=None, help="update cap at the step (default 20)")
    ss.add_argument("--scorer", default=None, help="judge by this pixel scorer's mean score (outside Shapes)")
    ss.add_argument("--batch", type=int, default=16)
    ss.add_argument("--shard", default=None, help="INDEX/COUNT: this process's share (accelerate sets it itself)")
    ss.add_argument("--record", action="store_true", help="write the chosen step into the model's latentalign.json")
    ss.add_argument("--out", default="runs/select-steps")
    ss.add_argument("--threads", type=int, default=2)
    ss.set_defaults(func=_user_errors(_select_steps))
    att = sub.add_parser("attention", help="a PNG grid of each subject's attention map over the steps")
    att.add_argument("prompt")
    att.add_argument("--model", default="shapes", help="embedded name or pipeline folder")
    att.add_argument("--out", default="runs/attention")
    att.add_argument("--method", default="iterref", help="the attention method shown below plain (plain: none)")
    att.add_argument("--loss", default=None, help="attend-and-excite, iou or syngen")
    att.add_argument("--at-steps", default=None, help="iterref / gsn-guidance: comma-separated step indices")
    att.add_argument("--words", default=None, help="subject words (Shapes default: the shape nouns)")
    att.add_argument("--step-size", type=float, default=None)
    att.add_argument("--threshold", type=float, default=None)
    att.add_argument("--max-refine-iterations", type=int, default=None)
    att.add_argument("--seed", type=int, default=0)
    att.add_argument("--steps", type=int, default=None)
    att.add_argument("--guidance", type=float, default=None)
    att.add_argument("--threads", type=int, default=2)
    att.set_defaults(func=_user_errors(_attention))
    rep = sub.add_parser("report", help="the frontier: accuracy against compute of bench folders, one plot per model")
    rep.add_argument("folders", nargs="+", help="bench folders (one method each; same prompts and seeds per model)")
    rep.add_argument("--out", default="runs/report", help="folder for frontier.png, frontier.md, frontier.json")
    rep.set_defaults(func=_user_errors(_report))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
