// Kernel audit for the `tensorflow` backend (tfjs-node / tfjs-node-gpu), which cannot be installed
// here: every kernel the model dispatches on the path that backend takes must be one tfjs-node
// registers, or the first forward there fails with "Kernel 'X' not registered".
import * as tf from '@tensorflow/tfjs';
import * as path from 'path';
import { formulaWeights } from '../src/io/formula_weights';
import { Bitmap, decodeBitmap, decodeImage } from '../src/io/images';
import { Img2PoseModel } from '../src/model/model';
import { activeRuntime } from '../src/runtime/runtime';
import { prepareBatch } from '../src/model/transform';
import { disposeWeights } from '../src/model/weights';

/**
 * The kernels tfjs-node 4.22.0 registers for backend 'tensorflow': the `kernelName` of every config
 * in the `kernelConfigs` array of tensorflow/tfjs tfjs-node/src/register_all_kernels.ts at tag
 * tfjs-v4.22.0 (commit e5d5e9371ed1fd0a4df6d7cd0b947d2a820cefd7), each resolved through
 * tfjs-core/src/kernel_names.ts at the same tag. tfjs-node-gpu builds from the same sources.
 */
const TFJS_NODE_4_22_KERNELS: ReadonlySet<string> = new Set([
  'Abs', 'Acos', 'Acosh', 'Add', 'AddN', 'All', 'Any', 'ArgMax', 'ArgMin', 'Asin', 'Asinh', 'Atan', 'Atan2',
  'Atanh', 'AvgPool', 'AvgPool3D', 'AvgPool3DGrad', 'AvgPoolGrad', 'BatchMatMul', 'BatchToSpaceND',
  'Bincount', 'BroadcastArgs', 'Cast', 'Ceil', 'ClipByValue', 'Complex', 'ComplexAbs', 'Concat', 'Conv2D',
  'Conv2DBackpropFilter', 'Conv2DBackpropInput', 'Conv3D', 'Conv3DBackpropFilterV2', 'Conv3DBackpropInputV2',
  'Cos', 'Cosh', 'CropAndResize', 'Cumprod', 'Cumsum', 'DepthToSpace', 'DepthwiseConv2dNative',
  'DepthwiseConv2dNativeBackpropFilter', 'DepthwiseConv2dNativeBackpropInput', 'Diag', 'Dilation2D',
  'Dilation2DBackpropFilter', 'Dilation2DBackpropInput', 'Einsum', 'Elu', 'EluGrad', 'Equal', 'Erf', 'Exp',
  'ExpandDims', 'Expm1', 'FFT', 'Fill', 'FlipLeftRight', 'Floor', 'FloorDiv', 'FusedBatchNorm', 'FusedConv2D',
  'FusedDepthwiseConv2D', 'GatherNd', 'GatherV2', 'Greater', 'GreaterEqual', 'IFFT', 'Identity', 'Imag',
  'IsFinite', 'IsInf', 'IsNan', 'LRN', 'LRNGrad', 'LeakyRelu', 'Less', 'LessEqual', 'LinSpace', 'Log',
  'Log1p', 'LogicalAnd', 'LogicalNot', 'LogicalOr', 'Max', 'MaxPool', 'MaxPool3D', 'MaxPool3DGrad',
  'MaxPoolGrad', 'Maximum', 'Mean', 'Min', 'Minimum', 'MirrorPad', 'Mod', 'Multinomial', 'Multiply', 'Neg',
  'NonMaxSuppressionV3', 'NonMaxSuppressionV4', 'NonMaxSuppressionV5', 'NotEqual', 'OneHot', 'OnesLike',
  'Pack', 'PadV2', 'Pow', 'Prelu', 'Prod', 'Range', 'Real', 'RealDiv', 'Reciprocal', 'Relu', 'Relu6',
  'Reshape', 'ResizeBilinear', 'ResizeBilinearGrad', 'ResizeNearestNeighbor', 'ResizeNearestNeighborGrad',
  'Reverse', 'Round', 'Rsqrt', 'ScatterNd', 'Select', 'Selu', 'Sigmoid', 'Sign', 'Sin', 'Sinh', 'Slice',
  'Softmax', 'Softplus', 'SpaceToBatchND', 'SparseToDense', 'SplitV', 'Sqrt', 'Square', 'SquaredDifference',
  'StaticRegexReplace', 'Step', 'StridedSlice', 'Sub', 'Sum', 'Tan', 'Tanh', 'TensorScatterUpdate', 'Tile',
  'TopK', 'Transpose', 'Unique', 'Unpack', 'UnsortedSegmentSum', 'ZerosLike', '_FusedMatMul',
]);

const TEASER = path.join(__dirname, 'fixtures', 'golden', 'teaser.png');
const CONFIG = { minSize: 160, maxSize: 288 };

/**
 * Registers a backend named 'tensorflow' that runs wasm's kernels, so that every `tf.getBackend()`
 * branch in src/ takes the path tfjs-node would (RoIAlign 'ops', tf.matMul heads, unchunked fc6)
 * while the arithmetic stays on wasm. Returns the undo.
 */
async function useTensorflowStandIn(): Promise<() => Promise<void>> {
  const previous = tf.getBackend();
  const factory = tf.findBackendFactory('wasm');
  if (!factory) throw new Error('wasm backend not registered');
  const kernels = tf.getKernelsForBackend('wasm');
  for (const k of kernels) tf.registerKernel({ ...k, backendName: 'tensorflow' });
  tf.registerBackend('tensorflow', factory, -1);
  if (!(await tf.setBackend('tensorflow'))) throw new Error('tensorflow stand-in did not start');
  return async () => {
    await tf.setBackend(previous);
    tf.removeBackend('tensorflow');
    for (const k of kernels) tf.unregisterKernel(k.kernelName, 'tensorflow');
  };
}

// The file is decoded once, outside the profiles: jimp decoding is host code (a file input ends in
// tf.tensor3d, as raw pixels do, which dispatches no kernel).
let teaser: Bitmap;
beforeAll(async () => {
  teaser = await decodeBitmap(TEASER);
});

/**
 * Kernel names dispatched by what a user of the tensorflow backend runs: building the model, decoding
 * (raw pixels and the tensor inputs: int32 RGBA and float32 gray), the host input transform, one
 * forward of one image, and one of a batch with its host stages on worker threads (as `threads`
 * gives on that backend: the RPN output is then split per image on the device).
 */
async function dispatchedKernels(): Promise<Set<string>> {
  const before = tf.memory().numTensors;
  const info = await tf.profile(async () => {
    const weights = formulaWeights();
    const model = new Img2PoseModel(weights, activeRuntime({ hostThreads: 2 }));
    disposeWeights(weights);
    const image = await decodeImage({ ...teaser, channels: 4 });
    const rgba = tf.fill([8, 12, 4], 200, 'int32') as tf.Tensor3D;
    const gray = tf.fill([8, 12, 1], 0.5, 'float32') as tf.Tensor3D;
    try {
      const decoded = [await decodeImage(rgba), await decodeImage(gray)];
      const batch = prepareBatch([image, ...decoded], CONFIG.minSize, CONFIG.maxSize);
      tf.dispose([...decoded, batch.images]);
      const [out] = await model.predict([image], CONFIG);
      // A forward that found no box would skip the RoIAlign and heads kernels.
      expect(out.scores.length).toBeGreaterThan(0);
      expect(model.usesHostThreads).toBe(true);
      const pair = await model.predict([image, image], CONFIG);
      expect(Array.from(pair[1].scores)).toEqual(Array.from(out.scores));
    } finally {
      tf.dispose([image, rgba, gray]);
      await model.dispose();
    }
  });
  expect(tf.memory().numTensors).toBe(before);
  // tf.fused ops run their kernel inside customGrad, which the profiler also lists under the op's
  // scope name ('fusedConv2d__op'); the kernel itself (FusedConv2D) is listed too, so scopes are dropped.
  return new Set(info.kernelNames.filter((name) => !name.endsWith('__op')));
}

function unsupported(kernels: Set<string>): string[] {
  return [...kernels].filter((k) => !TFJS_NODE_4_22_KERNELS.has(k)).sort();
}

describe('kernels dispatched vs tfjs-node 4.22', () => {
  test('tensorflow path (RoIAlign via cropAndResize + avgPool): every kernel is registered by tfjs-node', async () => {
    const restore = await useTensorflowStandIn();
    let kernels: Set<string>;
    try {
      kernels = await dispatchedKernels();
    } finally {
      await restore();
    }
    // Proof that the stand-in took the non-CPU branches: the 'ops' RoIAlign ran.
    expect(kernels.has('CropAndResize')).toBe(true);
    expect(kernels.has('AvgPool')).toBe(true);
    expect(kernels.has('_FusedMatMul')).toBe(true);
    // ...and the batch split its RPN output per image for the worker threads.
    expect(kernels.has('SplitV')).toBe(true);
    expect(unsupported(kernels)).toEqual([]);
  });

  test('wasm path (host RoIAlign): every kernel is registered by tfjs-node too', async () => {
    expect(tf.getBackend()).toBe('wasm');
    const kernels = await dispatchedKernels();
    expect(kernels.has('CropAndResize')).toBe(false);
    expect(kernels.has('Conv2D') || kernels.has('FusedConv2D')).toBe(true);
    // Beyond tfjs' own kernels, only the library's wasm kernels (src/kernels/wasm: Winograd
    // transforms, heap row copies, the GEMM convolution's patches and row windows), which are
    // registered for the wasm backend alone; the tensorflow path above never dispatches them.
    expect(unsupported(kernels)).toEqual([
      'Img2PoseCopyRows',
      'Img2PosePatches',
      'Img2PosePlaceRows',
      'Img2PoseRowWindow',
      'Img2PoseWinogradF4Input',
      'Img2PoseWinogradF4Output',
    ]);
  });
});
