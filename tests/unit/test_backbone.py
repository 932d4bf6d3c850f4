"""The EfficientNet-Lite0 backbone: torch-free .pth reading, conversion cache, ImageNet parity."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest

from hemato_model.training import backbone as bb
from hemato_model.training.pth_reader import PthError, load_state_dict

REFERENCE = Path("weights/efficientnet_lite0/efficientnet_lite0_imagenet.keras")


@pytest.fixture(scope="module")
def pth_path() -> Path:
    return bb._pth_path()


@pytest.fixture(scope="module")
def state(pth_path: Path) -> dict[str, np.ndarray]:
    return load_state_dict(pth_path)


def test_pth_reader_reads_all_tensors_without_torch(state: dict[str, np.ndarray]) -> None:
    import sys

    assert "torch" not in sys.modules
    assert len(state) == 296
    stem = state["_conv_stem.weight"]
    assert stem.shape == (32, 3, 3, 3) and stem.dtype == np.float32
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_bn0.num_batches_tracked"].shape == ()
    # Real trained weights, not zeros; BN variances positive.
    assert np.abs(stem).mean() > 1e-3
    assert (state["_bn1.running_var"] > 0).all()


def test_pth_reader_refuses_foreign_globals(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pth"
    buf = io.BytesIO()
    pickle.dump(0x1950A86A20F9469CFC6C, buf, protocol=2)
    pickle.dump(1001, buf, protocol=2)
    pickle.dump({"protocol_version": 1001}, buf, protocol=2)
    buf.write(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00echo\x85R.")  # os.system("echo")
    evil.write_bytes(buf.getvalue())
    with pytest.raises(PthError, match="refusing"):
        load_state_dict(evil)


def test_pth_reader_rejects_non_pytorch_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(pickle.dumps(12345, protocol=2))
    with pytest.raises(PthError):
        load_state_dict(junk)


def test_conversion_is_cached(tmp_path: Path) -> None:
    weights = bb.imagenet_weights(cache_dir=tmp_path)
    cached = tmp_path / bb._CACHE_NAME
    assert cached.is_file()
    assert weights["stem_conv"][0].shape == (3, 3, 3, 32)  # (kh, kw, in, out)
    assert weights["block2a_dwconv"][0].shape == (3, 3, 96, 1)
    mtime = cached.stat().st_mtime_ns
    again = bb.imagenet_weights(cache_dir=tmp_path)
    assert cached.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(again["predictions"][0], weights["predictions"][0])


def test_unknown_backbone_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        bb.build_backbone("resnet9000", 64)


@pytest.mark.slow
def test_backbone_features_shape() -> None:
    model = bb.build_backbone("efficientnet_lite0", 64)
    out = model.predict_on_batch(np.full((2, 64, 64, 3), 127.0, dtype=np.float32))
    assert out.shape == (2, 1280)
    assert np.isfinite(out).all()


def _imagenet_input(img: np.ndarray) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    s = 256 / min(h, w)
    im = Image.fromarray(img).resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC)
    a = np.asarray(im).astype(np.float32)
    y, x = (a.shape[0] - 224) // 2, (a.shape[1] - 224) // 2
    return a[y : y + 224, x : x + 224]


@pytest.mark.slow
def test_full_model_matches_reference_keras_file(require) -> None:  # type: ignore[no-untyped-def]
    import keras
    import skimage.data

    from hematovision.core.settings import load_settings

    ref_path = load_settings().data_root / REFERENCE
    require(ref_path.is_file(), f"the reference model at {ref_path} (shared weights folder)")
    x = np.stack([_imagenet_input(skimage.data.chelsea()), _imagenet_input(skimage.data.coffee())])
    ours = bb.build_imagenet_model().predict_on_batch(x)
    ref = keras.models.load_model(ref_path).predict_on_batch(x)
    assert ours.shape == (2, 1000)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    top5 = np.argsort(-ours, axis=1)[:, :5]
    assert set(top5[0]) & {281, 282, 283, 284, 285}, top5[0]
    assert 967 in top5[1], top5[1]
