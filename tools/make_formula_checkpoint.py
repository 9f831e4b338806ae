#!/usr/bin/env python3
"""Write a full-size img2pose ResNet-18 checkpoint holding the deterministic "formula" test
weights, saved by real torch, for the converter tests (tmp/formula_ckpt/ by default in CI).

The library never needs this: only the tests that read real torch files do. Needs torch and
numpy (Debian: apt-get install python3-torch python3-numpy).

    tools/make_formula_checkpoint.py OUT.pth [--prefix module.] [--legacy] [--with-optimizer]

Beside OUT.pth it also writes pose_mean.npy and pose_stddev.npy (float64, shape (6,)), as the
official release ships them. The formula (and its calibration, gains.json) is the one the JS
side rebuilds in src/formula_weights.ts; the key list is __tests__/fixtures/weights/.
"""
import argparse
import collections
import json
import os

import numpy as np
import torch

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '__tests__', 'fixtures', 'weights')
U32 = np.uint64(0xFFFFFFFF)


def fnv1a32(text):
    """32-bit FNV-1a of the UTF-8 name: each tensor's stream starts from its own seed."""
    h = 0x811C9DC5
    for byte in text.encode('utf-8'):
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def uniform01(name, count):
    """`count` values in [0, 1): a golden-ratio counter from the name's hash, mixed by murmur3's finaliser."""
    x = (np.uint64(fnv1a32(name)) + np.arange(count, dtype=np.uint64) * np.uint64(0x9E3779B9)) & U32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x85EBCA6B)) & U32
    x ^= x >> np.uint64(13)
    x = (x * np.uint64(0xC2B2AE35)) & U32
    x ^= x >> np.uint64(16)
    return x.astype(np.float64) / 2.0**32


def value_range(name, shape):
    """The interval a tensor's values are drawn from, by the role its name gives it."""
    if name.endswith('.weight') and len(shape) >= 2:
        fan_in = int(np.prod(shape)) // shape[0]
        bound = np.sqrt(6.0 / fan_in)
        return -bound, bound
    if name.endswith('.bias') or name.endswith('running_mean'):
        return -0.1, 0.1
    if name.endswith('.weight'):  # batch-norm scales
        return 0.9, 1.1
    if name.endswith('running_var'):
        return 0.5, 1.5
    raise ValueError(f'no formula for {name}')


def formula_tensor(name, shape, calibration):
    if name.endswith('num_batches_tracked'):
        return np.zeros(shape, dtype=np.int64)
    if name == 'roi_heads.class_predictor.cls_score.bias':
        bias = calibration['CLS_BIAS']
        return np.array([bias, -bias], dtype=np.float32)
    lo, hi = value_range(name, shape)
    count = int(np.prod(shape)) if shape else 1
    gain = calibration['gains'].get(name, 1.0)
    return ((lo + (hi - lo) * uniform01(name, count)) * gain).astype(np.float32).reshape(shape)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('out', help='the .pth file to write')
    parser.add_argument('--prefix', default='module.', help="key prefix (upstream's DataParallel saves 'module.')")
    parser.add_argument('--legacy', action='store_true', help="torch's legacy (pre-1.6, non-zip) format")
    parser.add_argument('--with-optimizer', action='store_true', help="add an 'optimizer' entry, as training checkpoints have")
    args = parser.parse_args()

    with open(os.path.join(FIXTURES, 'gains.json')) as f:
        calibration = json.load(f)
    with open(os.path.join(FIXTURES, 'keys_resnet18.json')) as f:
        keys = json.load(f)

    state = collections.OrderedDict(
        (args.prefix + k['name'], torch.from_numpy(formula_tensor(k['name'], tuple(k['shape']), calibration))) for k in keys
    )
    checkpoint = {'fpn_model': state}
    if args.with_optimizer:
        group = {'lr': 0.001, 'momentum': 0.9, 'params': list(range(len(state)))}
        checkpoint['optimizer'] = {'state': {}, 'param_groups': [group]}
    torch.save(checkpoint, args.out, _use_new_zipfile_serialization=not args.legacy)

    folder = os.path.dirname(os.path.abspath(args.out))
    np.save(os.path.join(folder, 'pose_mean.npy'), np.array(calibration['POSE_MEAN'], dtype=np.float64))
    np.save(os.path.join(folder, 'pose_stddev.npy'), np.array(calibration['POSE_STDDEV'], dtype=np.float64))
    print(f'wrote {args.out}: {len(state)} tensors, {sum(v.numel() for v in state.values())} values')


if __name__ == '__main__':
    main()
