"""Train the image -> text projection: pooled MobileNetV2 features into MiniLM's sentence space.

The device already computes the encoder's 7x7x1280 feature map for every capture; its mean over the
49 positions is a 1280-d image vector. A linear map W (1280 -> 384) + b, trained contrastively
(symmetric InfoNCE) against the frozen MiniLM embeddings of the reference captions, puts that vector
where the captions of the image would land. A typed query's embedding can then be compared with the
stored image vectors directly: text -> image search without any caption in between.

Hubness correction (CSLS): some images come close to every query. An image's mean cosine to its k
nearest reference captions (training captions, shipped with the projection) measures that; the store
keeps it per capture (4 bytes) and text -> image ranking uses ``v . q - a * hub(v)``. Measured on dev
(float features): +1.8 R@1. (Subtracting the mean similarity to all references, which would be a
mere query shift, did nothing.)

Output: ``models/image-projection/{projection.npz, manifest.json}`` (kind ``image-projection``),
read by ``device/image_projection.py``. Run: ``python -m converters projection`` (a few minutes).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from device.image_projection import hubness  # the device's, so dev numbers are what a device computes

log = logging.getLogger(__name__)

OUT_NAME = "image-projection"
WEIGHTS_FILE = "projection.npz"
REFERENCE_CAPTIONS = 1000  # training captions that measure an image's hubness (int8: 384 kB)


# --------------------------------------------------------------------------------------------- data


def pooled_features(work: Path, names: list[str]) -> np.ndarray:
    """float32 [len(names), 1280]: the mean over the 49 positions of the cached feature maps."""
    from converters.features import FeatureCache

    cache = FeatureCache(work)
    index = {n: i for i, n in enumerate(cache.names())}
    if cache.done() < len(index):
        raise RuntimeError(f"{cache.data_file}: feature cache incomplete; run `python -m converters features`")
    data = cache.open()
    out = np.empty((len(names), data.shape[2]), np.float32)
    for i, name in enumerate(names):
        out[i] = data[index[name]].astype(np.float32).mean(axis=0)
    return out


def device_features(image_paths: list[Path], captioner_dir: Path, cache_file: Path | None = None,
                    num_threads: int = 2) -> np.ndarray:
    """float32 [n, 1280]: pooled features from the device's (int8) encoder, the vectors the projection
    sees on the device. Cached together with the encoder's sha256, so a new export recomputes them."""
    from tqdm import tqdm

    from device.captioner import Captioner
    from device.modelset import ModelSet
    from device.preprocess import load_image

    ms = ModelSet.load(captioner_dir)
    encoder_sha = ms.manifest.get("sha256", {}).get(ms.path("encoder").name, "")
    if cache_file is not None and cache_file.exists():
        with np.load(cache_file) as z:
            if str(z["encoder_sha256"]) == encoder_sha and z["features"].shape[0] == len(image_paths):
                return z["features"].astype(np.float32)
    cap = Captioner(ms, num_threads=num_threads)
    out = np.empty((len(image_paths), 1280), np.float32)
    for i, path in enumerate(tqdm(image_paths, desc="device encoder", unit="img")):
        out[i] = cap.encode(load_image(path))[0].mean(axis=0)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with open(cache_file, "wb") as f:
            np.savez(f, features=out.astype(np.float16), encoder_sha256=np.array(encoder_sha))
    return out


def caption_embeddings(captions: list[str], embedder, cache_file: Path | None = None) -> np.ndarray:
    """float32 [n, 384] MiniLM embeddings through the device embedder, cached as float16 .npy."""
    if cache_file is not None and cache_file.exists():
        cached = np.load(cache_file)
        if cached.shape[0] == len(captions):
            return cached.astype(np.float32)
    from tqdm import tqdm

    out = np.empty((len(captions), embedder.dim), np.float32)
    for s in tqdm(range(0, len(captions), 256), desc="embed captions", unit="batch"):
        out[s : s + 256] = embedder.embed(captions[s : s + 256])
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache_file, out.astype(np.float16))
    return out


def split_data(data_root: Path, work: Path, models: Path, split: str,
               encoder: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pooled features [n, 1280], caption embeddings [n, 5, 384]) of one Flickr8k split.

    Features from the Keras float encoder's cache, or (``encoder`` = a captioner set name) from that
    set's TFLite encoder, i.e. exactly what the device computes."""
    from converters.data import load_dataset
    from device.embedder import load_embedder

    dataset = load_dataset(data_root)
    names = dataset.splits[split]
    captions = [c for n in names for c in dataset.captions[n][:5]]
    if len(captions) != 5 * len(names):
        raise RuntimeError(f"{split}: every image needs 5 captions")
    embedder = load_embedder(models, "minilm-int8", num_threads=2)
    if embedder is None:
        raise RuntimeError(f"{models}/minilm-int8 is missing: run `python -m converters embedder` first")
    texts = caption_embeddings(captions, embedder, work / "retrieval" / f"captions-{split}.npy")
    if encoder:
        feats = device_features([dataset.image_path(n) for n in names], models / encoder,
                                work / "retrieval" / f"features-{encoder}-{split}.npz")
    else:
        feats = pooled_features(work, names)
    return feats, texts.reshape(len(names), 5, -1)


# --------------------------------------------------------------------------------------------- model


def project(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Unit vectors [n, 384] from pooled features [n, 1280] (the same maths as the device)."""
    y = x @ params["weight"] + params["bias"]
    return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


def train(
    x: np.ndarray,
    t: np.ndarray,
    *,
    epochs: int = 60,
    batch: int = 256,
    lr: float = 2e-3,
    temperature: float = 0.03,
    weight_decay: float = 1e-4,
    noise: float = 1.5,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Symmetric InfoNCE between projected images and one random reference caption each per step.

    The input is standardised (mean/std of the training features) and that affine step is folded
    into W and b afterwards, so the device does one matrix product. ``noise`` (relative Gaussian
    noise on the standardised features) is the regulariser that matters: dev R@1 13 -> 18.7 going
    from 0.1 to 1.5; it also makes the map tolerant of the int8 encoder's quantisation error.
    """
    import tensorflow as tf

    tf.random.set_seed(seed)
    rng = np.random.default_rng(seed)
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-3
    xs = ((x - mu) / sd).astype(np.float32)
    d_in, d_out = x.shape[1], t.shape[2]
    w = tf.Variable(tf.random.normal((d_in, d_out), stddev=1.0 / np.sqrt(d_in), seed=seed))
    b = tf.Variable(tf.zeros(d_out))
    opt = tf.keras.optimizers.Adam(lr)
    inv_t = 1.0 / temperature

    @tf.function
    def step(xb, tb):
        with tf.GradientTape() as tape:
            if noise:
                xb = xb + tf.random.normal(tf.shape(xb), stddev=noise)
            y = tf.math.l2_normalize(xb @ w + b, axis=1)
            logits = (y @ tf.transpose(tb)) * inv_t
            labels = tf.range(tf.shape(y)[0])
            loss = 0.5 * (
                tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
                + tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tf.transpose(logits)))
            ) + weight_decay * tf.reduce_sum(w * w)
        grads = tape.gradient(loss, [w, b])
        opt.apply_gradients(zip(grads, [w, b]))
        return loss

    n = xs.shape[0]
    for epoch in range(epochs):
        order = rng.permutation(n)
        pick = rng.integers(0, t.shape[1], n)
        losses = []
        for s in range(0, n - batch + 1, batch):
            idx = order[s : s + batch]
            losses.append(float(step(tf.constant(xs[idx]), tf.constant(t[idx, pick[idx]]))))
        if epoch % 10 == 9 or epoch == epochs - 1:
            log.info("projection epoch %d: loss %.4f", epoch + 1, np.mean(losses))
    w_np, b_np = w.numpy(), b.numpy()
    # fold the standardisation: ((x - mu) / sd) @ W + b = x @ (W / sd[:, None]) + (b - (mu / sd) @ W)
    return {
        "weight": (w_np / sd[:, None]).astype(np.float32),
        "bias": (b_np - (mu / sd) @ w_np).astype(np.float32),
    }


def recall(images: np.ndarray, queries: np.ndarray, hub: np.ndarray | None = None,
           weight: float = 0.0) -> dict[str, float]:
    """Text -> image recall of 5 queries per image ([n,5,d]) against unit image vectors [n,d]."""
    n = images.shape[0]
    q = queries.reshape(n * 5, -1)
    sims = q @ images.T
    if hub is not None:
        sims = sims - weight * hub[None, :]
    target = np.repeat(np.arange(n), 5)
    rank = (sims > sims[np.arange(n * 5), target][:, None]).sum(axis=1) + 1
    return {"r1": 100 * float((rank <= 1).mean()), "r5": 100 * float((rank <= 5).mean()),
            "r10": 100 * float((rank <= 10).mean()), "median_rank": float(np.median(rank))}


def quantize(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """int8 weights with one float scale per output column; dev recall is unchanged (measured)."""
    w = params["weight"]
    scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0
    return {"weight": np.rint(w / scale).astype(np.int8), "weight_scale": scale.astype(np.float32),
            "bias": params["bias"].astype(np.float32)}


def dequantize(q: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"weight": q["weight"].astype(np.float32) * q["weight_scale"], "bias": q["bias"]}


def export(params: dict[str, np.ndarray], refs: np.ndarray, hub_weight: float, hub_k: int, out_dir: Path,
           metrics: dict, training: dict) -> Path:
    """Write projection.npz (int8 weights, int8 reference captions) + manifest.json (sha256)."""
    from device.modelset import write_manifest

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / WEIGHTS_FILE
    q = quantize(params)
    refs8 = np.clip(np.rint(refs * 127), -127, 127).astype(np.int8)
    with open(path, "wb") as f:  # 1280 x 384 + 1000 x 384 bytes: under 1 MB
        np.savez(f, refs=refs8, **q)
    manifest = {
        "name": OUT_NAME,
        "kind": "image-projection",
        "version": time.strftime("%Y%m%d"),
        "files": {"weights": WEIGHTS_FILE},  # write_manifest adds sha256 and sizes
        "quantization": "int8 weights (per-column scale), int8 reference captions (x127)",
        "preprocessing": "mean over the 49 positions of the captioner encoder's [1,49,1280] output",
        "tensors": {"input": [1280], "weight": list(params["weight"].shape), "bias": [params["weight"].shape[1]],
                    "refs": list(refs.shape)},
        "text_space": "minilm (all-MiniLM-L6-v2, L2-normalised, 384)",
        "hubness": {"weight": hub_weight, "k": hub_k, "reference_captions": int(refs.shape[0]),
                    "use": "rank images by v . q - weight * mean of v's k largest cosines to refs"},
        "training": training,
        "metrics": metrics,
    }
    write_manifest(out_dir, manifest)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m converters.projection", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data/flickr8k"))
    p.add_argument("--work", type=Path, default=Path("work"))
    p.add_argument("--models", type=Path, default=Path("models"))
    p.add_argument("--encoder", default="captioner-int8",
                   help="also train on (and evaluate with) this captioner set's TFLite encoder features, "
                        "as the device computes them; 'none' for the Keras float cache only")
    p.add_argument("--epochs", type=int, default=0, help="default: 60, or 30 with --encoder (twice the data)")
    p.add_argument("--temperature", type=float, default=0.03)
    p.add_argument("--noise", type=float, default=1.5)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--hub-weights", type=float, nargs="*", default=[0.0, 0.3, 0.5, 0.7],
                   help="hubness weights tried on dev; the best is shipped")
    p.add_argument("--hub-k", type=int, nargs="*", default=[5, 10])
    p.add_argument("--seeds", type=int, default=4,
                   help="train this many times and average the maps (dev R@1 20.0 one seed, 20.8 four)")
    p.add_argument("--no-export", action="store_true", help="only print the dev numbers")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    x_tr, t_tr = split_data(args.data, args.work, args.models, "train")
    x_dev, t_dev = split_data(args.data, args.work, args.models, "dev")
    refs_from = t_tr
    encoder = None if args.encoder == "none" else args.encoder
    if encoder:
        # Both encoders' features as training data: the int8 encoder's quantisation error becomes
        # one more augmentation (measured on dev through the int8 encoder: R@1 19.4 float-only,
        # 19.5 int8-only, 20.2 both). Dev is scored on the int8 features, as the device sees them.
        x_int8, _ = split_data(args.data, args.work, args.models, "train", encoder)
        x_tr, t_tr = np.concatenate([x_tr, x_int8]), np.concatenate([t_tr, t_tr])
        x_dev, _ = split_data(args.data, args.work, args.models, "dev", encoder)
    epochs = args.epochs or (30 if encoder else 60)
    t0 = time.perf_counter()
    # The average of linear maps is one linear map: an ensemble at no cost on the device.
    runs = [train(x_tr, t_tr, epochs=epochs, temperature=args.temperature, noise=args.noise,
                  weight_decay=args.weight_decay, seed=seed) for seed in range(max(1, args.seeds))]
    params = {k: np.mean([r[k] for r in runs], axis=0).astype(np.float32) for k in runs[0]}
    took = time.perf_counter() - t0
    # reference captions: a fixed sample of training captions (never dev/test), int8 as shipped
    flat = refs_from.reshape(-1, refs_from.shape[2])
    refs = flat[np.random.default_rng(0).permutation(flat.shape[0])[:REFERENCE_CAPTIONS]]
    refs = np.rint(refs * 127) / 127
    # dev numbers as the device computes them: int8 weights, int8-stored image vectors
    v_dev = np.rint(project(dequantize(quantize(params)), x_dev) * 127) / 127
    results = {}
    for k in args.hub_k:
        hub = hubness(v_dev, refs, k)
        for a in args.hub_weights:
            r = results[(a, k)] = recall(v_dev, t_dev, hub, a)
            print(f"dev hub weight {a:.2f} k {k}: R@1 {r['r1']:.1f}  R@5 {r['r5']:.1f}  R@10 {r['r10']:.1f}  "
                  f"median rank {r['median_rank']:.0f}")
    best = max(results, key=lambda key: (results[key]["r1"] + results[key]["r5"] + results[key]["r10"]))
    print(f"trained in {took:.0f} s; chosen hub weight {best[0]}, k {best[1]}")
    if not args.no_export:
        training = {"split": "train", "feature_rows": int(x_tr.shape[0]), "epochs": epochs,
                    "temperature": args.temperature, "noise": args.noise, "weight_decay": args.weight_decay,
                    "loss": "symmetric InfoNCE", "seeds_averaged": max(1, args.seeds),
                    "features": "Keras float MobileNetV2 (work/features.f16)"
                                + (f" + {encoder} TFLite encoder" if encoder else ""),
                    "seconds": round(took)}
        metrics = {f"dev_{encoder or 'float'}_features": {f"hub {a} k {k}": r for (a, k), r in results.items()}}
        out = export(params, refs, float(best[0]), int(best[1]), args.models / OUT_NAME, metrics, training)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
