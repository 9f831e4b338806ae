#!/usr/bin/python3
"""Runs the upstream PyTorch img2pose on CPU, for side-by-side checks and timings of the port.

The upstream package is imported from a path given on the command line (nothing of it lives in
this repository). The model is built the way the golden fixtures were: ResNet-18, the given
checkpoint, pose mean/stddev from the given .npy files (not upstream's custom-checkpoint
defaults) and the 68/5 reference points from upstream's data folder.

Needs torch 1.13 / torchvision 0.14 / scipy / PIL: Debian's /usr/bin/python3.

  upstream_cpu.py detect --upstream SRC --checkpoint PTH --pose-mean NPY --pose-stddev NPY
        [--min-size 640 --max-size 1400 --threshold 0 --batch-size 1 --threads N] --json OUT images...
      Writes [{image, faces}] like `img2pose detect --json` does; --batch-size K > 1 hands K
      images at a time to upstream's batched path (padded batches: docs/benchmarks.md).

  upstream_cpu.py bench ... --image IMG [--repeats 5 --warmup 1] --json OUT
      Times model.predict on the decoded image (median of --repeats after --warmup runs) and the
      stages via forward hooks: transform, backbone, rpn, roiAlign (both RoI poolers), heads
      (the two MLP heads and predictors), postprocess (the rest: score filter, pose transform,
      NMS, mapping boxes back to the original size).

  upstream_cpu.py serve ... --image IMG
      The same timing, one run per request line on stdin (JSON {"min_size", "max_size"}), one
      JSON answer line each: lets bench/stages.ts interleave upstream's runs with ours.

  upstream_cpu.py make-images --source PNG --out DIR
      Writes the validation images (sizes and content unlike the golden fixtures).
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)

    def model_args(q):
        q.add_argument("--upstream", required=True, help="folder holding the img2pose package (e.g. /tmp/upstream/src)")
        q.add_argument("--checkpoint", required=True)
        q.add_argument("--pose-mean", required=True)
        q.add_argument("--pose-stddev", required=True)
        q.add_argument("--min-size", type=int, default=640)
        q.add_argument("--max-size", type=int, default=1400)
        q.add_argument(
            "--threads",
            type=int,
            default=0,
            help="threads for torch's own kernels AND for OpenBLAS, which runs the Linear layers "
            "with its own pool, blind to torch.set_num_threads (0: leave both defaults)",
        )
        q.add_argument("--json", required=(q.prog.split()[-1] != "serve"))

    d = sub.add_parser("detect")
    model_args(d)
    d.add_argument("--threshold", type=float, default=0.0)
    d.add_argument("--batch-size", type=int, default=1)
    d.add_argument("images", nargs="+")

    b = sub.add_parser("bench")
    model_args(b)
    b.add_argument("--image", required=True)
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--warmup", type=int, default=1)

    v = sub.add_parser("serve")
    model_args(v)
    v.add_argument("--image", required=True)

    m = sub.add_parser("make-images")
    m.add_argument("--source", required=True)
    m.add_argument("--out", required=True)
    return p.parse_args(argv)


def build_detector(args):
    """An upstream `Img2Pose` around an `img2poseModel` built like the golden fixtures'."""
    if args.threads > 0:
        # Read once when the BLAS library loads, so before torch is imported.
        os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    sys.path.insert(0, args.upstream)
    import numpy as np
    import torch
    from img2pose import detector as det_mod
    from img2pose._model import img2poseModel
    from img2pose._weights import load_weights_from_path

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    data = Path(det_mod.__file__).parent / "data"
    points68 = np.load(data / "reference_3d_68_points_trans.npy")
    points5 = np.load(data / "reference_3d_5_points_trans.npy")
    pose_mean = np.load(args.pose_mean)
    pose_stddev = np.load(args.pose_stddev)
    model = img2poseModel(
        depth=18,
        min_size=args.min_size,
        max_size=args.max_size,
        device=torch.device("cpu"),
        pose_mean=pose_mean,
        pose_stddev=pose_stddev,
        threed_68_points=points68,
        threed_5_points=points5,
    )
    model.load_state_dict(load_weights_from_path(args.checkpoint, device="cpu")["fpn_model"])
    model.evaluate()

    # Img2Pose.__init__ would replace the pose stats of a custom checkpoint with defaults; set
    # up the same object around our model instead, so detect_faces runs upstream's own code.
    detector = det_mod.Img2Pose.__new__(det_mod.Img2Pose)
    detector.score_threshold = 0.5
    detector.max_faces = -1
    detector.device = torch.device("cpu")
    detector._threed_68_points = points68
    detector._threed_5_points = points5
    detector._pose_mean = pose_mean
    detector._pose_stddev = pose_stddev
    detector._model = model
    return detector, det_mod, torch


def detect(args):
    detector, _, _ = build_detector(args)
    results = []
    for start in range(0, len(args.images), args.batch_size):
        chunk = args.images[start : start + args.batch_size]
        if len(chunk) == 1:
            per_image = [detector.detect_faces(chunk[0], score_threshold=args.threshold, max_faces=-1)]
        else:
            per_image = detector.detect_faces(list(chunk), score_threshold=args.threshold, max_faces=-1)
        for image, faces in zip(chunk, per_image):
            results.append({"image": image, "faces": faces})
    with open(args.json, "w") as f:
        json.dump(results, f)
    print(f"upstream: wrote {len(results)} results to {args.json}", file=sys.stderr)


def blas_threads():
    """OpenBLAS's thread count (Debian's torch does its GEMMs there), or None if not OpenBLAS."""
    import ctypes

    for name in ("libopenblas.so.0", "libblas.so.3"):
        try:
            return int(ctypes.CDLL(name).openblas_get_num_threads())
        except (OSError, AttributeError):
            continue
    return None


STAGES = ["transform", "backbone", "rpn", "roiAlign", "heads", "postprocess"]


class StageClock:
    """Forward hooks that add each stage's wall time of one predict call."""

    def __init__(self, fpn):
        self.ms = dict.fromkeys(STAGES, 0.0)
        self.t0 = None
        self.start = None
        self.handles = []
        heads = fpn.roi_heads
        timed = [
            (fpn.transform, "transform"),
            (fpn.backbone, "backbone"),
            (fpn.rpn, "rpn"),
            (heads.box_roi_pool, "roiAlign"),
            (heads.class_roi_pool, "roiAlign"),
            (heads.box_head, "heads"),
            (heads.box_predictor, "heads"),
            (heads.class_head, "heads"),
            (heads.class_predictor, "heads"),
        ]
        for module, stage in timed:
            self.handles.append(module.register_forward_pre_hook(self._pre))
            self.handles.append(module.register_forward_hook(self._post(stage)))

    def _pre(self, module, inputs):
        self.t0 = time.perf_counter()

    def _post(self, stage):
        def hook(module, inputs, output):
            self.ms[stage] += (time.perf_counter() - self.t0) * 1e3

        return hook

    def reset(self):
        self.ms = dict.fromkeys(STAGES, 0.0)

    def finish(self, total_ms):
        """Whatever the hooks did not see (DOFRoIHeads.postprocess_detections: score filter, pose
        transform, NMS; the detector's keypoints; Python glue) is booked as postprocess."""
        hooked = sum(self.ms.values())
        self.ms["postprocess"] += max(0.0, total_ms - hooked)
        return dict(self.ms)


class Timer:
    """One image through upstream (decoded tensor -> faces above 0.5), timed whole and by stage."""

    def __init__(self, args, image):
        self.detector, det_mod, self.torch = build_detector(args)
        pil = det_mod._load_image(image)
        self.width, self.height = pil.size
        self.tensor = det_mod._image_to_tensor(pil, self.torch.device("cpu"))
        self.fpn = self.detector._model.fpn_model.module
        self.clock = StageClock(self.fpn)
        # GeneralizedRCNNTransform.postprocess is a method, not a module call: time it apart.
        orig_post = self.fpn.transform.postprocess

        def timed_post(*a, **k):
            t = time.perf_counter()
            out = orig_post(*a, **k)
            self.clock.ms["postprocess"] += (time.perf_counter() - t) * 1e3
            return out

        self.fpn.transform.postprocess = timed_post

    def set_sizes(self, min_size, max_size):
        # What GeneralizedRCNNTransform's constructor stores; eval mode reads min_size[-1].
        self.fpn.transform.min_size = (min_size,)
        self.fpn.transform.max_size = max_size

    def once(self):
        """-> (total ms, stage ms, number of faces above 0.5)"""
        self.clock.reset()
        t = time.perf_counter()
        pred = self.detector._model.predict([self.tensor])
        faces = self.detector._process_prediction(pred[0], self.width, self.height, 0.5, -1)
        ms = (time.perf_counter() - t) * 1e3
        return ms, self.clock.finish(ms), len(faces)

    def info(self):
        return {"torch": self.torch.__version__, "threads": self.torch.get_num_threads(), "blas_threads": blas_threads()}


def bench(args):
    timer = Timer(args, args.image)
    timer.set_sizes(args.min_size, args.max_size)
    for _ in range(args.warmup):
        timer.once()
    runs = [timer.once() for _ in range(args.repeats)]
    out = {
        "image": args.image,
        "min_size": args.min_size,
        "max_size": args.max_size,
        **timer.info(),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "total_ms": [r[0] for r in runs],
        "median_ms": statistics.median(r[0] for r in runs),
        "stages_median_ms": {s: statistics.median(r[1][s] for r in runs) for s in STAGES},
        "faces_t0.5": runs[-1][2],
    }
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: out[k] for k in ("median_ms", "threads", "blas_threads", "stages_median_ms")}), file=sys.stderr)


def serve(args):
    """Line protocol for interleaved timing (bench/stages.ts): after one line {"ready": info},
    each request line {"min_size", "max_size"} runs the image once and answers one line
    {"total_ms", "stages_ms", "faces"}. Ends at end of input."""
    timer = Timer(args, args.image)
    print(json.dumps({"ready": timer.info()}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        timer.set_sizes(int(req["min_size"]), int(req["max_size"]))
        ms, stages, faces = timer.once()
        print(json.dumps({"total_ms": ms, "stages_ms": stages, "faces": faces}), flush=True)


def make_images(args):
    """Validation images unlike the fixtures: odd sizes, extreme aspect ratios, flips, a
    rotation, a tiny upscaled photo and pure noise. PNG, so both sides decode identical pixels."""
    import numpy as np
    from PIL import Image

    src = Image.open(args.source).convert("RGB")  # 1280x718
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    made = {
        # A crop around the middle faces, rescaled to an odd portrait size.
        "crop_333x517.png": src.crop((380, 60, 760, 650)).resize((333, 517), Image.BILINEAR),
        # Mirrored and squashed to 4:1.
        "flip_wide_1000x250.png": src.transpose(Image.FLIP_LEFT_RIGHT).resize((1000, 250), Image.BILINEAR),
        # A thin vertical strip, stretched: 97 wide, 1203 tall.
        "strip_97x1203.png": src.crop((600, 0, 700, 718)).resize((97, 1203), Image.BILINEAR),
        # Rotated 17 degrees with the corners filled grey, then an odd landscape size.
        "rot17_801x603.png": src.rotate(17, resample=Image.BILINEAR, expand=True, fillcolor=(128, 128, 128)).resize(
            (801, 603), Image.BILINEAR
        ),
        # A thumbnail, upscaled ~3x by the transform at min size 640.
        "small_211x149.png": src.resize((211, 149), Image.BILINEAR),
        # Uniform noise, fixed seed.
        "noise_450x450.png": Image.fromarray(np.random.default_rng(9).integers(0, 256, (450, 450, 3), dtype=np.uint8)),
    }
    for name, im in made.items():
        im.save(out / name)
        print(f"{out / name} {im.size[0]}x{im.size[1]}")


def main(argv):
    args = parse_args(argv)
    if args.mode == "detect":
        detect(args)
    elif args.mode == "bench":
        bench(args)
    elif args.mode == "serve":
        serve(args)
    else:
        make_images(args)


if __name__ == "__main__":
    main(sys.argv[1:])
