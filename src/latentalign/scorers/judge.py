"""A cross-encoder latent judge: the log-odds that a (noisy) latent's final image will satisfy its prompt.

Distilled from a pixel-space judge (the Shapes checker, a VLM, a detector) on the generator's own trajectories, so
it reads a VAE latent or a noisy z_t with its timestep and never decodes.

Why joint attention (one transformer over [CLS, prompt tokens, latent cells]) rather than a dual encoder or text-only
cross-attention: the questions a dual encoder cannot answer are bindings between words and places (which colour sits
on which shape, which object lies left of which, how many of them). In a joint stack a colour token can read the cells
of its shape's object and a cell can read which words mention it, in both directions and at every layer; the class
token then reads the whole pairing. Shapes latents are 8x8 cells and prompts 16 tokens, so full joint attention
over 81 tokens is cheap; larger latents are read through `patch_size` x `patch_size` patches.

The text side is the generator's own text encoder (frozen by default: it already separates the prompts the generator
follows), so a judge trained for one pipeline reads prompts exactly as that pipeline does. The timestep is an
embedding added to every token; t = 0 reads clean latents.

What the judge reads in the middle of sampling is its `space`: "noisy_latents" hands it z_t with the timestep (what
it trained on, the default), "latents" the generator's own x0 prediction at that step, read as clean latents
(`judge.reading("latents")`). The x0 prediction is free (the sampler computes it at every step) and carries what the
prompt-conditioned denoiser already knows about the final image: on the shipped judge's kept-aside train prompts its
within-prompt AUROC after 8 of 20 steps is 0.69 on the x0 prediction against 0.51 on z_t. The shipped `shapes-judge`
keeps "noisy_latents"; the `shapes` pipeline's early exit asks its x0 reading, `shapes-judge-x0`, chosen on train
prompts (docs/selection.md). Both spaces read final latents the same way (t = 0).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ..files import read_json, read_safetensors
from .base import Scorer, as_prompts
from .noisy_clip import TimestepEmbedding

ARCHITECTURE = {  # configs/shapes_judge.json overrides these for the Shapes world
    "width": 96,
    "layers": 4,
    "heads": 4,
    "mlp_ratio": 4,
    "patch_size": 1,
    "latent_channels": 4,
    # pixels per latent cell side of the foresight head (0: none): each cell token predicts its patch of the final
    # decoded image, a dense target (the whole picture, not one bit) that keeps the cell tokens about content
    "foresight": 0,
    # object classes of the object head (0: none): each cell token predicts which object (colour and shape, or
    # background) covers its part of the final image, as the Shapes checker reads it
    "objects": 0,
    "object_pixels": 1,  # the object head's resolution: pixels per latent cell side (4 on Shapes: every pixel)
    # Shapes world only: add this margin to the log-odds of latents whose predicted object map passes the checker's
    # clause rules (`map_verdict`), so a ranking asks the rules first and the learned log-odds second (0: off).
    # The verdict is piecewise constant: gradients (noise optimisation) come from the log-odds alone.
    "verdict_margin": 0,
    # a word head (0: none, 1: one): each prompt token's state after the joint layers gives the log-odds that the
    # final image honours that word (token-level feedback, as the Shapes checker's `word_verdicts` gives it)
    "tokens": 0,
}
JUDGE_WEIGHTS = "judge.safetensors"
DENSE_OUTPUTS = ("foresight", "objects", "object_classes", "tokens")  # what forward(dense=...) can give
OPTIONAL = ("foresight", "objects", "verdict_margin", "tokens")  # fields that may be 0 (off)


def check_architecture(arch: dict) -> dict:
    """`ARCHITECTURE` updated by `arch`, refused when a field is unknown or out of range."""
    unknown = set(arch) - set(ARCHITECTURE)
    if unknown:
        raise ValueError(f"unknown judge architecture fields {sorted(unknown)}: choose from {sorted(ARCHITECTURE)}")
    arch = {**ARCHITECTURE, **arch}
    if any(not isinstance(v, int) or v < (0 if k in OPTIONAL else 1) for k, v in arch.items()):
        raise ValueError(f"judge architecture fields must be integers >= 1 ({', '.join(OPTIONAL)} >= 0), got {arch}")
    if arch["tokens"] > 1:
        raise ValueError(f"tokens is 0 (no word head) or 1, got {arch['tokens']}")
    if arch["verdict_margin"] and not arch["objects"]:
        raise ValueError("verdict_margin reads the object head: set objects (the number of object classes)")
    if arch["width"] % arch["heads"] or arch["width"] % 4:
        raise ValueError(f"width {arch['width']} must be a multiple of 4 and of heads {arch['heads']}")
    return arch


JUDGE_SPACES = ("noisy_latents", "latents")  # z_t with its timestep; the x0 prediction (or final latents)


def check_judge_space(space: str) -> None:
    if space not in JUDGE_SPACES:
        raise ValueError(
            f"a judge reads {' or '.join(map(repr, JUDGE_SPACES))} in the middle of sampling, got {space!r}"
        )


def sincos_positions(height: int, width: int, dim: int) -> torch.Tensor:
    """Fixed 2D sine-cosine positions (MAE, He et al., 2022), (height * width, dim): any grid size reads them."""
    quarter = dim // 4
    freqs = 1.0 / (10_000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    parts = [f(c.flatten()[:, None] * freqs) for c in (ys, xs) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1)


class LatentJudge(Scorer):
    """Cross-encoder latent reward model distilled from a pixel judge (as ImageReward / VQAScore read text and image
    jointly), on z_t and t: `score` returns the log-odds that the final image satisfies the prompt."""

    space = "noisy_latents"  # the default; each judge's own is its `space` setting (see the module docstring)
    kind = "judge"
    needs_t = False  # t = None reads clean latents (t = 0)

    def __init__(
        self,
        text_encoder: nn.Module,
        tokenizer,
        vae_scaling_factor: float,
        vae_shift_factor: float = 0.0,
        architecture: dict | None = None,
        latent_scale: float | None = None,
        latent_shift: float | None = None,
        towers: nn.Module | None = None,
        space: str = "noisy_latents",
    ):
        super().__init__()
        check_judge_space(space)
        self.space = space
        if (text_encoder is None) == (towers is None):
            raise ValueError("a LatentJudge reads prompts with either a text encoder or a Latent-CLIP's towers")
        arch = check_architecture(architecture or {})
        self.architecture = arch
        self.text_encoder = text_encoder
        # a trained Latent-CLIP (a CLIPModel on raw latents): its text tower reads the prompt, its vision tower the
        # cells, and its CLIPScore is a prior the judge adds to (so it starts from Latent-CLIP's ranking)
        self.towers = towers
        self.tokenizer = tokenizer
        self.vae_scaling_factor = float(vae_scaling_factor)
        self.vae_shift_factor = float(vae_shift_factor)
        # the cells are normalised as the training pipeline's latents were (its scaling and shift, kept fixed), so a
        # judge read through `for_pipeline_latents` sees the same numbers from another pipeline on the same VAE
        self.latent_scale = float(vae_scaling_factor if latent_scale is None else latent_scale)
        self.latent_shift = float(vae_shift_factor if latent_shift is None else latent_shift)
        width = arch["width"]
        if towers is None:
            self.text_proj = nn.Linear(text_encoder.config.hidden_size, width)
            self.cell_proj = nn.Conv2d(arch["latent_channels"], width, arch["patch_size"], stride=arch["patch_size"])
        else:
            vision = towers.config.vision_config
            if vision.patch_size != 1 or arch["patch_size"] != 1 or vision.num_channels != arch["latent_channels"]:
                raise ValueError("judge towers must read latent cells one by one (patch size 1, the latent channels)")
            self.text_proj = nn.Linear(towers.config.text_config.hidden_size, width)
            self.cell_proj = nn.Linear(vision.hidden_size, width)
            self.tower_timestep = TimestepEmbedding(vision.hidden_size)  # on the tower's class token, starts at zero
            self.prior_weight = nn.Parameter(torch.tensor(10.0))
        self.timestep_embedding = TimestepEmbedding(width)
        self.type_embedding = nn.Parameter(torch.zeros(3, width))  # class token, prompt token, latent cell
        self.cls_token = nn.Parameter(torch.randn(width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, arch["heads"], arch["mlp_ratio"] * width, dropout=0.0, activation="gelu", batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.blocks = nn.TransformerEncoder(layer, arch["layers"], enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 1))
        side = arch["foresight"] * arch["patch_size"]
        self.foresight_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 3 * side * side)) if side else None
        classes, pixels = arch["objects"], arch["object_pixels"] * arch["patch_size"]
        self.word_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 1)) if arch["tokens"] else None
        self.object_head = (
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, classes * pixels * pixels)) if classes else None
        )
        if text_encoder is not None:
            text_encoder.requires_grad_(False)

    def reading(self, space: str) -> LatentJudge:
        """This judge reading `space` in the middle of sampling ("noisy_latents": z_t with its timestep; "latents":
        the x0 prediction): a shallow copy sharing the weights, or itself when it already reads `space`."""
        check_judge_space(space)
        if space == self.space:
            return self
        view = copy.copy(self)
        view.space = space
        return view

    def add_word_head(self) -> LatentJudge:
        """Give this judge a (new, trainable) word head, if it has none; returns it."""
        if self.word_head is None:
            self.architecture = {**self.architecture, "tokens": 1}
            width = self.architecture["width"]
            self.word_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 1)).to(self.device)
        return self

    def word_positions(self, prompts: list[str]) -> list[list[int]]:
        """For each prompt, the token position (in `text_states`' order) of each of its words (split on spaces and
        commas; a comma is tokenised but is no word): a word's last token, after the tokenizer's start token."""
        import re

        out = []
        for prompt in prompts:
            at, positions = 1, []
            for piece in re.findall(r"[^,\s]+|,", prompt.lower()):
                at += len(self.tokenizer(piece, add_special_tokens=False).input_ids)
                if piece != ",":
                    positions.append(at - 1)
            out.append(positions)
        return out

    def word_logits(self, x: torch.Tensor, prompts: list[str], t: torch.Tensor | int | None = None):
        """The word head's log-odds that each word of each prompt is honoured, (batch, most words; padded with 0),
        and the image-level log-odds (batch,), from one pass."""
        if self.word_head is None:
            raise ValueError("this judge has no word head (architecture tokens=0): see add_word_head")
        prompts = as_prompts(prompts, x.shape[0])
        prompts = prompts * x.shape[0] if len(prompts) == 1 else prompts
        log_odds, heads = self(x, prompts, self._checked_steps(x, t), dense=("tokens",))
        positions = self.word_positions(prompts)
        most = max(len(p) for p in positions)
        index = torch.tensor([p + [0] * (most - len(p)) for p in positions], device=heads["tokens"].device)
        words = heads["tokens"].gather(1, index)
        mask = torch.tensor([[1.0] * len(p) + [0.0] * (most - len(p)) for p in positions], device=words.device)
        return words * mask, log_odds

    @property
    def latent_size(self) -> int | None:
        return None if self.towers is None else self.towers.config.vision_config.image_size

    @property
    def in_channels(self) -> int:
        return self.architecture["latent_channels"]

    @property
    def device(self) -> torch.device:
        return self.head[1].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head[1].weight.dtype

    def check_input(self, x: torch.Tensor, t: torch.Tensor | int | None = None) -> None:
        super().check_input(x, t)
        patch = self.architecture["patch_size"]
        if x.shape[-2] % patch or x.shape[-1] % patch:
            raise ValueError(f"{type(self).__name__} reads latents in {patch}x{patch} patches, got {tuple(x.shape)}")

    def text_states(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The text encoder's last hidden states (batch, tokens, width), which tokens are padding (batch, tokens),
        and with towers the projected text embedding (batch, projection_dim), else None. A prompt repeated in the
        batch (Best-of-N's candidates) is encoded once."""
        unique = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
        if len(unique) < len(prompts):
            index = torch.tensor([unique[p] for p in prompts], device=self.device)
            states, padding, pooled = self.text_states(list(unique))
            return states[index], padding[index], None if pooled is None else pooled[index]
        config = self.text_encoder.config if self.towers is None else self.towers.config.text_config
        max_length = getattr(self.tokenizer, "model_max_length", 77)
        max_length = min(max_length, getattr(config, "max_position_embeddings", max_length))
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        if self.towers is not None:
            out = self.towers.text_model(input_ids=ids, attention_mask=mask)
            pooled = self.towers.text_projection(out.pooler_output)
            return out.last_hidden_state.to(self.dtype), mask == 0, pooled
        grad = any(p.requires_grad for p in self.text_encoder.parameters())
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            states = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return states.to(self.dtype), mask == 0, None

    def forward(self, x: torch.Tensor, prompts: list[str], t: torch.Tensor, dense: bool | tuple[str, ...] = False):
        """Log-odds for checked latents `x` (pipeline scaling), one prompt per row, one timestep per row. With
        `dense`, also a dict of the dense heads' outputs: "foresight", the picture of the final image in [0, 1]
        (batch, 3, H, W); "objects", object-class logits (batch, classes, h * object_pixels, w * object_pixels);
        "tokens", one log-odds per prompt token. `dense` may name the outputs wanted instead (True: every head the
        judge has), among them "object_classes": the argmax of "objects" (batch, H', W'), taken before the logits
        are laid out as a picture (what the clause verdict reads; cheaper than "objects")."""
        width = self.architecture["width"]
        prior = None
        if self.towers is None:
            cells = self.cell_proj((self.raw_latents(x.to(self.dtype)) - self.latent_shift) * self.latent_scale)
            h, w = cells.shape[-2:]
            cells = cells.flatten(2).transpose(1, 2)
        else:
            vision = self.towers.vision_model
            states = vision.embeddings(self.raw_latents(x.to(self.dtype)))
            states = torch.cat([states[:, :1] + self.tower_timestep(t)[:, None].to(states), states[:, 1:]], dim=1)
            states = vision.encoder(inputs_embeds=vision.pre_layrnorm(states)).last_hidden_state
            image = self.towers.visual_projection(vision.post_layernorm(states[:, 0]))
            h, w = x.shape[-2:]
            cells = self.cell_proj(states[:, 1:])
        cells = cells + sincos_positions(h, w, width).to(cells)
        text, padding, pooled = self.text_states(prompts)
        if self.towers is not None:
            pooled = nn.functional.normalize(pooled, dim=-1)
            image = nn.functional.normalize(image, dim=-1)
            prior = self.prior_weight * (image * (pooled if len(pooled) == len(image) else pooled[:1])).sum(-1)
        if text.shape[0] == 1 and x.shape[0] > 1:
            text, padding = text.expand(x.shape[0], -1, -1), padding.expand(x.shape[0], -1)
        text = self.text_proj(text)
        cls = self.cls_token.expand(x.shape[0], 1, -1)
        types = self.type_embedding
        tokens = torch.cat([cls + types[0], text + types[1], cells + types[2]], dim=1)
        tokens = tokens + self.timestep_embedding(t).to(tokens.dtype)[:, None]
        keep_out = torch.cat(
            [padding.new_zeros(x.shape[0], 1), padding, padding.new_zeros(x.shape[0], cells.shape[1])], dim=1
        )
        out = self.attend(tokens, keep_out)
        logits = self.head(out[:, 0]).squeeze(-1).float()
        if prior is not None:
            logits = logits + prior.float()
        if not dense:
            return logits
        wanted = set(DENSE_OUTPUTS if dense is True else dense)
        if wanted - set(DENSE_OUTPUTS):
            raise ValueError(f"dense names {sorted(wanted - set(DENSE_OUTPUTS))}; choose from {DENSE_OUTPUTS}")
        heads = {}
        cell_states = out[:, -cells.shape[1] :]
        if self.foresight_head is not None and "foresight" in wanted:
            patches = self.foresight_head(cell_states).transpose(1, 2).reshape(x.shape[0], -1, h, w)
            side = self.architecture["foresight"] * self.architecture["patch_size"]
            heads["foresight"] = torch.sigmoid(nn.functional.pixel_shuffle(patches, side).float())
        if self.object_head is not None and wanted & {"objects", "object_classes"}:
            grid = self.object_head(cell_states).transpose(1, 2).reshape(x.shape[0], -1, h, w)
            pixels = self.architecture["object_pixels"] * self.architecture["patch_size"]
            if "objects" in wanted:
                heads["objects"] = nn.functional.pixel_shuffle(grid, pixels).float()
            if "object_classes" in wanted:  # pixel_shuffle's layout (class, row, column within a cell), argmax first
                classes = grid.detach().view(x.shape[0], -1, pixels, pixels, h, w).argmax(1)
                heads["object_classes"] = classes.permute(0, 3, 1, 4, 2).reshape(x.shape[0], h * pixels, w * pixels)
        if self.word_head is not None and "tokens" in wanted:  # one log-odds per prompt token, the tokenizer's order
            heads["tokens"] = self.word_head(out[:, 1 : 1 + text.shape[1]]).squeeze(-1).float()
        return logits, heads

    def attend(self, tokens: torch.Tensor, keep_out: torch.Tensor) -> torch.Tensor:
        """The transformer blocks over each row's tokens, `keep_out` marking the padding (batch, tokens).

        Without padding (one prompt, or prompts of one length) no mask is passed, so inference takes the fused
        attention kernel instead of the masked softmax, which costs a fifth of a call on CPU. On CPU, outside
        training, prompts of several lengths run as one unmasked pass per padding pattern with the padding cut
        out (padded positions come back zero; only `word_logits` reads token outputs, and it masks them);
        elsewhere (training, or an accelerator, where each group would cost a synchronisation), as one masked
        pass. Both agree up to rounding (tested).
        """
        if not bool(keep_out.any()):
            return self.blocks(tokens)
        if self.training or tokens.device.type != "cpu":
            return self.blocks(tokens, src_key_padding_mask=keep_out)
        patterns, group = torch.unique(keep_out, dim=0, return_inverse=True)
        out = None
        for g, pattern in enumerate(patterns):
            rows, kept = (group == g).nonzero().squeeze(1), (~pattern).nonzero().squeeze(1)
            part = self.blocks(tokens[rows[:, None], kept])  # the rows' kept positions, as they are scattered back
            out = part.new_zeros(tokens.shape[:2] + part.shape[2:]) if out is None else out  # autocast's dtype
            out[rows[:, None], kept] = part
        return out

    def score(self, x: torch.Tensor, prompts: str | list[str], t: torch.Tensor | int | None = None) -> torch.Tensor:
        """Log-odds that each latent's final image satisfies its prompt (or the one prompt), shape (batch,).

        `t` (an int, or one timestep per latent) is the scheduler timestep of a noisy z_t; None reads clean latents.
        """
        return self.combine(*self.score_terms(x, prompts, t))

    def combine(self, log_odds: torch.Tensor, passes: torch.Tensor | None) -> torch.Tensor:
        """`score` from `score_terms`' two terms: the log-odds, plus `verdict_margin` where the clause rules pass."""
        return log_odds if passes is None else log_odds + self.architecture["verdict_margin"] * passes.to(log_odds)

    def score_terms(
        self, x: torch.Tensor, prompts: str | list[str], t: torch.Tensor | int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`score`'s two terms from one pass: the learned log-odds, and whether the predicted object map passes the
        clause rules (None when `verdict_margin` is 0)."""
        prompts = as_prompts(prompts, x.shape[0] if isinstance(x, torch.Tensor) and x.ndim else None)
        steps = self._checked_steps(x, t)
        if not self.architecture["verdict_margin"]:
            return self(x, prompts, steps), None
        log_odds, heads = self(x, prompts, steps, dense=("object_classes",))
        return log_odds, self.verdicts(heads["object_classes"], prompts * (x.shape[0] if len(prompts) == 1 else 1))

    def _checked_steps(self, x: torch.Tensor, t) -> torch.Tensor:
        """Refuse input this judge cannot read, count the calls, and give one timestep per row (t = None: 0)."""
        self.check_input(x, t)
        self.cost.scorer_calls += x.shape[0]
        steps = torch.zeros(1) if t is None else torch.as_tensor(t).flatten().float()
        return steps.to(self.device).expand(x.shape[0])

    @staticmethod
    def verdicts(object_classes: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Whether each predicted object map (batch, H, W of classes; with a class dimension, logits whose argmax
        it takes) passes the checker's clause rules."""
        from ..world.checker import map_verdicts

        maps = object_classes.detach()
        maps = maps.argmax(1) if maps.ndim == 4 else maps
        return torch.tensor(map_verdicts(maps.cpu().numpy(), prompts), dtype=torch.float32)

    def head_state(self) -> dict[str, torch.Tensor]:
        """Every trained tensor outside the text encoder or towers (which save themselves)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("text_encoder.", "towers."))}

    def scorer_config(self) -> dict:
        return {
            "vae_scaling_factor": self.vae_scaling_factor,
            "vae_shift_factor": self.vae_shift_factor,
            "latent_scale": self.latent_scale,
            "latent_shift": self.latent_shift,
            "architecture": self.architecture,
            "space": self.space,
        }

    def save_parts(self, folder: Path) -> None:
        """Write the text encoder, the tokenizer and `judge.safetensors` into `folder` (see `save_scorer`)."""
        from safetensors.torch import save_file

        if self.towers is None:
            self.text_encoder.save_pretrained(folder / "text_encoder")
        else:
            self.towers.save_pretrained(folder / "towers")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        save_file({k: v.contiguous() for k, v in self.head_state().items()}, folder / JUDGE_WEIGHTS)

    @classmethod
    def load_parts(cls, folder: Path, settings: dict) -> LatentJudge:
        """The judge `save_parts` wrote, with `settings` from its latentalign_scorer.json."""
        import transformers
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
        if (folder / "towers").is_dir():
            towers = transformers.CLIPModel.from_pretrained(folder / "towers", use_safetensors=True)
            judge = cls(None, tokenizer, **settings, towers=towers)
        else:
            config = read_json(folder / "text_encoder" / "config.json")
            names = config.get("architectures") or []
            text_class = getattr(transformers, names[0], None) if names else None
            if text_class is None:
                raise ValueError(f"{folder / 'text_encoder'}: its config names no known transformers class ({names})")
            text_encoder = text_class.from_pretrained(folder / "text_encoder", use_safetensors=True)
            judge = cls(text_encoder, tokenizer, **settings)
        state = read_safetensors(folder / JUDGE_WEIGHTS)
        missing = set(judge.head_state()) - set(state)
        if missing:
            raise ValueError(f"{folder / JUDGE_WEIGHTS} lacks {sorted(missing)[:3]}: not this judge's weights")
        judge.load_state_dict({**judge.state_dict(), **state})
        return judge


def judge_for_pipeline(pipe, architecture: dict | None = None, *, seed: int = 0) -> LatentJudge:
    """A random-weight judge for `pipe`: its VAE's latent convention, a copy of its (first) text encoder (so training
    or saving the judge never touches the pipeline's) and its tokenizer."""
    from ..adapters import vae_shift

    arch = dict(architecture or {})
    arch.setdefault("latent_channels", int(pipe.vae.config.latent_channels))
    torch.manual_seed(seed)
    text_encoder = pipe.text_encoder
    judge = LatentJudge(
        copy.deepcopy(text_encoder), pipe.tokenizer, float(pipe.vae.config.scaling_factor), vae_shift(pipe.vae), arch
    )
    return judge.to(text_encoder.device)


def judge_from_latent_clip(scorer, architecture: dict | None = None, *, seed: int = 0) -> LatentJudge:
    """A judge whose towers start as a trained Latent-CLIP's (a copy), with new joint layers on top."""
    if scorer.kind != "latent" or getattr(scorer, "stem", None) is not None:
        raise ValueError(f"judge towers come from a stem-free Latent-CLIP, got a {scorer.kind} scorer")
    torch.manual_seed(seed)
    arch = {**(architecture or {}), "latent_channels": scorer.clip.config.vision_config.num_channels}
    towers = copy.deepcopy(scorer.clip).requires_grad_(True)
    towers.logit_scale.requires_grad_(False)  # the prior's scale is the judge's own prior_weight
    return LatentJudge(None, scorer.tokenizer, scorer.vae_scaling_factor, scorer.vae_shift_factor, arch, towers=towers)
