;; Vector (SIMD, four float32 lanes) loops for the fused kernels of fused_kernels.ts, run on the wasm backend's own
;; memory: the module imports TensorFlow.js's WebAssembly.Memory, so tensors are read and written where they lie. Every
;; pointer is a byte offset on that memory. JavaScript runs each of these loops as one value at a time; here one
;; instruction handles four.
;;
;; Rebuilt into simd_wasm.ts by `deno task build-simd` (tests/simd_test.ts checks the two agree).
(module
  (import "env" "memory" (memory 1))

  ;; Constants, four lanes each, as immutable globals: V8 builds a v128.const anew wherever it appears (several
  ;; instructions each), where a global is one load.
  (global $EXP_MIN v128 (v128.const f32x4 -87 -87 -87 -87))
  (global $LOG2E v128 (v128.const f32x4 1.4426950408889634 1.4426950408889634 1.4426950408889634 1.4426950408889634))
  (global $EXP2_MIN v128 (v128.const f32x4 -126 -126 -126 -126))
  (global $ROUNDER v128 (v128.const f32x4 12582912 12582912 12582912 12582912))
  (global $LN2_HI v128 (v128.const f32x4 0.693359375 0.693359375 0.693359375 0.693359375))
  (global $LN2_LO v128 (v128.const f32x4 -2.12194440e-4 -2.12194440e-4 -2.12194440e-4 -2.12194440e-4))
  (global $E6 v128 (v128.const f32x4 1.3888889e-3 1.3888889e-3 1.3888889e-3 1.3888889e-3))
  (global $E5 v128 (v128.const f32x4 8.3333333e-3 8.3333333e-3 8.3333333e-3 8.3333333e-3))
  (global $E4 v128 (v128.const f32x4 4.1666667e-2 4.1666667e-2 4.1666667e-2 4.1666667e-2))
  (global $E3 v128 (v128.const f32x4 0.16666667 0.16666667 0.16666667 0.16666667))
  (global $HALF v128 (v128.const f32x4 0.5 0.5 0.5 0.5))
  (global $ONE v128 (v128.const f32x4 1 1 1 1))
  (global $ROUNDER_BITS v128 (v128.const i32x4 0x4b400000 0x4b400000 0x4b400000 0x4b400000))
  (global $EXP_BIAS v128 (v128.const i32x4 127 127 127 127))
  (global $SQRT_HALF v128 (v128.const f32x4 0.70710678 0.70710678 0.70710678 0.70710678))
  (global $ERF_P v128 (v128.const f32x4 0.3275911 0.3275911 0.3275911 0.3275911))
  (global $A5 v128 (v128.const f32x4 1.061405429 1.061405429 1.061405429 1.061405429))
  (global $A4 v128 (v128.const f32x4 -1.453152027 -1.453152027 -1.453152027 -1.453152027))
  (global $A3 v128 (v128.const f32x4 1.421413741 1.421413741 1.421413741 1.421413741))
  (global $A2 v128 (v128.const f32x4 -0.284496736 -0.284496736 -0.284496736 -0.284496736))
  (global $A1 v128 (v128.const f32x4 0.254829592 0.254829592 0.254829592 0.254829592))
  (global $SIGN v128 (v128.const i32x4 0x80000000 0x80000000 0x80000000 0x80000000))
  (global $INV_SQRT_2PI v128 (v128.const f32x4 0.39894228 0.39894228 0.39894228 0.39894228))
  (global $ZERO v128 (v128.const f32x4 0 0 0 0))
  (global $LANES v128 (v128.const i32x4 0 1 2 3))

  ;; e^y for y ≤ 0 (0 below −87, where e^y leaves float32's normal range): y = k·ln 2 + r with k an integer
  ;; and |r| ≤ ln 2 / 2 (ln 2 split in two for exactness), e^r by its Taylor series to r⁶ (relative error
  ;; about 10⁻⁷), times 2^k built in the exponent bits.
  (func $exp (param $y v128) (result v128)
    (local $t v128) (local $k v128) (local $r v128) (local $p v128) (local $keep v128)
    ;; lanes below −87 (−∞ among them) give exactly 0; NaN stays NaN
    (local.set $keep (v128.or (f32x4.ge (local.get $y) (global.get $EXP_MIN))
      (f32x4.ne (local.get $y) (local.get $y))))
    ;; t = y·log₂e + 1.5·2²³ holds round(y·log₂e) in its low mantissa bits (after a clamp that keeps 2^k in range)
    (local.set $t (f32x4.add
      (f32x4.pmax (f32x4.mul (local.get $y) (global.get $LOG2E))
        (global.get $EXP2_MIN))
      (global.get $ROUNDER)))
    (local.set $k (f32x4.sub (local.get $t) (global.get $ROUNDER)))
    (local.set $r (f32x4.sub (local.get $y)
      (f32x4.mul (local.get $k) (global.get $LN2_HI))))
    (local.set $r (f32x4.sub (local.get $r)
      (f32x4.mul (local.get $k) (global.get $LN2_LO))))
    ;; p = 1 + r(1 + r(1/2 + r(1/6 + r(1/24 + r(1/120 + r/720)))))
    (local.set $p (global.get $E6))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (global.get $E5)))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (global.get $E4)))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (global.get $E3)))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (global.get $HALF)))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (global.get $ONE)))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (global.get $ONE)))
    ;; 2^k: k + 127 in the exponent field, k read from t's bits (t − bits of 1.5·2²³)
    (v128.and (local.get $keep) (f32x4.mul (local.get $p)
      (i32x4.shl (i32x4.add (i32x4.sub (local.get $t) (global.get $ROUNDER_BITS))
        (global.get $EXP_BIAS)) (i32.const 23)))))

  ;; GELU of four values: x·Φ(x), and Φ(x) + x·φ(x) (its derivative) into $d. Φ(x) = (1 + erf(x/√2)) / 2 with
  ;; erf by Abramowitz and Stegun 7.1.26 (absolute error below 1.5·10⁻⁷): erf(z) = 1 − t(a₁ + t(a₂ + …))·e^(−z²),
  ;; t = 1/(1 + p·z), for z = |x|/√2, the sign put back after; e^(−z²) = e^(−x²/2) also gives φ.
  (func $gelu4 (param $x v128) (result v128 v128)
    (local $z v128) (local $t v128) (local $e v128) (local $q v128) (local $cdf v128)
    (local.set $z (f32x4.mul (f32x4.abs (local.get $x)) (global.get $SQRT_HALF)))
    (local.set $t (f32x4.div (global.get $ONE)
      (f32x4.add (global.get $ONE) (f32x4.mul (local.get $z) (global.get $ERF_P)))))
    (local.set $e (call $exp (f32x4.neg (f32x4.mul (local.get $z) (local.get $z)))))
    (local.set $q (global.get $A5))
    (local.set $q (f32x4.add (f32x4.mul (local.get $q) (local.get $t)) (global.get $A4)))
    (local.set $q (f32x4.add (f32x4.mul (local.get $q) (local.get $t)) (global.get $A3)))
    (local.set $q (f32x4.add (f32x4.mul (local.get $q) (local.get $t)) (global.get $A2)))
    (local.set $q (f32x4.add (f32x4.mul (local.get $q) (local.get $t)) (global.get $A1)))
    ;; erf(|x|/√2) = 1 − t·q·e, ≥ 0; the sign of x is put on it with one OR
    (local.set $cdf (f32x4.sub (global.get $ONE) (f32x4.mul (f32x4.mul (local.get $t) (local.get $q)) (local.get $e))))
    (local.set $cdf (v128.or (local.get $cdf) (v128.and (local.get $x) (global.get $SIGN))))
    (local.set $cdf (f32x4.add (global.get $HALF) (f32x4.mul (local.get $cdf) (global.get $HALF))))
    (f32x4.mul (local.get $x) (local.get $cdf))
    (f32x4.add (local.get $cdf)
      (f32x4.mul (f32x4.mul (local.get $x) (local.get $e)) (global.get $INV_SQRT_2PI))))

  ;; value[i] = gelu(x[i]), and derivative[i] when $withDerivative, for i < n (n ≥ 4). The last four values are
  ;; computed again, overlapping, when n is not a multiple of four: each result depends on its own input only.
  (func (export "gelu") (param $x i32) (param $value i32) (param $derivative i32) (param $withDerivative i32) (param $n i32)
    (local $i i32) (local $end i32) (local $v v128) (local $d v128) (local $v2 v128) (local $d2 v128)
    (local.set $end (i32.shl (local.get $n) (i32.const 2)))
    ;; two groups of four at a time while eight remain: independent work for the processor to overlap
    (block $pairsDone
      (loop $pairs
        (br_if $pairsDone (i32.gt_u (i32.add (local.get $i) (i32.const 32)) (local.get $end)))
        (call $gelu4 (v128.load (i32.add (local.get $x) (local.get $i))))
        (local.set $d)
        (local.set $v)
        (call $gelu4 (v128.load offset=16 (i32.add (local.get $x) (local.get $i))))
        (local.set $d2)
        (local.set $v2)
        (v128.store (i32.add (local.get $value) (local.get $i)) (local.get $v))
        (v128.store offset=16 (i32.add (local.get $value) (local.get $i)) (local.get $v2))
        (if (local.get $withDerivative)
          (then
            (v128.store (i32.add (local.get $derivative) (local.get $i)) (local.get $d))
            (v128.store offset=16 (i32.add (local.get $derivative) (local.get $i)) (local.get $d2))))
        (local.set $i (i32.add (local.get $i) (i32.const 32)))
        (br $pairs)))
    (block $done
      (loop $next
        (if (i32.gt_u (i32.add (local.get $i) (i32.const 16)) (local.get $end))
          (then
            (br_if $done (i32.eq (local.get $i) (local.get $end)))
            (local.set $i (i32.sub (local.get $end) (i32.const 16)))))
        (call $gelu4 (v128.load (i32.add (local.get $x) (local.get $i))))
        (local.set $d)
        (local.set $v)
        (v128.store (i32.add (local.get $value) (local.get $i)) (local.get $v))
        (if (local.get $withDerivative)
          (then (v128.store (i32.add (local.get $derivative) (local.get $i)) (local.get $d))))
        (local.set $i (i32.add (local.get $i) (i32.const 16)))
        (br $next))))

  ;; The four lanes of $v added.
  (func $sum4 (param $v v128) (result f32)
    (f32.add
      (f32.add (f32x4.extract_lane 0 (local.get $v)) (f32x4.extract_lane 1 (local.get $v)))
      (f32.add (f32x4.extract_lane 2 (local.get $v)) (f32x4.extract_lane 3 (local.get $v)))))

  ;; Layer normalisation of `rows` rows of `width` values (a multiple of four): y = (x − mean)·rstd·w + b, with
  ;; mean[r] and rstd[r] = 1/√(var + ε) written out (biased variance).
  (func (export "layer_norm")
    (param $x i32) (param $w i32) (param $b i32) (param $y i32) (param $mean i32) (param $rstd i32)
    (param $rows i32) (param $width i32) (param $epsilon f32)
    (local $r i32) (local $j i32) (local $bytes i32) (local $row i32) (local $acc v128) (local $mu f32) (local $s f32)
    (local $centered v128)
    (local.set $bytes (i32.shl (local.get $width) (i32.const 2)))
    (block $rowsDone
      (loop $nextRow
        (br_if $rowsDone (i32.ge_u (local.get $r) (local.get $rows)))
        (local.set $row (i32.mul (local.get $r) (local.get $bytes)))
        ;; mean
        (local.set $acc (global.get $ZERO))
        (local.set $j (i32.const 0))
        (block $sumDone
          (loop $sum
            (br_if $sumDone (i32.ge_u (local.get $j) (local.get $bytes)))
            (local.set $acc (f32x4.add (local.get $acc)
              (v128.load (i32.add (local.get $x) (i32.add (local.get $row) (local.get $j))))))
            (local.set $j (i32.add (local.get $j) (i32.const 16)))
            (br $sum)))
        (local.set $mu (f32.div (call $sum4 (local.get $acc)) (f32.convert_i32_u (local.get $width))))
        ;; variance of the centred values
        (local.set $acc (global.get $ZERO))
        (local.set $j (i32.const 0))
        (block $varDone
          (loop $var
            (br_if $varDone (i32.ge_u (local.get $j) (local.get $bytes)))
            (local.set $centered (f32x4.sub
              (v128.load (i32.add (local.get $x) (i32.add (local.get $row) (local.get $j)))) (f32x4.splat (local.get $mu))))
            (local.set $acc (f32x4.add (local.get $acc) (f32x4.mul (local.get $centered) (local.get $centered))))
            (local.set $j (i32.add (local.get $j) (i32.const 16)))
            (br $var)))
        (local.set $s (f32.div (f32.const 1) (f32.sqrt (f32.add
          (f32.div (call $sum4 (local.get $acc)) (f32.convert_i32_u (local.get $width))) (local.get $epsilon)))))
        ;; y = (x − mean)·rstd·w + b
        (local.set $j (i32.const 0))
        (block $outDone
          (loop $out
            (br_if $outDone (i32.ge_u (local.get $j) (local.get $bytes)))
            (v128.store (i32.add (local.get $y) (i32.add (local.get $row) (local.get $j)))
              (f32x4.add
                (f32x4.mul
                  (f32x4.mul
                    (f32x4.sub (v128.load (i32.add (local.get $x) (i32.add (local.get $row) (local.get $j)))) (f32x4.splat (local.get $mu)))
                    (f32x4.splat (local.get $s)))
                  (v128.load (i32.add (local.get $w) (local.get $j))))
                (v128.load (i32.add (local.get $b) (local.get $j)))))
            (local.set $j (i32.add (local.get $j) (i32.const 16)))
            (br $out)))
        (f32.store (i32.add (local.get $mean) (i32.shl (local.get $r) (i32.const 2))) (local.get $mu))
        (f32.store (i32.add (local.get $rstd) (i32.shl (local.get $r) (i32.const 2))) (local.get $s))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $nextRow))))

  ;; The gradients of layer_norm: with x̂ = (x − mean)·rstd and g = dy·w, per row
  ;; dx = rstd·(g − mean(g) − x̂·mean(g·x̂)); over all rows dw = Σ dy·x̂ and db = Σ dy (accumulated into $dw, $db,
  ;; which this zeroes first).
  (func (export "layer_norm_grad")
    (param $dy i32) (param $x i32) (param $mean i32) (param $rstd i32) (param $w i32)
    (param $dx i32) (param $dw i32) (param $db i32) (param $rows i32) (param $width i32)
    (local $r i32) (local $j i32) (local $bytes i32) (local $row i32) (local $mu v128) (local $s v128)
    (local $h v128) (local $d v128) (local $g v128) (local $accG v128) (local $accGX v128)
    (local $meanG v128) (local $meanGX v128) (local $n f32)
    (local.set $bytes (i32.shl (local.get $width) (i32.const 2)))
    (local.set $n (f32.convert_i32_u (local.get $width)))
    (memory.fill (local.get $dw) (i32.const 0) (local.get $bytes))
    (memory.fill (local.get $db) (i32.const 0) (local.get $bytes))
    (block $rowsDone
      (loop $nextRow
        (br_if $rowsDone (i32.ge_u (local.get $r) (local.get $rows)))
        (local.set $row (i32.mul (local.get $r) (local.get $bytes)))
        (local.set $mu (f32x4.splat (f32.load (i32.add (local.get $mean) (i32.shl (local.get $r) (i32.const 2))))))
        (local.set $s (f32x4.splat (f32.load (i32.add (local.get $rstd) (i32.shl (local.get $r) (i32.const 2))))))
        (local.set $accG (global.get $ZERO))
        (local.set $accGX (global.get $ZERO))
        (local.set $j (i32.const 0))
        (block $firstDone
          (loop $first
            (br_if $firstDone (i32.ge_u (local.get $j) (local.get $bytes)))
            (local.set $h (f32x4.mul (f32x4.sub
              (v128.load (i32.add (local.get $x) (i32.add (local.get $row) (local.get $j)))) (local.get $mu)) (local.get $s)))
            (local.set $d (v128.load (i32.add (local.get $dy) (i32.add (local.get $row) (local.get $j)))))
            (local.set $g (f32x4.mul (local.get $d) (v128.load (i32.add (local.get $w) (local.get $j)))))
            (local.set $accG (f32x4.add (local.get $accG) (local.get $g)))
            (local.set $accGX (f32x4.add (local.get $accGX) (f32x4.mul (local.get $g) (local.get $h))))
            (v128.store (i32.add (local.get $dw) (local.get $j))
              (f32x4.add (v128.load (i32.add (local.get $dw) (local.get $j))) (f32x4.mul (local.get $d) (local.get $h))))
            (v128.store (i32.add (local.get $db) (local.get $j))
              (f32x4.add (v128.load (i32.add (local.get $db) (local.get $j))) (local.get $d)))
            (local.set $j (i32.add (local.get $j) (i32.const 16)))
            (br $first)))
        (local.set $meanG (f32x4.splat (f32.div (call $sum4 (local.get $accG)) (local.get $n))))
        (local.set $meanGX (f32x4.splat (f32.div (call $sum4 (local.get $accGX)) (local.get $n))))
        (local.set $j (i32.const 0))
        (block $secondDone
          (loop $second
            (br_if $secondDone (i32.ge_u (local.get $j) (local.get $bytes)))
            (local.set $h (f32x4.mul (f32x4.sub
              (v128.load (i32.add (local.get $x) (i32.add (local.get $row) (local.get $j)))) (local.get $mu)) (local.get $s)))
            (local.set $g (f32x4.mul
              (v128.load (i32.add (local.get $dy) (i32.add (local.get $row) (local.get $j))))
              (v128.load (i32.add (local.get $w) (local.get $j)))))
            (v128.store (i32.add (local.get $dx) (i32.add (local.get $row) (local.get $j)))
              (f32x4.mul (local.get $s)
                (f32x4.sub (f32x4.sub (local.get $g) (local.get $meanG)) (f32x4.mul (local.get $h) (local.get $meanGX)))))
            (local.set $j (i32.add (local.get $j) (i32.const 16)))
            (br $second)))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $nextRow))))

  ;; Four values of a row of a small matrix product, one lane each, summed over k < inner:
  ;; out[0..3] ← Σ_k a[k·aCol]·b[k·bStride + 0..3].
  (func $block1x4 (param $out i32) (param $a i32) (param $aCol i32) (param $b i32) (param $bStride i32) (param $inner i32)
    (local $k i32) (local $acc v128)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $k) (local.get $inner)))
      (local.set $acc (f32x4.add (local.get $acc) (f32x4.mul (v128.load32_splat (local.get $a)) (v128.load (local.get $b)))))
      (local.set $a (i32.add (local.get $a) (local.get $aCol)))
      (local.set $b (i32.add (local.get $b) (local.get $bStride)))
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (br $next)))
    (v128.store (local.get $out) (local.get $acc)))

  ;; Sixteen values of two rows of a small matrix product, held in eight registers while k runs: rows a and
  ;; a + aRow of A, each value broadcast to four lanes, times sixteen values of row k of B (four loads shared by
  ;; both rows): 32 products per step for 6 loads.
  (func $block2x16 (param $out i32) (param $outStride i32) (param $a i32) (param $aRow i32) (param $aCol i32)
    (param $b i32) (param $bStride i32) (param $inner i32)
    (local $k i32) (local $w0 v128) (local $w1 v128) (local $b0 v128) (local $b1 v128) (local $b2 v128) (local $b3 v128)
    (local $c00 v128) (local $c01 v128) (local $c02 v128) (local $c03 v128)
    (local $c10 v128) (local $c11 v128) (local $c12 v128) (local $c13 v128)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $k) (local.get $inner)))
      (local.set $w0 (v128.load32_splat (local.get $a)))
      (local.set $w1 (v128.load32_splat (i32.add (local.get $a) (local.get $aRow))))
      (local.set $b0 (v128.load (local.get $b)))
      (local.set $b1 (v128.load offset=16 (local.get $b)))
      (local.set $b2 (v128.load offset=32 (local.get $b)))
      (local.set $b3 (v128.load offset=48 (local.get $b)))
      (local.set $c00 (f32x4.add (local.get $c00) (f32x4.mul (local.get $w0) (local.get $b0))))
      (local.set $c01 (f32x4.add (local.get $c01) (f32x4.mul (local.get $w0) (local.get $b1))))
      (local.set $c02 (f32x4.add (local.get $c02) (f32x4.mul (local.get $w0) (local.get $b2))))
      (local.set $c03 (f32x4.add (local.get $c03) (f32x4.mul (local.get $w0) (local.get $b3))))
      (local.set $c10 (f32x4.add (local.get $c10) (f32x4.mul (local.get $w1) (local.get $b0))))
      (local.set $c11 (f32x4.add (local.get $c11) (f32x4.mul (local.get $w1) (local.get $b1))))
      (local.set $c12 (f32x4.add (local.get $c12) (f32x4.mul (local.get $w1) (local.get $b2))))
      (local.set $c13 (f32x4.add (local.get $c13) (f32x4.mul (local.get $w1) (local.get $b3))))
      (local.set $a (i32.add (local.get $a) (local.get $aCol)))
      (local.set $b (i32.add (local.get $b) (local.get $bStride)))
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (br $next)))
    (v128.store (local.get $out) (local.get $c00))
    (v128.store offset=16 (local.get $out) (local.get $c01))
    (v128.store offset=32 (local.get $out) (local.get $c02))
    (v128.store offset=48 (local.get $out) (local.get $c03))
    (local.set $out (i32.add (local.get $out) (local.get $outStride)))
    (v128.store (local.get $out) (local.get $c10))
    (v128.store offset=16 (local.get $out) (local.get $c11))
    (v128.store offset=32 (local.get $out) (local.get $c12))
    (v128.store offset=48 (local.get $out) (local.get $c13)))

  ;; A small matrix product, written over out: out[i][·] ← Σ_k a(i, k)·b[k][·] for i < rows and k < inner, over
  ;; `cols` bytes of each row (a multiple of 16). a(i, k) lies at a + i·aRow + k·aCol, so Aᵀ is the same call with
  ;; aRow and aCol swapped; rows of b lie bStride bytes apart, rows of out outStride. Rows go two at a time and
  ;; columns sixteen at a time where they can, then one row or four columns.
  (func $mm (param $out i32) (param $outStride i32) (param $a i32) (param $aRow i32) (param $aCol i32)
    (param $b i32) (param $bStride i32) (param $rows i32) (param $inner i32) (param $cols i32)
    (local $i i32) (local $c i32) (local $ai i32) (local $oi i32)
    (block $rowsDone (loop $nextRows
      (br_if $rowsDone (i32.ge_u (local.get $i) (local.get $rows)))
      (local.set $ai (i32.add (local.get $a) (i32.mul (local.get $i) (local.get $aRow))))
      (local.set $oi (i32.add (local.get $out) (i32.mul (local.get $i) (local.get $outStride))))
      (local.set $c (i32.const 0))
      (if (i32.le_u (i32.add (local.get $i) (i32.const 2)) (local.get $rows))
        (then
          ;; a pair of rows
          (block $wideDone (loop $wide
            (br_if $wideDone (i32.gt_u (i32.add (local.get $c) (i32.const 64)) (local.get $cols)))
            (call $block2x16 (i32.add (local.get $oi) (local.get $c)) (local.get $outStride) (local.get $ai) (local.get $aRow)
              (local.get $aCol) (i32.add (local.get $b) (local.get $c)) (local.get $bStride) (local.get $inner))
            (local.set $c (i32.add (local.get $c) (i32.const 64)))
            (br $wide)))
          (block $narrowDone (loop $narrow
            (br_if $narrowDone (i32.ge_u (local.get $c) (local.get $cols)))
            (call $block1x4 (i32.add (local.get $oi) (local.get $c)) (local.get $ai) (local.get $aCol)
              (i32.add (local.get $b) (local.get $c)) (local.get $bStride) (local.get $inner))
            (call $block1x4 (i32.add (i32.add (local.get $oi) (local.get $outStride)) (local.get $c))
              (i32.add (local.get $ai) (local.get $aRow)) (local.get $aCol)
              (i32.add (local.get $b) (local.get $c)) (local.get $bStride) (local.get $inner))
            (local.set $c (i32.add (local.get $c) (i32.const 16)))
            (br $narrow)))
          (local.set $i (i32.add (local.get $i) (i32.const 2))))
        (else
          ;; the last row, when rows is odd
          (block $lastDone (loop $last
            (br_if $lastDone (i32.ge_u (local.get $c) (local.get $cols)))
            (call $block1x4 (i32.add (local.get $oi) (local.get $c)) (local.get $ai) (local.get $aCol)
              (i32.add (local.get $b) (local.get $c)) (local.get $bStride) (local.get $inner))
            (local.set $c (i32.add (local.get $c) (i32.const 16)))
            (br $last)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))))
      (br $nextRows))))

  ;; dst[c][r] ← src[r][c] for r < rows, c < cols (values; rows of src lie srcRow bytes apart, of dst dstRow).
  (func $transpose (param $dst i32) (param $dstRow i32) (param $src i32) (param $srcRow i32) (param $rows i32)
    (param $cols i32)
    (local $r i32) (local $c i32) (local $from i32) (local $to i32)
    (block $rowsDone (loop $nextRow
      (br_if $rowsDone (i32.ge_u (local.get $r) (local.get $rows)))
      (local.set $from (i32.add (local.get $src) (i32.mul (local.get $r) (local.get $srcRow))))
      (local.set $to (i32.add (local.get $dst) (i32.shl (local.get $r) (i32.const 2))))
      (local.set $c (i32.const 0))
      (block $colsDone (loop $nextCol
        (br_if $colsDone (i32.ge_u (local.get $c) (local.get $cols)))
        (f32.store (local.get $to) (f32.load (local.get $from)))
        (local.set $from (i32.add (local.get $from) (i32.const 4)))
        (local.set $to (i32.add (local.get $to) (local.get $dstRow)))
        (local.set $c (i32.add (local.get $c) (i32.const 1)))
        (br $nextCol)))
      (local.set $r (i32.add (local.get $r) (i32.const 1)))
      (br $nextRow))))

  ;; The largest of the four lanes of $v.
  (func $max4 (param $v v128) (result f32)
    (f32.max
      (f32.max (f32x4.extract_lane 0 (local.get $v)) (f32x4.extract_lane 1 (local.get $v)))
      (f32.max (f32x4.extract_lane 2 (local.get $v)) (f32x4.extract_lane 3 (local.get $v)))))

  ;; Byte offset of the first value of head h of sequence b in a [batch, time, heads·size] tensor.
  (func $headAt (param $b i32) (param $h i32) (param $time i32) (param $stride i32) (param $bytes i32) (result i32)
    (i32.add (i32.mul (i32.mul (local.get $b) (local.get $time)) (local.get $stride)) (i32.mul (local.get $h) (local.get $bytes))))

  ;; Bytes of a row of `time` values padded to a multiple of four: the rows of the scratch matrices.
  (func $paddedRow (param $time i32) (result i32)
    (i32.shl (i32.and (i32.add (local.get $time) (i32.const 3)) (i32.const -4)) (i32.const 2)))

  ;; Multi-head attention for q, k, v [batch, time, heads·size] (size a multiple of four) with an additive mask
  ;; [time, time]: per sequence and head, P = softmax(q·kᵀ·scale + mask) into p [batch, heads, time, time] and
  ;; out = P·v into the head's columns of out [batch, time, heads·size]. Rows of a head lie `width` values apart.
  ;; scratch holds (size + 2·time)·t values, t = time rounded up to a multiple of four: kᵀ (size × t, the head's
  ;; keys as columns, so that a row of scores is a row of a product), the scores (time × t) and the mask (time ×
  ;; t, −∞ in the padding, which makes the padded scores vanish in the softmax).
  (func (export "attention")
    (param $q i32) (param $k i32) (param $v i32) (param $mask i32) (param $out i32) (param $p i32) (param $scratch i32)
    (param $batch i32) (param $time i32) (param $width i32) (param $heads i32) (param $scale f32)
    (local $b i32) (local $h i32) (local $i i32) (local $j i32) (local $c i32) (local $stride i32) (local $bytes i32)
    (local $padded i32) (local $full i32) (local $kt i32) (local $s i32) (local $m i32) (local $head i32) (local $ph i32)
    (local $row i32) (local $mrow i32) (local $prow i32) (local $x v128) (local $top v128) (local $max v128)
    (local $sum v128) (local $inv v128)
    (local.set $stride (i32.shl (local.get $width) (i32.const 2)))
    (local.set $bytes (i32.shl (i32.div_u (local.get $width) (local.get $heads)) (i32.const 2)))
    (local.set $padded (call $paddedRow (local.get $time)))
    (local.set $full (i32.shl (i32.and (local.get $time) (i32.const -4)) (i32.const 2)))
    (local.set $kt (local.get $scratch))
    (local.set $s (i32.add (local.get $kt) (i32.mul (i32.shr_u (local.get $bytes) (i32.const 2)) (local.get $padded))))
    (local.set $m (i32.add (local.get $s) (i32.mul (local.get $time) (local.get $padded))))
    ;; kᵀ's padding columns stay 0; the mask padded with −∞
    (memory.fill (local.get $kt) (i32.const 0) (i32.sub (local.get $s) (local.get $kt)))
    (local.set $i (i32.const 0))
    (block $maskDone (loop $nextMaskRow
      (br_if $maskDone (i32.ge_u (local.get $i) (local.get $time)))
      (local.set $j (i32.const 0))
      (block $maskRowDone (loop $nextMaskValue
        (br_if $maskRowDone (i32.ge_u (i32.shl (local.get $j) (i32.const 2)) (local.get $padded)))
        (f32.store (i32.add (i32.add (local.get $m) (i32.mul (local.get $i) (local.get $padded))) (i32.shl (local.get $j) (i32.const 2)))
          (select (f32.load (i32.add (local.get $mask) (i32.shl (i32.add (i32.mul (local.get $i) (local.get $time)) (local.get $j)) (i32.const 2))))
            (f32.const -inf) (i32.lt_u (local.get $j) (local.get $time))))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $nextMaskValue)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $nextMaskRow)))
    (block $batchDone (loop $nextBatch
      (br_if $batchDone (i32.ge_u (local.get $b) (local.get $batch)))
      (local.set $h (i32.const 0))
      (block $headsDone (loop $nextHead
        (br_if $headsDone (i32.ge_u (local.get $h) (local.get $heads)))
        (local.set $head (call $headAt (local.get $b) (local.get $h) (local.get $time) (local.get $stride) (local.get $bytes)))
        (local.set $ph (i32.add (local.get $p) (i32.shl (i32.mul (i32.mul
          (i32.add (i32.mul (local.get $b) (local.get $heads)) (local.get $h)) (local.get $time)) (local.get $time)) (i32.const 2))))
        ;; scores S = q·kᵀ, then per row: ·scale + mask, softmax
        (call $transpose (local.get $kt) (local.get $padded) (i32.add (local.get $k) (local.get $head)) (local.get $stride)
          (local.get $time) (i32.shr_u (local.get $bytes) (i32.const 2)))
        (call $mm (local.get $s) (local.get $padded) (i32.add (local.get $q) (local.get $head)) (local.get $stride) (i32.const 4)
          (local.get $kt) (local.get $padded) (local.get $time) (i32.shr_u (local.get $bytes) (i32.const 2)) (local.get $padded))
        (local.set $i (i32.const 0))
        (block $rowsDone (loop $nextRow
          (br_if $rowsDone (i32.ge_u (local.get $i) (local.get $time)))
          (local.set $row (i32.add (local.get $s) (i32.mul (local.get $i) (local.get $padded))))
          (local.set $mrow (i32.add (local.get $m) (i32.mul (local.get $i) (local.get $padded))))
          (local.set $top (f32x4.splat (f32.const -inf)))
          (local.set $c (i32.const 0))
          (block $scaleDone (loop $nextScale
            (br_if $scaleDone (i32.ge_u (local.get $c) (local.get $padded)))
            (local.set $x (f32x4.add (f32x4.mul (v128.load (i32.add (local.get $row) (local.get $c))) (f32x4.splat (local.get $scale)))
              (v128.load (i32.add (local.get $mrow) (local.get $c)))))
            (v128.store (i32.add (local.get $row) (local.get $c)) (local.get $x))
            (local.set $top (f32x4.max (local.get $top) (local.get $x)))
            (local.set $c (i32.add (local.get $c) (i32.const 16)))
            (br $nextScale)))
          (local.set $max (f32x4.splat (call $max4 (local.get $top))))
          (local.set $sum (global.get $ZERO))
          (local.set $c (i32.const 0))
          (block $expDone (loop $nextExp
            (br_if $expDone (i32.ge_u (local.get $c) (local.get $padded)))
            (local.set $x (call $exp (f32x4.sub (v128.load (i32.add (local.get $row) (local.get $c))) (local.get $max))))
            (v128.store (i32.add (local.get $row) (local.get $c)) (local.get $x))
            (local.set $sum (f32x4.add (local.get $sum) (local.get $x)))
            (local.set $c (i32.add (local.get $c) (i32.const 16)))
            (br $nextExp)))
          (local.set $inv (f32x4.splat (f32.div (f32.const 1) (call $sum4 (local.get $sum)))))
          ;; normalised, in the scratch row and (without the padding) in p
          (local.set $prow (i32.add (local.get $ph) (i32.shl (i32.mul (local.get $i) (local.get $time)) (i32.const 2))))
          (local.set $c (i32.const 0))
          (block $normDone (loop $nextNorm
            (br_if $normDone (i32.ge_u (local.get $c) (local.get $padded)))
            (local.set $x (f32x4.mul (v128.load (i32.add (local.get $row) (local.get $c))) (local.get $inv)))
            (v128.store (i32.add (local.get $row) (local.get $c)) (local.get $x))
            (if (i32.lt_u (local.get $c) (local.get $full))
              (then (v128.store (i32.add (local.get $prow) (local.get $c)) (local.get $x))))
            (local.set $c (i32.add (local.get $c) (i32.const 16)))
            (br $nextNorm)))
          (local.set $c (local.get $full))
          (block $tailDone (loop $nextTail
            (br_if $tailDone (i32.ge_u (local.get $c) (i32.shl (local.get $time) (i32.const 2))))
            (f32.store (i32.add (local.get $prow) (local.get $c)) (f32.load (i32.add (local.get $row) (local.get $c))))
            (local.set $c (i32.add (local.get $c) (i32.const 4)))
            (br $nextTail)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $nextRow)))
        ;; out = P·v
        (call $mm (i32.add (local.get $out) (local.get $head)) (local.get $stride) (local.get $s) (local.get $padded) (i32.const 4)
          (i32.add (local.get $v) (local.get $head)) (local.get $stride) (local.get $time) (local.get $time) (local.get $bytes))
        (local.set $h (i32.add (local.get $h) (i32.const 1)))
        (br $nextHead)))
      (local.set $b (i32.add (local.get $b) (i32.const 1)))
      (br $nextBatch))))

  ;; The gradients of attention from dy [batch, time, heads·size]: dv = Pᵀ·dy and, when $both,
  ;; dS = P ⊙ (dy·vᵀ − rowsum(P ⊙ dy·vᵀ))·scale, dq = dS·k, dk = dSᵀ·q. scratch holds (size + time)·t values
  ;; (t as in attention): vᵀ and dS.
  (func (export "attention_grad")
    (param $dy i32) (param $q i32) (param $k i32) (param $v i32) (param $p i32)
    (param $dq i32) (param $dk i32) (param $dv i32) (param $scratch i32)
    (param $batch i32) (param $time i32) (param $width i32) (param $heads i32) (param $scale f32) (param $both i32)
    (local $b i32) (local $h i32) (local $i i32) (local $c i32) (local $stride i32) (local $bytes i32) (local $padded i32)
    (local $full i32) (local $end i32) (local $vt i32) (local $ds i32) (local $head i32) (local $ph i32) (local $prow i32)
    (local $row i32) (local $acc v128) (local $dot f32) (local $dots v128)
    (local.set $stride (i32.shl (local.get $width) (i32.const 2)))
    (local.set $bytes (i32.shl (i32.div_u (local.get $width) (local.get $heads)) (i32.const 2)))
    (local.set $padded (call $paddedRow (local.get $time)))
    (local.set $full (i32.shl (i32.and (local.get $time) (i32.const -4)) (i32.const 2)))
    (local.set $end (i32.shl (local.get $time) (i32.const 2)))
    (local.set $vt (local.get $scratch))
    (local.set $ds (i32.add (local.get $vt) (i32.mul (i32.shr_u (local.get $bytes) (i32.const 2)) (local.get $padded))))
    (memory.fill (local.get $vt) (i32.const 0) (i32.sub (local.get $ds) (local.get $vt)))
    (block $batchDone (loop $nextBatch
      (br_if $batchDone (i32.ge_u (local.get $b) (local.get $batch)))
      (local.set $h (i32.const 0))
      (block $headsDone (loop $nextHead
        (br_if $headsDone (i32.ge_u (local.get $h) (local.get $heads)))
        (local.set $head (call $headAt (local.get $b) (local.get $h) (local.get $time) (local.get $stride) (local.get $bytes)))
        (local.set $ph (i32.add (local.get $p) (i32.shl (i32.mul (i32.mul
          (i32.add (i32.mul (local.get $b) (local.get $heads)) (local.get $h)) (local.get $time)) (local.get $time)) (i32.const 2))))
        ;; dv = Pᵀ·dy
        (call $mm (i32.add (local.get $dv) (local.get $head)) (local.get $stride) (local.get $ph) (i32.const 4) (local.get $end)
          (i32.add (local.get $dy) (local.get $head)) (local.get $stride) (local.get $time) (local.get $time) (local.get $bytes))
        (if (local.get $both)
          (then
            ;; dP = dy·vᵀ, then dS in place, row by row
            (call $transpose (local.get $vt) (local.get $padded) (i32.add (local.get $v) (local.get $head)) (local.get $stride)
              (local.get $time) (i32.shr_u (local.get $bytes) (i32.const 2)))
            (call $mm (local.get $ds) (local.get $padded) (i32.add (local.get $dy) (local.get $head)) (local.get $stride) (i32.const 4)
              (local.get $vt) (local.get $padded) (local.get $time) (i32.shr_u (local.get $bytes) (i32.const 2)) (local.get $padded))
            (local.set $i (i32.const 0))
            (block $rowsDone (loop $nextRow
              (br_if $rowsDone (i32.ge_u (local.get $i) (local.get $time)))
              (local.set $row (i32.add (local.get $ds) (i32.mul (local.get $i) (local.get $padded))))
              (local.set $prow (i32.add (local.get $ph) (i32.mul (local.get $i) (local.get $end))))
              ;; rowsum(P ⊙ dP): four at a time, then the last time mod 4 one by one
              (local.set $acc (global.get $ZERO))
              (local.set $c (i32.const 0))
              (block $sumDone (loop $nextSum
                (br_if $sumDone (i32.ge_u (local.get $c) (local.get $full)))
                (local.set $acc (f32x4.add (local.get $acc) (f32x4.mul
                  (v128.load (i32.add (local.get $prow) (local.get $c))) (v128.load (i32.add (local.get $row) (local.get $c))))))
                (local.set $c (i32.add (local.get $c) (i32.const 16)))
                (br $nextSum)))
              (local.set $dot (call $sum4 (local.get $acc)))
              (block $sumTailDone (loop $nextSumTail
                (br_if $sumTailDone (i32.ge_u (local.get $c) (local.get $end)))
                (local.set $dot (f32.add (local.get $dot) (f32.mul
                  (f32.load (i32.add (local.get $prow) (local.get $c))) (f32.load (i32.add (local.get $row) (local.get $c))))))
                (local.set $c (i32.add (local.get $c) (i32.const 4)))
                (br $nextSumTail)))
              ;; dS = P ⊙ (dP − rowsum)·scale
              (local.set $dots (f32x4.splat (local.get $dot)))
              (local.set $c (i32.const 0))
              (block $dsDone (loop $nextDs
                (br_if $dsDone (i32.ge_u (local.get $c) (local.get $full)))
                (v128.store (i32.add (local.get $row) (local.get $c)) (f32x4.mul (f32x4.mul
                  (v128.load (i32.add (local.get $prow) (local.get $c)))
                  (f32x4.sub (v128.load (i32.add (local.get $row) (local.get $c))) (local.get $dots))) (f32x4.splat (local.get $scale))))
                (local.set $c (i32.add (local.get $c) (i32.const 16)))
                (br $nextDs)))
              (block $dsTailDone (loop $nextDsTail
                (br_if $dsTailDone (i32.ge_u (local.get $c) (local.get $end)))
                (f32.store (i32.add (local.get $row) (local.get $c)) (f32.mul (f32.mul
                  (f32.load (i32.add (local.get $prow) (local.get $c)))
                  (f32.sub (f32.load (i32.add (local.get $row) (local.get $c))) (local.get $dot))) (local.get $scale)))
                (local.set $c (i32.add (local.get $c) (i32.const 4)))
                (br $nextDsTail)))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br $nextRow)))
            ;; dq = dS·k, dk = dSᵀ·q
            (call $mm (i32.add (local.get $dq) (local.get $head)) (local.get $stride) (local.get $ds) (local.get $padded) (i32.const 4)
              (i32.add (local.get $k) (local.get $head)) (local.get $stride) (local.get $time) (local.get $time) (local.get $bytes))
            (call $mm (i32.add (local.get $dk) (local.get $head)) (local.get $stride) (local.get $ds) (i32.const 4) (local.get $padded)
              (i32.add (local.get $q) (local.get $head)) (local.get $stride) (local.get $time) (local.get $time) (local.get $bytes))))
        (local.set $h (i32.add (local.get $h) (i32.const 1)))
        (br $nextHead)))
      (local.set $b (i32.add (local.get $b) (i32.const 1)))
      (br $nextBatch))))

  ;; Per row r < rows of x [rows, n] (n ≥ 4 values): the largest value into maxes[r], e = e^(x − max) into the row
  ;; of out (when $store), and the sum of the row's e into sums[r]: the softmax's pieces, which cross-entropy
  ;; completes (fused_kernels.ts). When n is not a multiple of four, the last group of four overlaps the one before it;
  ;; the lanes already counted are masked out of the sum.
  (func (export "softmax_rows") (param $x i32) (param $out i32) (param $maxes i32) (param $sums i32) (param $rows i32)
    (param $n i32) (param $store i32)
    (local $r i32) (local $c i32) (local $bytes i32) (local $full i32) (local $row i32) (local $top v128) (local $max v128)
    (local $e v128) (local $sum v128) (local $fresh v128)
    (local.set $bytes (i32.shl (local.get $n) (i32.const 2)))
    (local.set $full (i32.and (local.get $bytes) (i32.const -16)))
    ;; the lanes of the overlapping last group not counted before it: lane ≥ 4 − n mod 4
    (local.set $fresh (i32x4.ge_s (global.get $LANES)
      (i32x4.splat (i32.sub (i32.const 4) (i32.and (local.get $n) (i32.const 3))))))
    (block $rowsDone (loop $nextRow
      (br_if $rowsDone (i32.ge_u (local.get $r) (local.get $rows)))
      (local.set $row (i32.mul (local.get $r) (local.get $bytes)))
      ;; the largest value (the overlapping group changes nothing for a maximum)
      (local.set $top (v128.load (i32.add (local.get $x) (i32.add (local.get $row) (i32.sub (local.get $bytes) (i32.const 16))))))
      (local.set $c (i32.const 0))
      (block $maxDone (loop $nextMax
        (br_if $maxDone (i32.ge_u (local.get $c) (local.get $full)))
        (local.set $top (f32x4.max (local.get $top) (v128.load (i32.add (local.get $x) (i32.add (local.get $row) (local.get $c))))))
        (local.set $c (i32.add (local.get $c) (i32.const 16)))
        (br $nextMax)))
      (local.set $max (f32x4.splat (call $max4 (local.get $top))))
      ;; e and its sum
      (local.set $sum (global.get $ZERO))
      (local.set $c (i32.const 0))
      (block $expDone (loop $nextExp
        (br_if $expDone (i32.ge_u (local.get $c) (local.get $full)))
        (local.set $e (call $exp (f32x4.sub (v128.load (i32.add (local.get $x) (i32.add (local.get $row) (local.get $c)))) (local.get $max))))
        (if (local.get $store) (then (v128.store (i32.add (local.get $out) (i32.add (local.get $row) (local.get $c))) (local.get $e))))
        (local.set $sum (f32x4.add (local.get $sum) (local.get $e)))
        (local.set $c (i32.add (local.get $c) (i32.const 16)))
        (br $nextExp)))
      (if (i32.ne (local.get $full) (local.get $bytes))
        (then
          (local.set $c (i32.sub (local.get $bytes) (i32.const 16)))
          (local.set $e (call $exp (f32x4.sub (v128.load (i32.add (local.get $x) (i32.add (local.get $row) (local.get $c)))) (local.get $max))))
          (if (local.get $store) (then (v128.store (i32.add (local.get $out) (i32.add (local.get $row) (local.get $c))) (local.get $e))))
          (local.set $sum (f32x4.add (local.get $sum) (v128.and (local.get $e) (local.get $fresh))))))
      (f32.store (i32.add (local.get $maxes) (i32.shl (local.get $r) (i32.const 2))) (f32x4.extract_lane 0 (local.get $max)))
      (f32.store (i32.add (local.get $sums) (i32.shl (local.get $r) (i32.const 2))) (call $sum4 (local.get $sum)))
      (local.set $r (i32.add (local.get $r) (i32.const 1)))
      (br $nextRow))))

  ;; x[i] ← x[i]·factor for i < n, four at a time, the last n mod 4 one by one.
  (func (export "scale") (param $x i32) (param $n i32) (param $factor f32)
    (local $i i32) (local $bytes i32) (local $full i32) (local $f v128)
    (local.set $bytes (i32.shl (local.get $n) (i32.const 2)))
    (local.set $full (i32.and (local.get $bytes) (i32.const -16)))
    (local.set $f (f32x4.splat (local.get $factor)))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $full)))
      (v128.store (i32.add (local.get $x) (local.get $i)) (f32x4.mul (v128.load (i32.add (local.get $x) (local.get $i))) (local.get $f)))
      (local.set $i (i32.add (local.get $i) (i32.const 16)))
      (br $next)))
    (block $tailDone (loop $tail
      (br_if $tailDone (i32.ge_u (local.get $i) (local.get $bytes)))
      (f32.store (i32.add (local.get $x) (local.get $i)) (f32.mul (f32.load (i32.add (local.get $x) (local.get $i))) (local.get $factor)))
      (local.set $i (i32.add (local.get $i) (i32.const 4)))
      (br $tail))))

  ;; One Adam step for n values: m ← β₁·m + (1 − β₁)·g, v ← β₂·v + (1 − β₂)·g² (both in place), and
  ;; next ← p − α·m / (√v + ε), with the bias corrections folded into α and ε by the caller (optim.ts). 1 − β₁ and
  ;; 1 − β₂ come computed in float64 ($rest1, $rest2): in float32, 1 − 0.999 loses four digits.
  (func (export "adam")
    (param $p i32) (param $g i32) (param $m i32) (param $v i32) (param $next i32) (param $n i32)
    (param $beta1 f32) (param $rest1 f32) (param $beta2 f32) (param $rest2 f32) (param $alpha f32) (param $epsilon f32)
    (local $i i32) (local $vectors i32) (local $bytes i32)
    (local $gi v128) (local $mi v128) (local $vi v128)
    (local $g1 f32) (local $m1 f32) (local $v1 f32)
    (local.set $bytes (i32.shl (local.get $n) (i32.const 2)))
    (local.set $vectors (i32.and (local.get $bytes) (i32.const -16)))
    (block $done (loop $next4
      (br_if $done (i32.ge_u (local.get $i) (local.get $vectors)))
      (local.set $gi (v128.load (i32.add (local.get $g) (local.get $i))))
      (local.set $mi (f32x4.add (f32x4.mul (f32x4.splat (local.get $beta1)) (v128.load (i32.add (local.get $m) (local.get $i))))
        (f32x4.mul (f32x4.splat (local.get $rest1)) (local.get $gi))))
      (local.set $vi (f32x4.add (f32x4.mul (f32x4.splat (local.get $beta2)) (v128.load (i32.add (local.get $v) (local.get $i))))
        (f32x4.mul (f32x4.splat (local.get $rest2)) (f32x4.mul (local.get $gi) (local.get $gi)))))
      (v128.store (i32.add (local.get $m) (local.get $i)) (local.get $mi))
      (v128.store (i32.add (local.get $v) (local.get $i)) (local.get $vi))
      (v128.store (i32.add (local.get $next) (local.get $i))
        (f32x4.sub (v128.load (i32.add (local.get $p) (local.get $i)))
          (f32x4.div (f32x4.mul (f32x4.splat (local.get $alpha)) (local.get $mi))
            (f32x4.add (f32x4.sqrt (local.get $vi)) (f32x4.splat (local.get $epsilon))))))
      (local.set $i (i32.add (local.get $i) (i32.const 16)))
      (br $next4)))
    ;; the last n mod 4 values, one at a time, the same arithmetic
    (block $tailDone (loop $tail
      (br_if $tailDone (i32.ge_u (local.get $i) (local.get $bytes)))
      (local.set $g1 (f32.load (i32.add (local.get $g) (local.get $i))))
      (local.set $m1 (f32.add (f32.mul (local.get $beta1) (f32.load (i32.add (local.get $m) (local.get $i))))
        (f32.mul (local.get $rest1) (local.get $g1))))
      (local.set $v1 (f32.add (f32.mul (local.get $beta2) (f32.load (i32.add (local.get $v) (local.get $i))))
        (f32.mul (local.get $rest2) (f32.mul (local.get $g1) (local.get $g1)))))
      (f32.store (i32.add (local.get $m) (local.get $i)) (local.get $m1))
      (f32.store (i32.add (local.get $v) (local.get $i)) (local.get $v1))
      (f32.store (i32.add (local.get $next) (local.get $i))
        (f32.sub (f32.load (i32.add (local.get $p) (local.get $i)))
          (f32.div (f32.mul (local.get $alpha) (local.get $m1)) (f32.add (f32.sqrt (local.get $v1)) (local.get $epsilon)))))
      (local.set $i (i32.add (local.get $i) (i32.const 4)))
      (br $tail))))
)
