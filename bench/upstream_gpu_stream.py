# Upstream PyTorch img2pose on the stream of bench/gpu_stream.ts: single images of random sizes
# (the same LCG, sides 100..2000), the upstream photo resampled to each size (nearest), one
# predict each. Prints ms per image and the CUDA caching allocator's reserved memory; --json FILE
# also writes each image's size and time.
# Needs upstream's src/img2pose as .gpu/upstream_img2pose and its photo as .gpu/teaser.jpeg
# (npm run gpu:bundle puts them there); run from the repo root on the device.
import sys, time, json, numpy as np, torch
sys.path.insert(0, '.gpu')
from upstream_img2pose._model import img2poseModel
from PIL import Image

def stream_sizes(n, seed=1):
    x = seed & 0xFFFFFFFF
    out = []
    for _ in range(2 * n):
        x = (1664525 * x + 1013904223) & 0xFFFFFFFF
        out.append(100 + x % 1901)
    return [(out[2 * i], out[2 * i + 1]) for i in range(n)]

def resample(src, h, w):
    sh, sw = src.shape[:2]
    ys = np.minimum(sh - 1, ((np.arange(h) + 0.5) * sh / h).astype(np.int64))
    xs = np.minimum(sw - 1, ((np.arange(w) + 0.5) * sw / w).astype(np.int64))
    return src[ys][:, xs]

n = int(sys.argv[sys.argv.index('--images') + 1]) if '--images' in sys.argv else 120
dev = 'cuda:0'
pts68 = np.load('.gpu/upstream_img2pose/data/reference_3d_68_points_trans.npy')
pts5 = np.load('.gpu/upstream_img2pose/data/reference_3d_5_points_trans.npy')
mean = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 5.0]); std = np.array([0.2, 0.2, 0.2, 0.1, 0.1, 1.0])
torch.manual_seed(0)
m = img2poseModel(depth=18, min_size=640, max_size=1400, device=dev, pose_mean=mean, pose_stddev=std, threed_68_points=pts68, threed_5_points=pts5)
m.evaluate()
with torch.no_grad():  # its fastest case: few candidates pass the 0.05 score filter
    m.fpn_model.module.roi_heads.class_predictor.cls_score.bias[:] = torch.tensor([6.0, -6.0])
photo = np.array(Image.open('.gpu/teaser.jpeg').convert('RGB'))
def T(a): return (torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1) / 255.).to(dev)
for _ in range(3): m.predict([T(photo)])
torch.cuda.synchronize()
times, curve, host = [], [], []
for i, (h, w) in enumerate(stream_sizes(n)):
    img = resample(photo, h, w)
    t0 = time.time()
    x = T(img)
    torch.cuda.synchronize()
    host.append((time.time() - t0) * 1000)
    m.predict([x])
    torch.cuda.synchronize()
    times.append((time.time() - t0) * 1000)
    if (i + 1) % 20 == 0: curve.append(f'{i + 1}:{torch.cuda.memory_reserved() / 2**30:.2f}')
q = (len(times) + 3) // 4
summary = {'images': n, 'meanMs': round(float(np.mean(times)), 2), 'medianMs': round(float(np.median(times)), 2),
      'quarterMeansMs': '/'.join(f'{np.mean(times[k*q:(k+1)*q]):.1f}' for k in range(4)), 'reservedGiB': ' '.join(curve), 'toTensorMs': round(float(np.mean(host)), 2)}
print('upstream stream', json.dumps(summary))
if '--json' in sys.argv:  # per image: size and ms, to set beside the port's stream report
    with open(sys.argv[sys.argv.index('--json') + 1], 'w') as f:
        json.dump({**summary, 'perImage': [{'size': list(s), 'ms': round(t, 2)} for s, t in zip(stream_sizes(n), times)]}, f)
