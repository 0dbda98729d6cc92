"""Save, load and bind a behaviour-model version (features/models/sequence.py).

A version folder holds model.pt: the parameters, the weights and the item ids of its ID
embeddings. `attach` binds it to a Catalog (features/retrieval/catalog.py): every row gets the
model's item vector (text-only for items the model never saw, so new items are scored too), and
ranking and retrieval then use `catalog.sequence`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from features import artifacts as A
from features.models import sequence as SQ

MODEL_FILE = "model.safetensors"  # weights (safetensors: loading executes no code)
META_FILE = "model.json"  # parameters, text dimension, the item ids of the ID embeddings


def save_model(folder: str | Path, model: SQ.SequenceModel, item_ids: list[str], text_dim: int) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / MODEL_FILE))
    (folder / META_FILE).write_text(json.dumps({"params": asdict(model.p), "text_dim": int(text_dim),
                                                "item_ids": list(item_ids)}))


def load_model(version_dir: str) -> tuple[SQ.SequenceModel, list[str]]:
    """(model, the item ids its ID embeddings belong to) of a sequence version (path or URI)."""
    from safetensors.torch import load_file

    local = Path(A.local_copy(version_dir) if A.is_uri(version_dir) else version_dir)
    meta = json.loads((local / META_FILE).read_text())
    model = SQ.SequenceModel(len(meta["item_ids"]), meta["text_dim"], SQ.SequenceParams(**meta["params"]))
    model.load_state_dict(load_file(str(local / MODEL_FILE)), strict=False)  # the text-vector buffer is not saved
    return model.eval(), meta["item_ids"]


def save_state(folder: str | Path, model: SQ.SequenceModel, opt, st: dict) -> None:
    """A training checkpoint: weights, the best weights, Adam's moments and the run's state."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "weights.safetensors"))
    if st.get("best_state"):
        save_file({k: v.contiguous() for k, v in st["best_state"].items()}, str(folder / "best.safetensors"))
    o = opt.state_dict()
    save_file({f"{i}.{name}": t.contiguous() for i, per in o["state"].items() for name, t in per.items()
               if torch.is_tensor(t)} or {"_": torch.zeros(1)}, str(folder / "optimizer.safetensors"))
    (folder / "state.json").write_text(json.dumps({"state": {k: v for k, v in st.items() if k != "best_state"},
                                                   "param_groups": o["param_groups"]}))


def load_state(folder: str | Path, model: SQ.SequenceModel, opt=None) -> dict:
    """Restore a `save_state` checkpoint into model (and opt); returns the run's state."""
    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    model.load_state_dict(load_file(str(folder / "weights.safetensors")), strict=False)
    meta = json.loads((folder / "state.json").read_text())
    st = meta["state"]
    best = folder / "best.safetensors"
    st["best_state"] = load_file(str(best)) if best.is_file() else None
    if opt is not None:
        flat = load_file(str(folder / "optimizer.safetensors"))
        state: dict = {}
        for key, t in flat.items():
            if key == "_":
                continue
            i, name = key.split(".", 1)
            state.setdefault(int(i), {})[name] = t if name != "step" else t.to(torch.float32)
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return st


def scorer_for(version_dir: str, catalog_ids: list[str], text_vectors: np.ndarray) -> SQ.SequenceScorer:
    model, ids = load_model(version_dir)
    if model.adapter is not None and model.adapter.in_features != text_vectors.shape[1]:
        raise ValueError(f"sequence version {version_dir} was trained on {model.adapter.in_features}-d text vectors; "
                         f"the catalog's are {text_vectors.shape[1]}-d (a different encoder): retrain it on this index")
    return SQ.SequenceScorer(model, ids, catalog_ids, text_vectors)


def attach(catalog, version_dir: str) -> None:
    """Bind a sequence version to a Catalog's rows (catalog.sequence)."""
    catalog.sequence = scorer_for(version_dir, catalog.item_ids, catalog.vectors)
