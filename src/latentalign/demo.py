"""A web demo: the same prompt and seeds, plain generation beside each chosen method or composition, with what
each cost and, on the Shapes world, the checker's verdict (`latentalign demo`; needs `pip install latentalign[demo]`).

Every run is one call per method of `generate` with the same seeds, so the images side by side differ only by
the method. Runs are queued one at a time (the pipeline is shared), each browser tab sees only its own results,
a run shows its progress and the Stop button cancels it between methods.
"""

from __future__ import annotations

import torch
from PIL import Image

from .core import sampling_defaults
from .methods.base import compose, method_names

SCALE = 4  # the Shapes world's 32x32 images are shown 4x larger (nearest neighbour)


def parse_seeds(text: str) -> list[int]:
    """ "0, 1, 2" -> [0, 1, 2]; at most 8 seeds."""
    try:
        seeds = [int(s) for s in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"seeds are whole numbers separated by commas, got {text!r}") from None
    if not seeds or len(seeds) > 8:
        raise ValueError(f"give 1 to 8 seeds, got {len(seeds)}")
    return seeds


def chosen_methods(checked: list[str], composition: str) -> list[str]:
    """Plain first, then the checked methods, then the typed composition (checked for sense before any work)."""
    methods = ["plain", *[m for m in checked if m != "plain"]]
    if composition and composition.strip():
        methods.append(composition.strip())
    for m in methods:
        compose(m)  # unknown names and two stages at one place are refused here, before anything runs
    return list(dict.fromkeys(methods))


def describe_candidates(result, image: int) -> str:
    """Best-of-N's candidates of one image: each one's scores, where it was pruned, which one was chosen."""
    if "chosen" not in result.outputs:
        return ""
    parts = []
    for i, (scores, pruned) in enumerate(zip(result.scores[image], result.pruned_at[image], strict=True)):
        shown = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in scores.items())
        mark = "chosen" if i == result.chosen[image] else (f"pruned after step {pruned}" if pruned is not None else "")
        parts.append(f"#{i} {shown} {mark}".strip())
    return "; ".join(parts)


def candidate_images(pipe, result, image: int) -> list[tuple[Image.Image, str]]:
    """Best-of-N's candidates of one image, decoded, captioned with where each was pruned or that it was chosen."""
    from .adapters import Denoiser
    from .core import to_pil

    with torch.no_grad():
        pictures = to_pil(Denoiser(pipe).decode(result.candidate_latents[image]))
    out = []
    for i, (picture, pruned) in enumerate(zip(pictures, result.pruned_at[image], strict=True)):
        mark = "chosen" if i == result.chosen[image] else (f"pruned at step {pruned}" if pruned is not None else "kept")
        out.append((picture, f"#{i} {mark}"))
    return out


def run_methods(pipe, prompt: str, seeds: list[int], methods: list[str], options: dict | None = None, progress=None):
    """Yield (method, seed, image, verdict, cost, candidates, candidate images) for every method on every seed,
    method by method."""
    from .generation import generate

    shapes = sampling_defaults(pipe).world == "shapes"
    for k, method in enumerate(methods):
        if progress is not None:
            progress(k / len(methods), desc=f"{method} ({k + 1} of {len(methods)})")
        accepted = {}
        if method != "plain":
            for key, value in {**(options or {}), "keep_candidates": True}.items():
                try:
                    compose(method, {key: value})
                    accepted[key] = value
                except TypeError:
                    pass  # an option this method does not take (e.g. n for noise projection)
        result = generate(pipe, [prompt] * len(seeds), seed=seeds, method=method, **accepted)
        per_image = result.cost.to_dict()
        per_image = {k2: (v / len(seeds) if isinstance(v, (int, float)) else v) for k2, v in per_image.items()}
        for b, (seed, image) in enumerate(zip(seeds, result.images, strict=True)):
            verdict = None
            if shapes:
                from .world import check

                verdict = check(image, prompt)
            pictures = candidate_images(pipe, result, b) if "candidate_latents" in result.outputs else []
            yield method, seed, image, verdict, per_image, describe_candidates(result, b), pictures


def build_demo(pipe, *, options: dict | None = None):
    """The Gradio app for `pipe` (`options`: stage options such as scorer=... for a model outside the Shapes world)."""
    import gradio as gr

    shapes = sampling_defaults(pipe).world == "shapes"
    if shapes:
        from .world import vocabulary

        vocab = vocabulary()
        about = (
            "Shapes world prompts, e.g. *a red circle left of a blue square*. Colours: "
            + ", ".join(vocab["colours"])
            + ". Shapes: "
            + ", ".join(vocab["shapes"])
            + "."
        )
        example = "a red circle left of a blue square"
    else:
        about, example = "Any prompt.", "a photo of a cat"

    def run(prompt, seeds_text, checked, composition, progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
        try:
            if not prompt or not prompt.strip():
                raise ValueError("empty prompt")
            if shapes:
                from .world import parse

                parse(prompt)  # the same message as the API's, before any work
            seeds = parse_seeds(seeds_text)
            methods = chosen_methods(checked or [], composition or "")
        except (ValueError, TypeError) as e:
            yield [], [], "", f"**Error:** {e}"
            return
        gallery, rows, candidates = [], [], []
        header = "| method | seed | verdict | failed | denoiser evals | seconds | candidates |\n" + "|---" * 7 + "|"
        try:
            for method, seed, image, verdict, cost, listed, pictures in run_methods(
                pipe, prompt, seeds, methods, options, progress
            ):
                shown = image.resize((image.width * SCALE, image.height * SCALE), Image.Resampling.NEAREST)
                word = "" if verdict is None else ("ok" if verdict.ok else "failed")
                failed = "" if verdict is None else ", ".join(f.kind for f in verdict.failures)
                caption = (
                    f"{method} | seed {seed} | {word} | {cost['denoiser_evals']:g} evals | {cost['seconds']:.2f} s"
                )
                gallery.append((shown, caption))
                evals, seconds = f"{cost['denoiser_evals']:g}", f"{cost['seconds']:.3f}"
                rows.append(f"| {method} | {seed} | {word} | {failed} | {evals} | {seconds} | {listed} |")
                for picture, mark in pictures:
                    big = picture.resize((picture.width * SCALE, picture.height * SCALE), Image.Resampling.NEAREST)
                    candidates.append((big, f"{mark} | {method} | seed {seed}"))
                yield gallery, candidates, header + "\n" + "\n".join(rows), ""
        except ValueError as e:
            yield gallery, candidates, header + "\n" + "\n".join(rows), f"**Error:** {e}"

    choices = [m for m in method_names() if m != "plain"]
    with gr.Blocks(title="latentalign") as demo:
        gr.Markdown("# latentalign: plain generation beside alignment methods\n" + about)
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", value=example, elem_id="prompt", scale=3)
            seeds = gr.Textbox(label="Seeds", value="0, 1", elem_id="seeds", scale=1)
        methods = gr.CheckboxGroup(choices=choices, value=["early-exit"], label="Methods", elem_id="methods")
        composition = gr.Textbox(
            label="A composition (optional)", placeholder="noise-projection+early-exit", elem_id="composition"
        )
        with gr.Row():
            start = gr.Button("Run", variant="primary", elem_id="run")
            stop = gr.Button("Stop", elem_id="stop")
        error = gr.Markdown(elem_id="error")
        gallery = gr.Gallery(label="Images", columns=4, elem_id="gallery")
        table = gr.Markdown(elem_id="table")
        pool = gr.Gallery(
            label="Best-of-N candidates (a pruned one as its x0 prediction when dropped)",
            columns=8,
            elem_id="candidates",
        )
        event = start.click(run, [prompt, seeds, methods, composition], [gallery, pool, table, error])
        stop.click(None, None, None, cancels=[event])
    demo.queue(default_concurrency_limit=1)  # one run at a time: the pipeline is shared
    return demo


def launch(model: str = "shapes", *, port: int = 7860, host: str = "127.0.0.1", options: dict | None = None):
    """Load `model` and serve the demo until interrupted."""
    from .pipeline import load_pipeline

    demo = build_demo(load_pipeline(model), options=options)
    demo.launch(server_name=host, server_port=port)
