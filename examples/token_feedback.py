"""Token-level feedback on the embedded Shapes world: generate a few images, then score every word of the prompt
three ways: the checker's word verdicts, a question-by-question judge (here answering from the checker's detections,
where you would ask your VLM), and leave-one-out CLIP (the shipped pixel CLIP; any CLIP you load works).

python examples/token_feedback.py "two red circles and a blue square" --seeds 3
"""

from __future__ import annotations

import argparse

import latentalign
from latentalign.scorers import load_scorer
from latentalign.scorers.token_judges import CLIPTokenJudge, QuestionTokenJudge, ShapesTokenJudge, prompt_words
from latentalign.world import detect, vocabulary


def ask_from_detections(image, prompt: str, word: str) -> float:
    """A stand-in for a VLM question "how well does the image show WORD?", answered 0..9 from what the checker
    detects: colour and shape words by presence; other words by whether anything is there at all."""
    found = detect(image)
    vocab = vocabulary()
    if word in vocab["colours"]:
        return 9.0 if any(d.colour == word for d in found) else 0.0
    shape = word.rstrip("s") if word.rstrip("s") in vocab["shapes"] else word
    if shape in vocab["shapes"]:
        return 9.0 if any(d.shape == shape for d in found) else 0.0
    return 9.0 if found else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prompt")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--model", default="shapes")
    args = ap.parse_args()

    pipe = latentalign.load_pipeline(args.model)
    images = latentalign.generate(pipe, [args.prompt] * args.seeds, seed=list(range(args.seeds))).images
    judges = {
        "checker": ShapesTokenJudge(),
        "question": QuestionTokenJudge(ask_from_detections),
        "clip": CLIPTokenJudge(load_scorer("shapes-pixel")),
    }
    words = prompt_words(args.prompt)
    for name, judge in judges.items():
        for seed, scores in enumerate(judge(images, [args.prompt] * args.seeds)):
            cells = " ".join(f"{words[i]}={v:.2f}" for i, v in sorted(scores.words.items()))
            print(f"{name:8s} seed {seed}: image={scores.image:.2f}  {cells}")


if __name__ == "__main__":
    main()
