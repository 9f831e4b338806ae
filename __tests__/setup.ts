// Every suite runs on the wasm backend (tfjs-node cannot be installed here; cpu is ~40x slower).
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';

beforeAll(async () => {
  if (tf.getBackend() !== 'wasm') {
    await tf.setBackend('wasm');
    await tf.ready();
  }
});
