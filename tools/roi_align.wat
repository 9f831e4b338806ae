;; torchvision's roi_align (aligned=False, sampling ratio 2, 7x7 bins) of one box on one NHWC map,
;; in WebAssembly SIMD, on the tfjs wasm backend's heap (src/kernels/wasm/roi_align.ts). Each lane
;; is one channel, with the float32 operations of torchvision's CPU kernel in its order:
;;   bin += ((w1 v1 + w2 v2) + w3 v3) + w4 v4   per sample, then bin / 4
;; so the bits are its bits, and those of the JavaScript kernel in src/model/roi_align.ts.
;;
;; box(map, C, rows, cols, out)
;;   map:  byte address of the image's region (row 0, column 0, channel 0) of the level's map
;;   C:    channels, a multiple of 4
;;   rows: 14 sample rows, 16 bytes each: i32 low, i32 high (byte offsets from map: row * row
;;         stride * 4), f32 wLow, f32 wHigh; a sample outside the map has both weights 0 and is
;;         skipped (torchvision's `continue`)
;;   cols: 14 sample columns, the same, with byte offsets column * C * 4
;;   out:  49 * C floats, written (bin after bin, channels innermost)
(module
  (import "env" "memory" (memory 0))
  (func (export "box") (param $map i32) (param $C i32) (param $rows i32) (param $cols i32) (param $out i32)
    (local $end i32) (local $c i32) (local $py i32) (local $px i32) (local $iy i32) (local $ix i32)
    (local $ry i32) (local $cx i32) (local $wyl f32) (local $wyh f32) (local $wxl f32) (local $wxh f32)
    (local $p1 i32) (local $p2 i32) (local $p3 i32) (local $p4 i32)
    (local $w1 v128) (local $w2 v128) (local $w3 v128) (local $w4 v128)
    (local.set $end (i32.shl (local.get $C) (i32.const 2)))
    (local.set $py (i32.const 0))
    (loop $bin_rows
      (local.set $px (i32.const 0))
      (loop $bin_cols
        ;; The bin starts at 0.
        (local.set $c (i32.const 0))
        (loop $zero
          (v128.store (i32.add (local.get $out) (local.get $c)) (v128.const i32x4 0 0 0 0))
          (br_if $zero (i32.lt_u (local.tee $c (i32.add (local.get $c) (i32.const 16))) (local.get $end))))
        (local.set $iy (i32.const 0))
        (loop $samples_y
          (local.set $ry (i32.add (local.get $rows)
            (i32.shl (i32.add (i32.shl (local.get $py) (i32.const 1)) (local.get $iy)) (i32.const 4))))
          (local.set $wyl (f32.load offset=8 (local.get $ry)))
          (local.set $wyh (f32.load offset=12 (local.get $ry)))
          (if (i32.or (f32.ne (local.get $wyl) (f32.const 0)) (f32.ne (local.get $wyh) (f32.const 0)))
            (then
              (local.set $ix (i32.const 0))
              (loop $samples_x
                (local.set $cx (i32.add (local.get $cols)
                  (i32.shl (i32.add (i32.shl (local.get $px) (i32.const 1)) (local.get $ix)) (i32.const 4))))
                (local.set $wxl (f32.load offset=8 (local.get $cx)))
                (local.set $wxh (f32.load offset=12 (local.get $cx)))
                (if (i32.or (f32.ne (local.get $wxl) (f32.const 0)) (f32.ne (local.get $wxh) (f32.const 0)))
                  (then
                    (local.set $w1 (f32x4.splat (f32.mul (local.get $wyl) (local.get $wxl))))
                    (local.set $w2 (f32x4.splat (f32.mul (local.get $wyl) (local.get $wxh))))
                    (local.set $w3 (f32x4.splat (f32.mul (local.get $wyh) (local.get $wxl))))
                    (local.set $w4 (f32x4.splat (f32.mul (local.get $wyh) (local.get $wxh))))
                    (local.set $p1 (i32.add (local.get $map) (i32.add (i32.load (local.get $ry)) (i32.load (local.get $cx)))))
                    (local.set $p2 (i32.add (local.get $map) (i32.add (i32.load (local.get $ry)) (i32.load offset=4 (local.get $cx)))))
                    (local.set $p3 (i32.add (local.get $map) (i32.add (i32.load offset=4 (local.get $ry)) (i32.load (local.get $cx)))))
                    (local.set $p4 (i32.add (local.get $map) (i32.add (i32.load offset=4 (local.get $ry)) (i32.load offset=4 (local.get $cx)))))
                    (local.set $c (i32.const 0))
                    (loop $channels
                      (v128.store (i32.add (local.get $out) (local.get $c))
                        (f32x4.add
                          (v128.load (i32.add (local.get $out) (local.get $c)))
                          (f32x4.add
                            (f32x4.add
                              (f32x4.add
                                (f32x4.mul (local.get $w1) (v128.load (i32.add (local.get $p1) (local.get $c))))
                                (f32x4.mul (local.get $w2) (v128.load (i32.add (local.get $p2) (local.get $c)))))
                              (f32x4.mul (local.get $w3) (v128.load (i32.add (local.get $p3) (local.get $c)))))
                            (f32x4.mul (local.get $w4) (v128.load (i32.add (local.get $p4) (local.get $c)))))))
                      (br_if $channels (i32.lt_u (local.tee $c (i32.add (local.get $c) (i32.const 16))) (local.get $end))))))
                (br_if $samples_x (i32.lt_u (local.tee $ix (i32.add (local.get $ix) (i32.const 1))) (i32.const 2))))))
          (br_if $samples_y (i32.lt_u (local.tee $iy (i32.add (local.get $iy) (i32.const 1))) (i32.const 2))))
        ;; The average of the 2x2 samples: x / 4 and x * 0.25 are the same float32.
        (local.set $c (i32.const 0))
        (loop $average
          (v128.store (i32.add (local.get $out) (local.get $c))
            (f32x4.mul (v128.load (i32.add (local.get $out) (local.get $c))) (v128.const f32x4 0.25 0.25 0.25 0.25)))
          (br_if $average (i32.lt_u (local.tee $c (i32.add (local.get $c) (i32.const 16))) (local.get $end))))
        (local.set $out (i32.add (local.get $out) (local.get $end)))
        (br_if $bin_cols (i32.lt_u (local.tee $px (i32.add (local.get $px) (i32.const 1))) (i32.const 7))))
      (br_if $bin_rows (i32.lt_u (local.tee $py (i32.add (local.get $py) (i32.const 1))) (i32.const 7))))))
