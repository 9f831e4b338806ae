import * as tf from '@tensorflow/tfjs';
import { FORMULA_GAINS, FORMULA_KEY_SPECS, formulaTensor, formulaWeights } from '../src/io/formula_weights';
import { disposeWeights } from '../src/model/weights';
import { gains, keySpecs } from './utils/formula';

// The library ships its own copy of the key list and gains (assets/); they must be the fixtures'.
describe('formula weights shipped with the library', () => {
  it('ships the fixtures key list and gains', () => {
    expect(FORMULA_KEY_SPECS).toEqual(keySpecs(18));
    expect(FORMULA_GAINS).toEqual(gains());
  });

  it('rebuilds a gained conv weight bit-exactly from the shipped gains', () => {
    // Values from numpy (see formula.test.ts).
    const w = formulaTensor('backbone.body.conv1.weight', [64, 3, 7, 7]);
    expect([w[0], w[9407]]).toEqual([-0.04679008200764656, 0.10467864573001862]);
  });

  it('builds tfjs-layout tensors the caller owns', () => {
    const before = tf.memory().numTensors;
    const w = formulaWeights();
    expect(w.depth).toBe(18);
    expect(w.tensors.size).toBe(FORMULA_KEY_SPECS.filter((k) => !k.name.endsWith('num_batches_tracked')).length);
    expect(w.tensors.get('backbone.body.conv1.weight')?.shape).toEqual([7, 7, 3, 64]);
    expect(w.tensors.get('roi_heads.box_head.fc6.weight')?.shape).toEqual([12544, 1024]);
    expect(Array.from(w.poseMean)).toEqual([0, 0, 0, 0, 0, 3]);
    // conv1 (out 0, in 0, y 0, x 0) is the first torch value; in (kh,kw,in,out) it is index 0 too,
    // (out 1, in 0, 0, 0) = torch index 147 lands at tfjs index 1.
    const torch = formulaTensor('backbone.body.conv1.weight', [64, 3, 7, 7]);
    const tfjs = w.tensors.get('backbone.body.conv1.weight')!.dataSync();
    expect([tfjs[0], tfjs[1]]).toEqual([torch[0], torch[147]]);
    disposeWeights(w);
    expect(tf.memory().numTensors).toBe(before);
  });
});
