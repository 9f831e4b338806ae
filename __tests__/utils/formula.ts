/**
 * The formula test weights of shared/fixtures/README.md. The algorithm lives in
 * src/io/formula_weights.ts (the demo and bench need it too); this module keeps the tests' entry
 * points and reads key lists and gains from the copied fixtures, so a test can check the shipped
 * assets against them.
 */
import * as fs from 'fs';
import * as path from 'path';
import { HostTensor } from '../../converter/layout';
import { Img2PoseWeights, ResNetDepth } from '../../src/model/weights';
import { KeySpec } from '../../converter/spec';
import {
  FormulaGains,
  formulaStateDictFromSpecs,
  formulaTensor as formulaTensorImpl,
  formulaWeights as formulaWeightsImpl,
} from '../../src/io/formula_weights';

export const FIXTURES = path.join(__dirname, '..', 'fixtures');

export function keySpecs(depth: ResNetDepth = 18): KeySpec[] {
  return JSON.parse(fs.readFileSync(path.join(FIXTURES, 'weights', `keys_resnet${depth}.json`), 'utf8'));
}

export function gains(): FormulaGains {
  return JSON.parse(fs.readFileSync(path.join(FIXTURES, 'weights', 'gains.json'), 'utf8'));
}

/** One tensor of the formula weights, torch layout. */
export function formulaTensor(name: string, shape: number[]): Float32Array {
  return formulaTensorImpl(name, shape, gains());
}

/** The whole formula state dict in torch layout (num_batches_tracked left out). */
export function formulaStateDict(depth: ResNetDepth = 18): Map<string, HostTensor> {
  return formulaStateDictFromSpecs(keySpecs(depth), gains());
}

/** Formula weights as the model consumes them (tfjs layout, tensors on the current backend). */
export function formulaWeights(): Img2PoseWeights {
  return formulaWeightsImpl();
}
