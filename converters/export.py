"""Export the trained captioner to TFLite model sets in models/: int8, 4-bit and float decoders.

Every set has the same full-integer int8 encoder (uint8 pixels in, calibrated on real training images)
and a decoder split into `init` (once per image) and `step` (once per word):
- captioner-float: float32 decoder
- captioner-int8:  int8 weights (dynamic range), float activations
- captioner-4bit:  4-bit weights (ai-edge-quantizer) for every matrix, embedding and output included
Keras 3 keeps weights in resource variables, which full-integer calibration cannot read
(READ_VARIABLE), so every function is frozen to constants before conversion.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from converters.data import END, PAD, START, UNK, Dataset, normalize
from converters.prior import training_sample, write_priors
from device.modelset import sha256_of, write_manifest
from device.preprocess import load_image, to_model_input
from device.runtime import make_interpreter

log = logging.getLogger(__name__)

SETS = ("captioner-int8", "captioner-4bit", "captioner-float")
PREPROCESSING = {
    "decode": "Pillow, EXIF orientation applied, RGB",
    "resize": "squash to 224x224 (no crop, aspect ratio not kept), bilinear",
    "input": "uint8 0..255 [1,224,224,3]; the [-1,1] scaling is inside the encoder",
    "function": "device.preprocess.to_model_input",
}


def _frozen(fn, *specs):
    """fn's graph with its weights as constants, its outputs still named by fn's dict keys."""
    concrete = tf.function(fn).get_concrete_function(*specs)
    frozen = convert_variables_to_constants_v2(concrete)
    names = sorted(concrete.structured_outputs)  # the order in which a dict is flattened

    @tf.function(input_signature=specs)
    def named(*args):
        return dict(zip(names, frozen(*args)))
    return named.get_concrete_function()


def _convert(frozen, **options) -> bytes:
    # A (variable-free) trackable selects the converter path that keeps the signature (named tensors).
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], tf.Module())
    for key, value in options.items():
        setattr(converter, key, value)
    return converter.convert()


def export_encoder(encoder, calibration_images: list[Path]) -> bytes:
    fn = _frozen(lambda image: {"features": encoder(image, training=False)},
                 tf.TensorSpec([1, 224, 224, 3], tf.float32, name="image"))

    def representative():
        for path in calibration_images:
            yield {"image": to_model_input(load_image(path))[None].astype(np.float32)}

    return _convert(fn, optimizations=[tf.lite.Optimize.DEFAULT], representative_dataset=representative,
                    target_spec=_int8_only(), inference_input_type=tf.uint8,
                    inference_output_type=tf.float32)


def _int8_only():
    spec = tf.lite.TargetSpec()
    spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return spec


def decoder_functions(decoder):
    cfg = decoder.cfg
    init = _frozen(lambda features: dict(zip(("values", "keys", "h"), decoder.init(features))),
                   tf.TensorSpec([1, 49, cfg.feat_dim], tf.float32, name="features"))

    def step(token, h, values, keys):
        logits, h, alpha = decoder.step(token, h, values, keys)
        return {"logprobs": tf.nn.log_softmax(logits), "h": h, "alpha": alpha}

    step = _frozen(step, tf.TensorSpec([None], tf.int32, name="token"),
                   tf.TensorSpec([None, cfg.hidden], tf.float32, name="h"),
                   tf.TensorSpec([None, 49, cfg.value_dim], tf.float32, name="values"),
                   tf.TensorSpec([None, 49, cfg.attn_dim], tf.float32, name="keys"))
    return init, step


def quantize_4bit(float_model: bytes) -> bytes:
    from ai_edge_quantizer import quantizer, recipe
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "float.tflite"
        src.write_bytes(float_model)
        qt = quantizer.Quantizer(str(src))
        qt.load_quantization_recipe(recipe.dynamic_wi4_afp32())
        return qt.quantize().quantized_model


def signature_details(path: Path) -> dict:
    runner = make_interpreter(path, 1).get_signature_runner("serving_default")

    def describe(details):
        return {name: {"dtype": np.dtype(d["dtype"]).name, "shape": [int(s) for s in d["shape_signature"]]}
                for name, d in details.items()}

    return {"inputs": describe(runner.get_input_details()), "outputs": describe(runner.get_output_details())}


TENSOR_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 7: "int16", 9: "int8",
                17: "int4"}


def weight_bytes(path: Path, list_above: int = 50_000) -> dict:
    """Stored weight bytes per data type, and the big matrices one by one: shows what is 4-bit."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils
    model = tfl_flatbuffer_utils.read_model(str(path))
    by_type: dict[str, int] = {}
    big = []
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            data = model.buffers[tensor.buffer].data
            size = 0 if data is None else len(data)
            if not size:
                continue
            dtype = TENSOR_TYPES.get(tensor.type, str(tensor.type))
            by_type[dtype] = by_type.get(dtype, 0) + size
            if size > list_above:
                name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
                big.append({"tensor": name, "dtype": dtype, "shape": [int(s) for s in tensor.shape],
                            "bytes": size})
    return {"bytes_by_dtype": by_type, "largest": sorted(big, key=lambda t: -t["bytes"])}


def write_set(out: Path, name: str, files: dict[str, bytes], quantization: dict, meta: dict) -> Path:
    set_dir = out / name
    if set_dir.exists():
        shutil.rmtree(set_dir)
    set_dir.mkdir(parents=True)
    names = {role: f"{role}.tflite" for role in files}
    for role, data in files.items():
        (set_dir / names[role]).write_bytes(data)
    manifest = {
        "name": name, "kind": "captioner", "version": 1,
        "files": names,  # write_manifest adds sha256 and sizes
        "quantization": quantization,
        "preprocessing": PREPROCESSING,
        "tensors": {role: signature_details(set_dir / f) for role, f in names.items()},
        "weights": {role: weight_bytes(set_dir / f) for role, f in names.items() if role != "encoder"},
        **meta,
        "metrics": {},
    }
    manifest = write_manifest(set_dir, manifest)
    log.info("%s: %s bytes", name, sum(manifest["sizes"].values()))
    return set_dir


def export(dataset: Dataset, out: Path, encoder, decoder, vocab, train_meta: dict,
           calibration: int = 200, length_penalty: float = 0.7, sets=SETS,
           keep_encoder: Path | None = None) -> list[Path]:
    """Write the model sets. `keep_encoder`: an existing encoder.tflite to reuse as it is. The encoder
    is frozen, so a decoder retrained on other data needs no new one, and the converter is not
    byte-reproducible across TensorFlow versions: reusing it keeps image-projection (fitted to its
    features) and the image vectors already stored on devices valid."""
    # Calibrated on the first dataset's (Flickr8k's) training images only, as before COCO was added.
    train_names = (dataset.parts or [dataset])[0].splits["train"]
    picks = np.random.default_rng(0).choice(len(train_names), min(calibration, len(train_names)), replace=False)
    if keep_encoder is not None:
        encoder_bytes = Path(keep_encoder).read_bytes()
        log.info("encoder: reusing %s (sha256 %s)", keep_encoder, sha256_of(Path(keep_encoder)))
    else:
        encoder_bytes = export_encoder(encoder, [dataset.image_path(train_names[i]) for i in sorted(picks)])
    init_fn, step_fn = decoder_functions(decoder)
    float_init, float_step = _convert(init_fn), _convert(step_fn)
    dynamic = {"optimizations": [tf.lite.Optimize.DEFAULT]}
    variants = {
        "captioner-float": ({"init": float_init, "step": float_step}, "float32"),
        "captioner-int8": ({"init": _convert(init_fn, **dynamic), "step": _convert(step_fn, **dynamic)},
                           "int8 weights (dynamic range), float32 activations"),
        "captioner-4bit": ({"init": quantize_4bit(float_init), "step": quantize_4bit(float_step)},
                           "4-bit channel-wise weights (ai-edge-quantizer dynamic_wi4_afp32), float32 "
                           "activations"),
    }
    meta = {
        "vocab": vocab.words,
        "word_log_frequency": vocab.log_frequencies(
            [normalize(c) for n in dataset.splits["train"] for c in dataset.captions[n]]),
        "special": {"pad": vocab.index[PAD], "start": vocab.index[START], "end": vocab.index[END],
                    "unk": vocab.index[UNK]},
        "max_len": train_meta["train"]["max_len"],
        "decoding": {"beam_width": 3, "length_penalty": length_penalty, "rarity": 0.0},
        "architecture": {"encoder": "MobileNetV2 (ImageNet, frozen) 7x7x1280", **train_meta["decoder"]},
        "training": train_meta["train"],
    }
    written = []
    for name in sets:
        decoder_files, quant = variants[name]
        written.append(write_set(out, name, {"encoder": encoder_bytes, **decoder_files},
                                 {"encoder": "full-integer int8 (uint8 input, float32 output), calibrated "
                                  f"on {len(picks)} training images", "init": quant, "step": quant}, meta))
    write_priors(written, training_sample(dataset))
    return written
