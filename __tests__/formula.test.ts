import { formulaTensor } from './utils/formula';

// Expected values computed independently in Python/numpy from shared/fixtures/README.md's formula.
describe('formula test weights', () => {
  it('rebuilds a bias exactly', () => {
    const w = formulaTensor('rpn.head.cls_logits.bias', [3]);
    expect(Array.from(w)).toEqual([0.034338295459747314, -0.09895069152116776, -0.03765036538243294]);
  });
  it('rebuilds a gained conv weight exactly, first and last values', () => {
    const w = formulaTensor('backbone.body.conv1.weight', [64, 3, 7, 7]);
    expect([w[0], w[1], w[2], w[9407]]).toEqual([
      -0.04679008200764656, -0.005243172403424978, -0.017972977831959724, 0.10467864573001862,
    ]);
  });
  it('uses the class-bias override', () => {
    expect(Array.from(formulaTensor('roi_heads.class_predictor.cls_score.bias', [2]))).toEqual([2.5, -2.5]);
  });
});
