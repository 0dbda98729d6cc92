"""The encoder on ONNX Runtime: one exported model for the index job, serving and evaluation.

`export_onnx` writes a folder from a TwoTowerEncoder (the zero-shot model or a fine-tuned
checkpoint): query.onnx (the query tower, mean pooling and L2 normalisation inside the graph),
item.onnx only when the towers do not share weights, the tokenizer files, and onnx_encoder.json.
`OnnxEncoder` reads that folder and has TwoTowerEncoder's inference surface (`encode`, `dim`,
`cfg`), with the same text rules: None or blank text is the zero vector, long text keeps its head.

Why: at batch 1 (one search query) the ONNX Runtime CPU session with its graph optimisations
(operator fusion, constant folding; ORT_ENABLE_ALL) encodes about 3x faster than eager torch on
2 CPUs (bench/encoder.py), with cosine >= 0.999 against torch (tests/unit/models/test_onnx_encoder.py).

`query_precision` other than fp32 runs the query tower only as a quantised twin of the same graph,
made once at load (`quantize_query`, about a second) unless the folder ships it; item vectors stay
float32 (the index's, and the upserts'), so only the query side is approximate:
- "int8-block": ONNX Runtime's weight-only MatMulNBits, 8-bit weights in blocks of 16 along the
  inner dimension, computed in int8 with activations quantised per row and block (accuracy level
  4). Block 16 was the largest that kept every one of 300 Online Retail titles at cosine >= 0.999
  against float32 when it was chosen (32: min 0.9989); the unit test holds it to that. Rows never
  share a scale, so a vector does not depend on its batch-mates.
- "int8": ONNX Runtime's dynamic quantisation (int8 weights per output channel, activations
  quantised per call, cosine about 0.993). Its activation scales are taken per call, so int8
  queries are encoded one at a time (serving encodes one query per request anyway).
bench/encoder.py and the Crowdflower evaluation measure what each costs; docs/serving.md says
which serving/config.yaml ships and why.

The index job exports once and ships the folder with the index version (index/<v>/encoder_onnx/),
so the vectors in the index and the queries that search it come from the same file. Training
stays on torch (features/models/encoder.py); a GPU index build encodes with torch on CUDA.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from features.models.encoder import EncoderConfig, TwoTowerEncoder, by_length, load_encoder

META_FILE = "onnx_encoder.json"
FOLDER = "encoder_onnx"  # inside an index version
RUNTIMES = ("onnx", "torch")
Runtime = Literal["onnx", "torch"]
PRECISIONS = ("fp32", "int8-block", "int8")  # of the query tower on ONNX Runtime
QUERY_FILES = {"int8": "query_int8.onnx", "int8-block": "query_int8_block.onnx"}  # a folder may ship them
QUERY_INT8_FILE = QUERY_FILES["int8"]
BLOCK = 16  # int8-block's block size (see above)
_OPSET = 17


def check_runtime(runtime: str, field: str = "encoder.runtime") -> None:
    if runtime not in RUNTIMES:
        raise ValueError(f"{field}={runtime!r}; allowed: {', '.join(RUNTIMES)}")


def check_precision(precision: str, runtime: str = "onnx", field: str = "encoder.query_precision") -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"{field}={precision!r}; allowed: {', '.join(PRECISIONS)}")
    if precision != "fp32" and runtime != "onnx":
        raise ValueError(f"{field}={precision} needs the onnx runtime (got runtime={runtime!r}); allowed with torch: fp32")


def quantize_query(directory: str | Path, out: str | Path, precision: str = "int8") -> Path:
    """Write the `precision` twin of the folder's query tower to `out` (a file path).

    int8: ONNX Runtime's dynamic quantisation, signed int8 weights per output channel (per-tensor
    weights moved MiniLM's query vectors to cosine 0.967 on average, per-channel to 0.992).
    int8-block: MatMulNBits with 8-bit symmetric weights in blocks of BLOCK, int8 compute."""
    check_precision(precision)
    if precision == "fp32":
        raise ValueError("precision='fp32' is the folder's own query tower; allowed here: int8, int8-block")
    src = Path(directory) / _tower_file("query", False)
    if precision == "int8-block":
        return _quantize_blocks(src, Path(out))
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="intently-int8-") as d:
        pre = Path(d) / "pre.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=True)
    return Path(out)


def _quantize_blocks(src: Path, out: Path) -> Path:
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = log.level
    log.setLevel(logging.WARNING)  # it logs every node it skips at INFO
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            algo = DefaultWeightOnlyQuantConfig(block_size=BLOCK, is_symmetric=True, accuracy_level=4, bits=8)
            q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=8, block_size=BLOCK, is_symmetric=True,
                                     accuracy_level=4, algo_config=algo)
            q.process()
            q.model.save_model_to_file(str(out), False)
    finally:
        log.setLevel(level)
    return out


def _tower_file(tower: str, share: bool) -> str:
    return "query.onnx" if tower == "query" or share else "item.onnx"


def export_onnx(encoder: TwoTowerEncoder, directory: str | Path, source: str | None = None) -> Path:
    """Write the ONNX folder for `encoder` into the local `directory` (created); returns it.

    `source` (the checkpoint folder, None for zero-shot) is recorded in onnx_encoder.json.
    """
    import torch

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    was_training = encoder.training
    encoder.eval()

    class _Tower(torch.nn.Module):
        def __init__(self, tower: str) -> None:
            super().__init__()
            self.enc, self.tower = encoder, tower

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.enc.forward(input_ids, attention_mask, self.tower)  # type: ignore[arg-type]

    example = encoder.tokenize(["an example query", "a longer example item title text"])
    towers = ["query"] if encoder.cfg.share_towers else ["query", "item"]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes on python-level shape checks (constant here)
        for tower in towers:
            # The TorchScript exporter: a traced graph with dynamic batch and length axes. It needs no
            # extra packages (the dynamo exporter wants onnxscript) and MiniLM exports in ~3 s.
            torch.onnx.export(
                _Tower(tower), (example["input_ids"], example["attention_mask"]), str(d / _tower_file(tower, False)),
                input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                              "embedding": {0: "batch"}},
                opset_version=_OPSET, dynamo=False,
            )
    encoder.train(was_training)
    encoder.tokenizer.save_pretrained(str(d))
    (d / META_FILE).write_text(json.dumps({"config": asdict(encoder.cfg), "dim": encoder.dim, "source": source,
                                           "opset": _OPSET, "torch": torch.__version__}, indent=2))
    return d


def is_onnx_folder(path: str | Path | None) -> bool:
    return path is not None and (Path(path) / META_FILE).is_file() and (Path(path) / "query.onnx").is_file()


class OnnxEncoder:
    """Inference-only encoder over an `export_onnx` folder (CPU execution provider)."""

    runtime = "onnx"

    def __init__(self, directory: str | Path, threads: int = 1, query_precision: str = "fp32") -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        d = Path(directory)
        if not is_onnx_folder(d):
            raise FileNotFoundError(f"{d} is not an exported encoder (needs {META_FILE} and query.onnx)")
        if threads < 1:
            raise ValueError(f"encoder threads must be >= 1, got {threads}")
        check_precision(query_precision)
        self.query_precision = query_precision
        meta = json.loads((d / META_FILE).read_text())
        self.cfg = EncoderConfig(**meta["config"])
        self.dim = int(meta["dim"])
        self.source = meta.get("source")
        self.directory = str(d)
        self.tokenizer = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1

        def session(path: Path):
            return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

        self._sessions = {}
        for tower in ("query", "item"):
            name = _tower_file(tower, self.cfg.share_towers)
            if name not in self._sessions:
                self._sessions[name] = session(d / name)
        self._query = self._sessions[_tower_file("query", self.cfg.share_towers)]
        if query_precision != "fp32":  # the query tower's quantised twin; items keep the float32 session
            name = QUERY_FILES[query_precision]
            if (d / name).is_file():
                self._query = session(d / name)
            else:
                with tempfile.TemporaryDirectory(prefix="intently-int8-") as t:
                    self._query = session(quantize_query(d, Path(t) / name, query_precision))

    def _session(self, tower: str):
        if tower not in ("query", "item"):
            raise ValueError(f"tower {tower!r}; allowed: 'query', 'item'")
        return self._query if tower == "query" else self._sessions[_tower_file(tower, self.cfg.share_towers)]

    def encode(self, texts: Sequence[str | None], tower: str = "query", batch_size: int | None = None) -> np.ndarray:
        """Texts -> (N, d) float32, L2-normalised rows; None/blank texts give zero rows."""
        session = self._session(tower)
        out = np.zeros((len(texts), self.dim), np.float32)
        keep = [i for i, t in enumerate(texts) if t is not None and str(t).strip()]
        bs = batch_size or self.cfg.batch_size
        if tower == "query" and self.query_precision == "int8":
            # Dynamic quantisation scales activations over the whole call, padding included, so a
            # query's vector would depend on its batch-mates: int8 queries are encoded one by one.
            bs = 1
        for rows in by_length(texts, keep, bs):
            tok = self.tokenizer([str(texts[i]) for i in rows], padding=True, truncation=True,
                                 max_length=self.cfg.max_length, return_tensors="np")
            feed = {"input_ids": tok["input_ids"].astype(np.int64), "attention_mask": tok["attention_mask"].astype(np.int64)}
            out[rows] = session.run(None, feed)[0]
        return out


def folder_files(directory: str | Path) -> dict[str, bytes]:
    """An exported folder as {file name: bytes}, to ship to Ray actors on other nodes."""
    return {p.name: p.read_bytes() for p in Path(directory).iterdir() if p.is_file()}


def from_files(files: dict[str, bytes], threads: int = 1) -> OnnxEncoder:
    """An OnnxEncoder from `folder_files` output (written to a temporary folder, loaded, removed)."""
    with tempfile.TemporaryDirectory(prefix="intently-onnx-") as d:
        for name, data in files.items():
            (Path(d) / name).write_bytes(data)
        return OnnxEncoder(d, threads)  # sessions and tokenizer are in memory once built


def export_spec(spec: str, artifacts_root: str, zero_shot: EncoderConfig, directory: str | Path,
                **overrides) -> tuple[Path, str | None]:
    """Load the torch encoder for a `load_encoder` spec and export it into `directory`:
    (the folder, the checkpoint it came from or None for zero-shot)."""
    model, checkpoint = load_encoder(spec, artifacts_root, zero_shot, **overrides)
    return export_onnx(model, directory, checkpoint), checkpoint


def runtime_encoder(spec: str, artifacts_root: str = "artifacts", zero_shot: EncoderConfig = EncoderConfig(),
                    runtime: str = "onnx", threads: int = 1, onnx_dir: str | None = None,
                    query_precision: str = "fp32", **overrides):
    """(encoder, checkpoint folder or None) for inference on the chosen runtime.

    runtime="onnx": the exported folder `onnx_dir` when given and present (e.g. the index
    version's), else the torch model for `spec` exported once into a temporary folder; its query
    tower in `query_precision` (see OnnxEncoder).
    runtime="torch": the torch model (features.models.encoder.load_encoder).
    """
    check_runtime(runtime)
    check_precision(query_precision, runtime)
    if runtime == "onnx" and is_onnx_folder(onnx_dir):
        enc = OnnxEncoder(onnx_dir, threads, query_precision)  # type: ignore[arg-type]
        return enc, enc.source
    import torch

    torch.set_num_threads(threads)
    if runtime == "torch":
        model, checkpoint = load_encoder(spec, artifacts_root, zero_shot, **overrides)
        return model.eval(), checkpoint
    with tempfile.TemporaryDirectory(prefix="intently-onnx-") as d:
        _, checkpoint = export_spec(spec, artifacts_root, zero_shot, d, **overrides)
        return OnnxEncoder(d, threads, query_precision), checkpoint

