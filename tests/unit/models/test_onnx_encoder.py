"""The ONNX Runtime encoder against the torch model it was exported from, on real catalog titles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from features.models import onnx_encoder as OX
from features.models.encoder import EncoderConfig, TwoTowerEncoder

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def titles() -> list[str]:
    """300 distinct product titles from the bundled Online Retail log (mixed lengths, odd casing)."""
    df = pl.read_parquet(ROOT / "data" / "online_retail.parquet", columns=["Description"])
    t = df["Description"].drop_nulls().unique().sort().to_list()
    return [t[i] for i in np.random.default_rng(0).choice(len(t), 300, replace=False)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch_enc = TwoTowerEncoder(EncoderConfig(max_length=32))
    d = OX.export_onnx(torch_enc, tmp_path_factory.mktemp("onnx"), source=None)
    return torch_enc, OX.OnnxEncoder(d, threads=1), d


def test_parity_with_torch_on_real_titles_batched_and_one_by_one(exported, titles):
    torch_enc, onnx_enc, _ = exported
    queries = ["red heart lantern", "Vintage christmas BUNTING", "glass", "set of 3 cake tins pantry design"]
    for tower, texts in (("item", titles), ("query", queries + titles[:40])):
        ref = torch_enc.encode(texts, tower, batch_size=64)
        got = onnx_enc.encode(texts, tower, batch_size=64)
        assert got.shape == ref.shape and got.dtype == np.float32
        assert (ref * got).sum(1).min() >= 0.999
        one = np.concatenate([onnx_enc.encode([t], tower) for t in texts[:30]])
        assert (ref[:30] * one).sum(1).min() >= 0.999  # padding in a batch does not change a row
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)


def test_blank_text_is_zero_and_long_text_is_truncated_like_torch(exported):
    torch_enc, onnx_enc, _ = exported
    long = " ".join(["ceramic"] * 10 + ["lantern"] * 200)  # far past max_length=32 tokens
    got = onnx_enc.encode([None, "", "   ", long, "mug"])
    assert not got[:3].any()
    ref = torch_enc.encode([long, "mug"])
    assert (ref * got[3:]).sum(1).min() >= 0.999


def test_folder_carries_its_config_and_rejects_bad_use(exported, tmp_path):
    _, onnx_enc, d = exported
    assert onnx_enc.cfg.max_length == 32 and onnx_enc.dim == 384 and onnx_enc.source is None
    assert not (d / "item.onnx").exists()  # shared towers: one graph
    with pytest.raises(FileNotFoundError, match="not an exported encoder"):
        OX.OnnxEncoder(tmp_path)
    with pytest.raises(ValueError, match="allowed: 'query', 'item'"):
        onnx_enc.encode(["x"], tower="user")
    with pytest.raises(ValueError, match="allowed: onnx, torch"):
        OX.check_runtime("tensorrt")
    again = OX.from_files(OX.folder_files(d))  # as an actor on another node receives it
    np.testing.assert_array_equal(again.encode(["red mug"]), onnx_enc.encode(["red mug"]))


def test_runtime_encoder_prefers_the_given_export_and_falls_back_to_exporting(exported):
    _, _, d = exported
    enc, ckpt = OX.runtime_encoder("zero-shot", runtime="onnx", onnx_dir=str(d))
    assert isinstance(enc, OX.OnnxEncoder) and enc.directory == str(d) and ckpt is None
    t_enc, _ = OX.runtime_encoder("zero-shot", zero_shot=EncoderConfig(max_length=32), runtime="torch", onnx_dir=str(d))
    assert isinstance(t_enc, TwoTowerEncoder)
    with pytest.raises(ValueError, match="encoder.runtime"):
        OX.runtime_encoder("zero-shot", runtime="openvino")


def test_separate_towers_export_two_graphs(tmp_path):
    import torch

    enc = TwoTowerEncoder(EncoderConfig(max_length=16, share_towers=False))
    with torch.no_grad():  # make the towers differ, as a fine-tune with share_towers=false does
        enc.item_model.embeddings.word_embeddings.weight.mul_(1.5)
    d = OX.export_onnx(enc, tmp_path)
    assert (d / "query.onnx").is_file() and (d / "item.onnx").is_file()
    onnx_enc = OX.OnnxEncoder(d)
    texts = ["white hanging heart t-light holder", "jumbo bag red retrospot"]
    for tower in ("query", "item"):
        assert (enc.encode(texts, tower) * onnx_enc.encode(texts, tower)).sum(1).min() >= 0.999
    assert (onnx_enc.encode(texts, "query") * onnx_enc.encode(texts, "item")).sum(1).max() < 0.999


def test_int8_query_tower_stays_close_to_float32_and_items_stay_float32(exported, titles, tmp_path):
    _, fp32, d = exported
    int8 = OX.OnnxEncoder(d, threads=1, query_precision="int8")  # quantised at load: the folder has no int8 file
    queries = [t.lower() for t in titles]
    ref, got = fp32.encode(queries, "query"), int8.encode(queries, "query")
    cos = (ref * got).sum(1)
    assert cos.mean() >= 0.985 and cos.min() >= 0.95  # per-channel int8 weights (per-tensor: mean 0.967)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    assert not np.allclose(ref, got)  # it is a different model
    np.testing.assert_array_equal(int8.encode(titles[:20], "item"), fp32.encode(titles[:20], "item"))
    # the same ranking for most queries: the top item among the catalog titles agrees
    items = fp32.encode(titles, "item")
    assert ((ref @ items.T).argmax(1) == (got @ items.T).argmax(1)).mean() >= 0.9
    # a folder that ships the int8 file is read, not quantised again
    shipped = tmp_path / "ship"
    shipped.mkdir()
    for p in d.iterdir():
        (shipped / p.name).write_bytes(p.read_bytes())
    OX.quantize_query(d, shipped / OX.QUERY_INT8_FILE)
    np.testing.assert_allclose(OX.OnnxEncoder(shipped, 1, "int8").encode(queries[:5]), got[:5], atol=1e-6)
    # one query at a time whatever the batch: its vector does not depend on its batch-mates
    np.testing.assert_allclose(np.concatenate([int8.encode([q]) for q in queries[:5]]), got[:5], atol=1e-6)


def test_int8_block_query_tower_keeps_float32_parity_on_real_titles(exported, titles, tmp_path):
    _, fp32, d = exported
    blocks = OX.OnnxEncoder(d, threads=1, query_precision="int8-block")  # quantised at load
    queries = [t.lower() for t in titles]
    ref, got = fp32.encode(queries, "query"), blocks.encode(queries, "query", batch_size=64)
    cos = (ref * got).sum(1)
    assert cos.min() >= 0.999  # the export's own parity bar (dynamic int8: mean 0.993, min about 0.98)
    assert not np.allclose(ref, got)  # it is a different model
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(blocks.encode(titles[:20], "item"), fp32.encode(titles[:20], "item"))
    # batched freely: a row's vector does not depend on its batch-mates (no per-call scale)
    np.testing.assert_allclose(np.concatenate([blocks.encode([q]) for q in queries[:8]]), got[:8], atol=1e-5)
    assert not blocks.encode(["", "  "]).any()  # blank stays the zero vector
    shipped = tmp_path / "ship"
    shipped.mkdir()
    for p in d.iterdir():
        (shipped / p.name).write_bytes(p.read_bytes())
    OX.quantize_query(d, shipped / OX.QUERY_FILES["int8-block"], "int8-block")
    np.testing.assert_allclose(OX.OnnxEncoder(shipped, 1, "int8-block").encode(queries[:5]), got[:5], atol=1e-6)
    with pytest.raises(ValueError, match="allowed here: int8, int8-block"):
        OX.quantize_query(d, tmp_path / "x.onnx", "fp32")


def test_query_precision_is_validated_by_name(exported):
    _, _, d = exported
    with pytest.raises(ValueError, match=r"encoder.query_precision='int4'; allowed: fp32, int8-block, int8"):
        OX.OnnxEncoder(d, 1, "int4")
    for precision in ("int8", "int8-block"):
        with pytest.raises(ValueError, match=f"{precision} needs the onnx runtime"):
            OX.runtime_encoder("zero-shot", runtime="torch", query_precision=precision)
    from features.config import ConfigError
    from serving.settings import EncoderServing

    with pytest.raises(ConfigError, match="query_precision"):
        EncoderServing(query_precision="bf16")
    assert EncoderServing(query_precision="int8").query_precision == "int8"
