/** Access to the golden references of the upstream PyTorch run (copied from shared/fixtures). */
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';
import { parseNpy, NpyArray } from '../../converter/npy';
import { FIXTURES } from './formula';
import { rgbOfPng } from './png';

export const GOLDEN = path.join(FIXTURES, 'golden');

export interface GoldenFace {
  box: number[];
  confidence: number;
  pose: number[];
  keypoints: Record<string, number[]>;
}

export interface GoldenCase {
  id: string;
  mode: 'single' | 'batch';
  image?: string;
  images?: string[];
  min_size: number;
  max_size: number;
  files?: Record<string, string>;
  resized_hw?: [number, number];
  padded_shape?: number[];
  anchors_per_level?: number[];
  pose_image_shape?: [number, number];
  num_detections?: number;
  'faces_t0.5'?: GoldenFace[];
  'faces_t0.3_max5'?: GoldenFace[];
  per_image?: { files: Record<string, string>; 'faces_t0.5': GoldenFace[]; num_detections: number }[];
}

export interface Manifest { pose_mean: number[]; pose_stddev: number[]; cases: GoldenCase[] }

export function manifest(): Manifest {
  return JSON.parse(fs.readFileSync(path.join(GOLDEN, 'manifest.json'), 'utf8'));
}

export function goldenCase(id: string): GoldenCase {
  const c = manifest().cases.find((k) => k.id === id);
  if (!c) throw new Error(`no golden case ${id}`);
  return c;
}

export function loadNpy(file: string): NpyArray {
  return parseNpy(fs.readFileSync(path.join(GOLDEN, file)), file);
}

/** A golden stage output of a case, e.g. golden('tiny_teaser', 'proposals'). */
export function golden(caseId: string, key: string): NpyArray {
  const c = goldenCase(caseId);
  const f = c.files?.[key];
  if (!f) throw new Error(`golden case ${caseId} has no ${key}`);
  return loadNpy(f);
}

export function imagePath(name: string): string {
  return path.join(GOLDEN, name);
}

/** ||a - b|| / ||b||, the fixtures' stage tolerance measure. */
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length mismatch ${a.length} vs ${b.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    num += d * d;
    den += b[i] * b[i];
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

/** A golden PNG as an HWC int32 RGB tensor (./png.ts decodes it). */
export function loadGoldenRgb(name: string): tf.Tensor3D {
  const { data, width, height } = rgbOfPng(imagePath(name));
  return tf.tensor3d(Int32Array.from(data), [height, width, 3], 'int32');
}
