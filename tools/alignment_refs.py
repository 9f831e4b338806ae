#!/usr/bin/env python3
"""Extra references for the alignment tests, beyond the shared upstream fixtures.

Writes __tests__/fixtures/alignment/extra/ (committed; the tests never run Python):

  warp.*       cv2.warpAffine (bilinear, constant border 0) of a small noise image under random
               float32 transforms: rotations, reflections, tiny and huge scales, shears, singular
               matrices, faces far outside, coordinates beyond int range.
  faces.*      upstream's own `align_faces_from_image` (src/img2pose/_alignment.py of an img2pose
               checkout, imported from --upstream, not copied) on random poses in a test photo.
  euler.json   scipy `Rotation.from_rotvec(r).as_euler('xyz', degrees=True)` on edge cases:
               half turns about every axis and diagonal, gimbal lock and its neighbourhood.

Needs Debian's python3-opencv (4.6), python3-numpy and python3-scipy (1.10):
    /usr/bin/python3 tools/alignment_refs.py --upstream <img2pose checkout>/src/img2pose
"""
import argparse
import importlib.util
import json
import os
import sys

import cv2
import numpy as np
import scipy
from scipy.spatial.transform import Rotation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "__tests__", "fixtures")
OUT = os.path.join(FIXTURES, "alignment", "extra")


def load_upstream_alignment(src_dir):
    spec = importlib.util.spec_from_file_location("upstream_alignment", os.path.join(src_dir, "_alignment.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_transforms(rng):
    """(2, 3) float32 source -> destination transforms of several kinds, with a label each."""
    out = []

    def similarity(scale, angle, tx, ty, flip=False):
        c, s = np.cos(angle) * scale, np.sin(angle) * scale
        m = np.array([[c, -s, tx], [s, c, ty]], dtype=np.float64)
        if flip:
            m[:, 0] *= -1
        return m

    for _ in range(24):
        out.append(("similarity", similarity(rng.uniform(0.3, 3), rng.uniform(-np.pi, np.pi), rng.uniform(-80, 80), rng.uniform(-80, 80))))
    for _ in range(6):
        out.append(("reflection", similarity(rng.uniform(0.5, 2), rng.uniform(-np.pi, np.pi), rng.uniform(-40, 80), rng.uniform(-40, 80), True)))
    for _ in range(6):
        out.append(("affine", rng.uniform(-2, 2, size=(2, 3)) * [1, 1, 40]))
    for _ in range(4):
        out.append(("tiny scale", similarity(rng.uniform(0.01, 0.08), rng.uniform(-3, 3), rng.uniform(0, 40), rng.uniform(0, 40))))
    for _ in range(4):
        out.append(("huge scale", similarity(rng.uniform(20, 300), rng.uniform(-3, 3), rng.uniform(-3000, 0), rng.uniform(-3000, 0))))
    out.append(("identity", np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float64)))
    out.append(("half-pixel shift", np.array([[1, 0, 0.5], [0, 1, -0.5]], dtype=np.float64)))
    out.append(("1/64 pixel shift", np.array([[1, 0, 1 / 64], [0, 1, 3 / 64]], dtype=np.float64)))
    out.append(("singular", np.array([[1, 2, 3], [2, 4, 5]], dtype=np.float64)))
    out.append(("zero", np.zeros((2, 3), dtype=np.float64)))
    out.append(("far outside", similarity(1, 0.3, 5000, -7000)))
    out.append(("beyond int range", similarity(1e-6, 0.1, 3, 4)))
    out.append(("beyond short range", similarity(0.001, 0.2, 10, 20)))
    return [(label, m.astype(np.float32)) for label, m in out]


def make_warp(rng):
    src = rng.integers(0, 256, size=(53, 71, 3), dtype=np.uint8)
    size = 48
    cases = random_transforms(rng)
    transforms = np.stack([m for _, m in cases])
    crops = np.stack([cv2.warpAffine(src, m, (size, size), borderValue=0) for m in transforms])
    np.save(os.path.join(OUT, "warp.source.npy"), src)
    np.save(os.path.join(OUT, "warp.transforms.npy"), transforms)
    np.save(os.path.join(OUT, "warp.crops.npy"), crops)
    return {"size": size, "labels": [label for label, _ in cases]}


def random_poses(rng, n, width, height):
    """Plausible heads: mostly in view, some across the border, turned up to about 80 degrees."""
    focal = width + height
    poses = []
    for i in range(n):
        rot = rng.normal(0, 0.35, size=3)
        rot[1] = rng.uniform(-1.4, 1.4)
        tz = rng.uniform(4, 40)
        # Pixel centre of the head, then back to a translation at that depth.
        u = rng.uniform(-0.1, 1.1) * width
        v = rng.uniform(-0.1, 1.1) * height
        tx = (u - width / 2) * tz / focal
        ty = (v - height / 2) * tz / focal
        poses.append([*rot, tx, ty, tz])
    return np.array(poses, dtype=np.float32)


def make_faces(rng, upstream):
    threed = np.load(os.path.join(FIXTURES, "alignment", "reference_3d_5_points_trans.npy"))
    image = cv2.cvtColor(cv2.imread(os.path.join(FIXTURES, "golden", "portrait_1.png")), cv2.COLOR_BGR2RGB)
    height, width = image.shape[:2]
    out = {"image": "portrait_1.png", "cases": []}
    for size, n in ((112, 24), (224, 6)):
        poses = random_poses(rng, n, width, height)
        landmarks = upstream.project_5_landmarks(threed, poses, width, height)
        fits = [upstream.estimate_alignment_transform(l, size) for l in landmarks]
        crops = np.stack(upstream.align_faces_from_image(image, poses, threed, size))
        name = f"faces_{size}"
        np.save(os.path.join(OUT, f"{name}.poses.npy"), poses)
        np.save(os.path.join(OUT, f"{name}.landmarks.npy"), landmarks)
        np.save(os.path.join(OUT, f"{name}.transforms.npy"), np.stack([t for t, _ in fits]))
        np.save(os.path.join(OUT, f"{name}.templates.npy"), np.array([i for _, i in fits], dtype=np.int32))
        np.save(os.path.join(OUT, f"{name}.crops.npy"), crops)
        out["cases"].append({"id": name, "size": size, "n": n})
    return out


def make_euler(rng):
    pi = np.pi
    h = pi / 2
    rotvecs = []
    for axis in np.eye(3):
        for angle in (pi, -pi, h, -h, 2 * pi, 3 * pi, 1e-12, -1e-12):
            rotvecs.append(axis * angle)
    for d in ([1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1], [1, -1, 0], [-1, 0, 1], [1, -1, -1]):
        v = np.array(d, dtype=np.float64)
        rotvecs.append(v / np.linalg.norm(v) * pi)
        rotvecs.append(-v / np.linalg.norm(v) * pi)
    # Gimbal lock: yaw at +-90 degrees with pitch and roll, exactly and nearby.
    for yaw in (h, -h):
        for eps in (0, 1e-9, 5e-8, 2e-7, 1e-6, -1e-9, -5e-8, -2e-7):
            for pitch, roll in ((0, 0), (0.3, 0), (0, 0.4), (0.7, -0.2), (-2.5, 1.1)):
                rotvecs.append(Rotation.from_euler("xyz", [pitch, yaw + eps, roll]).as_rotvec())
    rotvecs.append(np.array([-0.0, 0.0, -0.0]))
    rotvecs.append(np.array([0.0, -0.0, pi]))
    for _ in range(40):
        rotvecs.append(rng.normal(0, 1.5, size=3))
    rotvecs = np.array(rotvecs)
    # float32 poses are what the detector returns; keep both kinds.
    rotvecs = np.concatenate([rotvecs, rotvecs[-20:].astype(np.float32).astype(np.float64)])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        euler = np.array([Rotation.from_rotvec(r).as_euler("xyz", degrees=True) for r in rotvecs])
    # JSON keeps float64 exactly, -0.0 included (repr round-trips; JSON.parse reads "-0.0" as -0).
    return {
        "source": f"scipy {scipy.__version__} Rotation.from_rotvec(rv).as_euler('xyz', degrees=True)",
        "rotvec": rotvecs.tolist(),
        "euler_xyz_deg": euler.tolist(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="folder holding upstream's _alignment.py (src/img2pose)")
    args = parser.parse_args()
    if cv2.__version__ != "4.6.0" or not scipy.__version__.startswith("1.10."):
        sys.exit(f"needs OpenCV 4.6.0 and scipy 1.10 (Debian 12), found {cv2.__version__} and {scipy.__version__}")
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20261204)
    manifest = {
        "source": f"tools/alignment_refs.py: OpenCV {cv2.__version__}, scipy {scipy.__version__}, numpy {np.__version__}",
        "warp": make_warp(rng),
        "faces": make_faces(rng, load_upstream_alignment(args.upstream)),
    }
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    with open(os.path.join(OUT, "euler.json"), "w") as f:
        json.dump(make_euler(rng), f)


if __name__ == "__main__":
    main()
