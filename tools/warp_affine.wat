;; The interior of OpenCV's fixed-point bilinear warpAffine (8-bit RGB) in WebAssembly SIMD.
;; src/align.ts holds the assembled bytes (tools/build_warp_wasm.js writes them there) and does
;; everything else: the inverse map, the per-column and per-row steps, and the border pixels.
;;
;; warp(src, stride, xLim, yLim, adelta, bdelta, rows, size, out, border, weights) -> n
;;   src      packed RGB source, readable 8 bytes past its end (the 8-byte loads use 6)
;;   stride   bytes per source row (width * 3)
;;   xLim     min(width - 1, 32767), yLim likewise: a pixel is interior when its top-left tap
;;            (sx, sy) has 0 <= sx < xLim and 0 <= sy < yLim (all four taps inside)
;;   adelta   int32 per column: cvRound(m0 x 1024); bdelta: cvRound(m3 x 1024)
;;   rows     int32 pairs per row: cvRound((m1 y + m2) 1024) + 16, cvRound((m4 y + m5) 1024) + 16
;;   out      size x size RGB crop, 1 writable byte past its end (each pixel is stored as 4 bytes;
;;            the 4th is overwritten by the next pixel)
;;   border   receives (byte offset in out, X, Y) int32 triples for the pixels left to the caller
;;   weights  per (fy, fx) fraction, 32 bytes: int16 (k00 k01 k00 k01 k00 k01 0 0) then
;;            (k10 k11 k10 k11 k10 k11 0 0), OpenCV's 15-bit bilinear weights
;; Returns the number of border triples.
(module
  (memory (export "memory") 1)
  (func (export "warp")
    (param $src i32) (param $stride i32) (param $xLim i32) (param $yLim i32)
    (param $adelta i32) (param $bdelta i32) (param $rows i32) (param $size i32)
    (param $out i32) (param $border i32) (param $weights i32) (result i32)
    (local $x i32) (local $y i32) (local $x0 i32) (local $y0 i32)
    (local $X i32) (local $Y i32) (local $sx i32) (local $sy i32)
    (local $p i32) (local $o i32) (local $w i32) (local $n i32)
    (local $v v128) (local $s v128)
    (local.set $o (local.get $out))
    (block $done
      (loop $row
        (br_if $done (i32.ge_u (local.get $y) (local.get $size)))
        (local.set $x0 (i32.load (i32.add (local.get $rows) (i32.shl (local.get $y) (i32.const 3)))))
        (local.set $y0 (i32.load offset=4 (i32.add (local.get $rows) (i32.shl (local.get $y) (i32.const 3)))))
        (local.set $x (i32.const 0))
        (block $rowDone
          (loop $col
            (br_if $rowDone (i32.ge_u (local.get $x) (local.get $size)))
            ;; Source position in 1/32 pixel, then its integer part.
            (local.set $X (i32.shr_s
              (i32.add (local.get $x0) (i32.load (i32.add (local.get $adelta) (i32.shl (local.get $x) (i32.const 2)))))
              (i32.const 5)))
            (local.set $Y (i32.shr_s
              (i32.add (local.get $y0) (i32.load (i32.add (local.get $bdelta) (i32.shl (local.get $x) (i32.const 2)))))
              (i32.const 5)))
            (local.set $sx (i32.shr_s (local.get $X) (i32.const 5)))
            (local.set $sy (i32.shr_s (local.get $Y) (i32.const 5)))
            (if (i32.and (i32.lt_u (local.get $sx) (local.get $xLim)) (i32.lt_u (local.get $sy) (local.get $yLim)))
              (then
                (local.set $p (i32.add (local.get $src)
                  (i32.add (i32.mul (local.get $sy) (local.get $stride)) (i32.mul (local.get $sx) (i32.const 3)))))
                ;; Bytes 0-7: top row R G B R' G' B' (+2); bytes 8-15: the row below.
                (local.set $v (v128.load64_zero (local.get $p)))
                (local.set $v (v128.load64_lane 1 (i32.add (local.get $p) (local.get $stride)) (local.get $v)))
                (local.set $w (i32.add (local.get $weights)
                  (i32.shl
                    (i32.or (i32.shl (i32.and (local.get $Y) (i32.const 31)) (i32.const 5)) (i32.and (local.get $X) (i32.const 31)))
                    (i32.const 5))))
                ;; (Rt Rt' Gt Gt' Bt Bt' 0 0) . (k00 k01 k00 k01 k00 k01 0 0) + the same for the
                ;; row below with (k10 k11 ...) = the R, G, B sums (lane 3: 0).
                (local.set $s (i32x4.add
                  (i32x4.dot_i16x8_s
                    (i8x16.shuffle 0 16 3 16 1 16 4 16 2 16 5 16 16 16 16 16 (local.get $v) (v128.const i64x2 0 0))
                    (v128.load (local.get $w)))
                  (i32x4.dot_i16x8_s
                    (i8x16.shuffle 8 16 11 16 9 16 12 16 10 16 13 16 16 16 16 16 (local.get $v) (v128.const i64x2 0 0))
                    (v128.load offset=16 (local.get $w)))))
                ;; (sum + 2^14) >> 15 is at most 255: the low byte of each lane.
                (local.set $s (i32x4.shr_u (i32x4.add (local.get $s) (v128.const i32x4 16384 16384 16384 16384)) (i32.const 15)))
                (local.set $s (i8x16.shuffle 0 4 8 12 0 0 0 0 0 0 0 0 0 0 0 0 (local.get $s) (local.get $s)))
                (v128.store32_lane 0 (local.get $o) (local.get $s)))
              (else
                (i32.store (local.get $border) (i32.sub (local.get $o) (local.get $out)))
                (i32.store offset=4 (local.get $border) (local.get $X))
                (i32.store offset=8 (local.get $border) (local.get $Y))
                (local.set $border (i32.add (local.get $border) (i32.const 12)))
                (local.set $n (i32.add (local.get $n) (i32.const 1)))))
            (local.set $o (i32.add (local.get $o) (i32.const 3)))
            (local.set $x (i32.add (local.get $x) (i32.const 1)))
            (br $col)))
        (local.set $y (i32.add (local.get $y) (i32.const 1)))
        (br $row)))
    (local.get $n)))
