// Every suite runs on the wasm backend (tfjs-node cannot be installed here; cpu is ~40x slower).
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
// Suites share two cores: worker threads only where a test asks for them (threads.test.ts).
process.env.IMG2POSE_THREADS ??= '1';

beforeAll(async () => {
  if (tf.getBackend() !== 'wasm') {
    await tf.setBackend('wasm');
    await tf.ready();
  }
});
