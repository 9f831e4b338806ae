;; The FPN's top-down add in place on the tfjs wasm backend's heap (src/kernels/wasm/upsample_add.ts):
;; one output row of a lateral map plus its coarser level's row, nearest-upsampled 2x along the
;; columns. Each lane is one channel, a float32 add: the bits of tf.add.
;;
;; row(out, src, w, c)
;;   out: byte address of the output row (w pixels of c floats), updated in place
;;   src: byte address of the coarse row it reads (w / 2 pixels, rounded up, of c floats)
;;   c:   channels, a multiple of 4
(module
  (import "env" "memory" (memory 0))
  (func (export "row") (param $out i32) (param $src i32) (param $w i32) (param $c i32)
    (local $x i32) (local $k i32) (local $pixel i32) (local $o i32) (local $s i32)
    (local.set $pixel (i32.shl (local.get $c) (i32.const 2)))
    (local.set $x (i32.const 0))
    (loop $columns
      (local.set $o (i32.add (local.get $out) (i32.mul (local.get $x) (local.get $pixel))))
      (local.set $s (i32.add (local.get $src) (i32.mul (i32.shr_u (local.get $x) (i32.const 1)) (local.get $pixel))))
      (local.set $k (i32.const 0))
      (loop $channels
        (v128.store (i32.add (local.get $o) (local.get $k))
          (f32x4.add
            (v128.load (i32.add (local.get $o) (local.get $k)))
            (v128.load (i32.add (local.get $s) (local.get $k)))))
        (br_if $channels (i32.lt_u (local.tee $k (i32.add (local.get $k) (i32.const 16))) (local.get $pixel))))
      (br_if $columns (i32.lt_u (local.tee $x (i32.add (local.get $x) (i32.const 1))) (local.get $w))))))
