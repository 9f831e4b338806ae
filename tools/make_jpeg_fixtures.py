#!/usr/bin/env python3
"""Write the JPEG fixtures of __tests__/jpeg_turbo.test.ts: small JPEGs encoded by PIL in the
variants photos come in, each beside the RGB pixels PIL decodes from it (upstream's
`Image.open(path).convert('RGB')`), as raw bytes (height x width x 3).

The library never needs this: the fixtures are committed. Needs Pillow and numpy (Debian:
apt-get install python3-pil python3-numpy).

    tools/make_jpeg_fixtures.py SOURCE_IMAGE OUT_DIR
"""
import argparse
import json
import os

import numpy as np
from PIL import Image

# name -> (size, mode, save options). Odd sizes exercise the edges of the chroma upsampling.
VARIANTS = {
    'baseline_420': ((61, 47), 'RGB', {'quality': 85, 'subsampling': 2}),
    'baseline_422': ((64, 33), 'RGB', {'quality': 90, 'subsampling': 1}),
    'baseline_444': ((45, 50), 'RGB', {'quality': 95, 'subsampling': 0}),
    'progressive_420': ((77, 41), 'RGB', {'quality': 80, 'subsampling': 2, 'progressive': True}),
    'optimized_420': ((50, 50), 'RGB', {'quality': 70, 'subsampling': 2, 'optimize': True}),
    'gray': ((59, 43), 'L', {'quality': 88}),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('source')
    parser.add_argument('out')
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    source = Image.open(args.source).convert('RGB')
    index = {}
    for name, (size, mode, options) in VARIANTS.items():
        path = os.path.join(args.out, f'{name}.jpg')
        source.resize(size, Image.BILINEAR).convert(mode).save(path, 'JPEG', **options)
        pixels = np.asarray(Image.open(path).convert('RGB'), dtype=np.uint8)
        pixels.tofile(os.path.join(args.out, f'{name}.rgb'))
        index[name] = {'width': pixels.shape[1], 'height': pixels.shape[0]}
    # CMYK: libjpeg-turbo's TurboJPEG calls decline it (the jimp codec decodes it instead).
    source.resize((40, 30), Image.BILINEAR).convert('CMYK').save(os.path.join(args.out, 'cmyk.jpg'), 'JPEG', quality=90)
    with open(os.path.join(args.out, 'index.json'), 'w') as f:
        json.dump({'pil': Image.__version__, 'images': index}, f, indent=1)
        f.write('\n')


if __name__ == '__main__':
    main()
