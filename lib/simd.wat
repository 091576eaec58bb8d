;; Vector (SIMD, four float32 lanes) loops for the fused kernels of fused.ts, run on the wasm backend's own memory:
;; the module imports TensorFlow.js's WebAssembly.Memory, so tensors are read and written where they lie. Every
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

  ;; e^y of one value y ≤ 0, by the four-lane function.
  (func $exp1 (param $y f32) (result f32)
    (f32x4.extract_lane 0 (call $exp (f32x4.splat (local.get $y)))))

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

  ;; row[j] ← e^(row[j] − max) for j < n, returning their sum: four at a time, the last n mod 4 one by one.
  (func $expRow (param $row i32) (param $n i32) (param $max f32) (result f32)
    (local $j i32) (local $bytes i32) (local $e v128) (local $acc v128) (local $sum f32) (local $one f32)
    (local.set $bytes (i32.shl (local.get $n) (i32.const 2)))
    (block $done
      (loop $next
        (br_if $done (i32.gt_u (i32.add (local.get $j) (i32.const 16)) (local.get $bytes)))
        (local.set $e (call $exp (f32x4.sub (v128.load (i32.add (local.get $row) (local.get $j))) (f32x4.splat (local.get $max)))))
        (v128.store (i32.add (local.get $row) (local.get $j)) (local.get $e))
        (local.set $acc (f32x4.add (local.get $acc) (local.get $e)))
        (local.set $j (i32.add (local.get $j) (i32.const 16)))
        (br $next)))
    (local.set $sum (call $sum4 (local.get $acc)))
    (block $tailDone
      (loop $tail
        (br_if $tailDone (i32.ge_u (local.get $j) (local.get $bytes)))
        (local.set $one (call $exp1 (f32.sub (f32.load (i32.add (local.get $row) (local.get $j))) (local.get $max))))
        (f32.store (i32.add (local.get $row) (local.get $j)) (local.get $one))
        (local.set $sum (f32.add (local.get $sum) (local.get $one)))
        (local.set $j (i32.add (local.get $j) (i32.const 4)))
        (br $tail)))
    (local.get $sum))

  ;; m[i][j] ← Σ_c a_i[c]·b_j[c] · scale for i, j < n, where a_i = a + i·stride and b_j = b + j·stride are rows of
  ;; `bytes / 4` values (a multiple of four) and m is n × n, row after row.
  (func $dots (param $m i32) (param $a i32) (param $b i32) (param $n i32) (param $stride i32) (param $bytes i32)
    (param $scale f32)
    (local $i i32) (local $j i32) (local $c i32) (local $ai i32) (local $bj i32) (local $acc v128)
    (block $iDone (loop $nextI
      (br_if $iDone (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $ai (i32.add (local.get $a) (i32.mul (local.get $i) (local.get $stride))))
      (local.set $j (i32.const 0))
      (block $jDone (loop $nextJ
        (br_if $jDone (i32.ge_u (local.get $j) (local.get $n)))
        (local.set $bj (i32.add (local.get $b) (i32.mul (local.get $j) (local.get $stride))))
        (local.set $acc (global.get $ZERO))
        (local.set $c (i32.const 0))
        (block $cDone (loop $nextC
          (br_if $cDone (i32.ge_u (local.get $c) (local.get $bytes)))
          (local.set $acc (f32x4.add (local.get $acc) (f32x4.mul
            (v128.load (i32.add (local.get $ai) (local.get $c))) (v128.load (i32.add (local.get $bj) (local.get $c))))))
          (local.set $c (i32.add (local.get $c) (i32.const 16)))
          (br $nextC)))
        (f32.store (i32.add (local.get $m) (i32.shl (i32.add (i32.mul (local.get $i) (local.get $n)) (local.get $j)) (i32.const 2)))
          (f32.mul (local.get $scale) (call $sum4 (local.get $acc))))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $nextJ)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $nextI))))

  ;; out_i ← Σ_j m[i][j]·v_j for i < n (or Σ_j m[j][i]·v_j when $transposed), where v_j = v + j·stride and
  ;; out_i = out + i·stride are rows of `bytes / 4` values (a multiple of four) and m is n × n: a small matrix
  ;; times a head's rows, one group of four columns at a time with its sum kept in a register.
  (func $combine (param $out i32) (param $m i32) (param $v i32) (param $n i32) (param $stride i32) (param $bytes i32)
    (param $transposed i32)
    (local $i i32) (local $j i32) (local $c i32) (local $acc v128) (local $weight i32) (local $step i32)
    ;; byte steps through m: along row i (j + 1), or down column i (j·n)
    (local.set $step (select (i32.shl (local.get $n) (i32.const 2)) (i32.const 4) (local.get $transposed)))
    (block $iDone (loop $nextI
      (br_if $iDone (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $c (i32.const 0))
      (block $cDone (loop $nextC
        (br_if $cDone (i32.ge_u (local.get $c) (local.get $bytes)))
        (local.set $acc (global.get $ZERO))
        (local.set $weight (i32.add (local.get $m)
          (select (i32.shl (local.get $i) (i32.const 2)) (i32.shl (i32.mul (local.get $i) (local.get $n)) (i32.const 2))
            (local.get $transposed))))
        (local.set $j (i32.const 0))
        (block $jDone (loop $nextJ
          (br_if $jDone (i32.ge_u (local.get $j) (local.get $n)))
          (local.set $acc (f32x4.add (local.get $acc) (f32x4.mul
            (f32x4.splat (f32.load (local.get $weight)))
            (v128.load (i32.add (local.get $v) (i32.add (i32.mul (local.get $j) (local.get $stride)) (local.get $c)))))))
          (local.set $weight (i32.add (local.get $weight) (local.get $step)))
          (local.set $j (i32.add (local.get $j) (i32.const 1)))
          (br $nextJ)))
        (v128.store (i32.add (local.get $out) (i32.add (i32.mul (local.get $i) (local.get $stride)) (local.get $c))) (local.get $acc))
        (local.set $c (i32.add (local.get $c) (i32.const 16)))
        (br $nextC)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $nextI))))

  ;; Byte offset of the first value of head h of sequence b in a [batch, time, heads·size] tensor.
  (func $headAt (param $b i32) (param $h i32) (param $time i32) (param $stride i32) (param $bytes i32) (result i32)
    (i32.add (i32.mul (i32.mul (local.get $b) (local.get $time)) (local.get $stride)) (i32.mul (local.get $h) (local.get $bytes))))

  ;; Multi-head attention for q, k, v [batch, time, heads·size] (size a multiple of four) with an additive mask
  ;; [time, time]: per sequence and head, P = softmax(q·kᵀ·scale + mask) into p [batch, heads, time, time] and
  ;; out = P·v into the head's columns of out [batch, time, heads·size]. Rows of a head lie `width` values apart.
  (func (export "attention")
    (param $q i32) (param $k i32) (param $v i32) (param $mask i32) (param $out i32) (param $p i32)
    (param $batch i32) (param $time i32) (param $width i32) (param $heads i32) (param $scale f32)
    (local $b i32) (local $h i32) (local $i i32) (local $j i32) (local $stride i32) (local $bytes i32)
    (local $head i32) (local $ph i32) (local $prow i32) (local $at i32) (local $s f32) (local $max f32) (local $inv f32)
    (local.set $stride (i32.shl (local.get $width) (i32.const 2)))
    (local.set $bytes (i32.shl (i32.div_u (local.get $width) (local.get $heads)) (i32.const 2)))
    (block $batchDone (loop $nextBatch
      (br_if $batchDone (i32.ge_u (local.get $b) (local.get $batch)))
      (local.set $h (i32.const 0))
      (block $headsDone (loop $nextHead
        (br_if $headsDone (i32.ge_u (local.get $h) (local.get $heads)))
        (local.set $head (call $headAt (local.get $b) (local.get $h) (local.get $time) (local.get $stride) (local.get $bytes)))
        (local.set $ph (i32.add (local.get $p) (i32.shl (i32.mul (i32.mul
          (i32.add (i32.mul (local.get $b) (local.get $heads)) (local.get $h)) (local.get $time)) (local.get $time)) (i32.const 2))))
        ;; scores S = q·kᵀ·scale, then per row: + mask, softmax
        (call $dots (local.get $ph) (i32.add (local.get $q) (local.get $head)) (i32.add (local.get $k) (local.get $head))
          (local.get $time) (local.get $stride) (local.get $bytes) (local.get $scale))
        (local.set $i (i32.const 0))
        (block $rowsDone (loop $nextRow
          (br_if $rowsDone (i32.ge_u (local.get $i) (local.get $time)))
          (local.set $prow (i32.add (local.get $ph) (i32.shl (i32.mul (local.get $i) (local.get $time)) (i32.const 2))))
          (local.set $max (f32.const -inf))
          (local.set $j (i32.const 0))
          (block $maskDone (loop $nextMask
            (br_if $maskDone (i32.ge_u (local.get $j) (local.get $time)))
            (local.set $at (i32.shl (local.get $j) (i32.const 2)))
            (local.set $s (f32.add (f32.load (i32.add (local.get $prow) (local.get $at)))
              (f32.load (i32.add (local.get $mask) (i32.add (i32.shl (i32.mul (local.get $i) (local.get $time)) (i32.const 2)) (local.get $at))))))
            (f32.store (i32.add (local.get $prow) (local.get $at)) (local.get $s))
            (local.set $max (f32.max (local.get $max) (local.get $s)))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $nextMask)))
          (local.set $inv (f32.div (f32.const 1) (call $expRow (local.get $prow) (local.get $time) (local.get $max))))
          (local.set $j (i32.const 0))
          (block $normDone (loop $nextNorm
            (br_if $normDone (i32.ge_u (local.get $j) (local.get $time)))
            (local.set $at (i32.add (local.get $prow) (i32.shl (local.get $j) (i32.const 2))))
            (f32.store (local.get $at) (f32.mul (f32.load (local.get $at)) (local.get $inv)))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $nextNorm)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $nextRow)))
        ;; out = P·v
        (call $combine (i32.add (local.get $out) (local.get $head)) (local.get $ph) (i32.add (local.get $v) (local.get $head))
          (local.get $time) (local.get $stride) (local.get $bytes) (i32.const 0))
        (local.set $h (i32.add (local.get $h) (i32.const 1)))
        (br $nextHead)))
      (local.set $b (i32.add (local.get $b) (i32.const 1)))
      (br $nextBatch))))

  ;; The gradients of attention from dy [batch, time, heads·size]: dv = Pᵀ·dy and, when $both,
  ;; dS = P ⊙ (dy·vᵀ − rowsum(P ⊙ dy·vᵀ))·scale (in $scratch, time × time values), dq = dS·k, dk = dSᵀ·q.
  (func (export "attention_grad")
    (param $dy i32) (param $q i32) (param $k i32) (param $v i32) (param $p i32)
    (param $dq i32) (param $dk i32) (param $dv i32) (param $scratch i32)
    (param $batch i32) (param $time i32) (param $width i32) (param $heads i32) (param $scale f32) (param $both i32)
    (local $b i32) (local $h i32) (local $i i32) (local $j i32) (local $stride i32) (local $bytes i32)
    (local $head i32) (local $ph i32) (local $at i32) (local $row i32) (local $dot f32)
    (local.set $stride (i32.shl (local.get $width) (i32.const 2)))
    (local.set $bytes (i32.shl (i32.div_u (local.get $width) (local.get $heads)) (i32.const 2)))
    (block $batchDone (loop $nextBatch
      (br_if $batchDone (i32.ge_u (local.get $b) (local.get $batch)))
      (local.set $h (i32.const 0))
      (block $headsDone (loop $nextHead
        (br_if $headsDone (i32.ge_u (local.get $h) (local.get $heads)))
        (local.set $head (call $headAt (local.get $b) (local.get $h) (local.get $time) (local.get $stride) (local.get $bytes)))
        (local.set $ph (i32.add (local.get $p) (i32.shl (i32.mul (i32.mul
          (i32.add (i32.mul (local.get $b) (local.get $heads)) (local.get $h)) (local.get $time)) (local.get $time)) (i32.const 2))))
        ;; dv = Pᵀ·dy
        (call $combine (i32.add (local.get $dv) (local.get $head)) (local.get $ph) (i32.add (local.get $dy) (local.get $head))
          (local.get $time) (local.get $stride) (local.get $bytes) (i32.const 1))
        (if (local.get $both)
          (then
            ;; dP = dy·vᵀ into scratch, then dS in place, row by row
            (call $dots (local.get $scratch) (i32.add (local.get $dy) (local.get $head)) (i32.add (local.get $v) (local.get $head))
              (local.get $time) (local.get $stride) (local.get $bytes) (f32.const 1))
            (local.set $i (i32.const 0))
            (block $rowsDone (loop $nextRow
              (br_if $rowsDone (i32.ge_u (local.get $i) (local.get $time)))
              (local.set $row (i32.shl (i32.mul (local.get $i) (local.get $time)) (i32.const 2)))
              (local.set $dot (f32.const 0))
              (local.set $j (i32.const 0))
              (block $sumDone (loop $nextSum
                (br_if $sumDone (i32.ge_u (local.get $j) (local.get $time)))
                (local.set $at (i32.add (local.get $row) (i32.shl (local.get $j) (i32.const 2))))
                (local.set $dot (f32.add (local.get $dot) (f32.mul
                  (f32.load (i32.add (local.get $ph) (local.get $at))) (f32.load (i32.add (local.get $scratch) (local.get $at))))))
                (local.set $j (i32.add (local.get $j) (i32.const 1)))
                (br $nextSum)))
              (local.set $j (i32.const 0))
              (block $dsDone (loop $nextDs
                (br_if $dsDone (i32.ge_u (local.get $j) (local.get $time)))
                (local.set $at (i32.add (local.get $row) (i32.shl (local.get $j) (i32.const 2))))
                (f32.store (i32.add (local.get $scratch) (local.get $at)) (f32.mul (f32.mul
                  (f32.load (i32.add (local.get $ph) (local.get $at)))
                  (f32.sub (f32.load (i32.add (local.get $scratch) (local.get $at))) (local.get $dot))) (local.get $scale)))
                (local.set $j (i32.add (local.get $j) (i32.const 1)))
                (br $nextDs)))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br $nextRow)))
            ;; dq = dS·k, dk = dSᵀ·q
            (call $combine (i32.add (local.get $dq) (local.get $head)) (local.get $scratch) (i32.add (local.get $k) (local.get $head))
              (local.get $time) (local.get $stride) (local.get $bytes) (i32.const 0))
            (call $combine (i32.add (local.get $dk) (local.get $head)) (local.get $scratch) (i32.add (local.get $q) (local.get $head))
              (local.get $time) (local.get $stride) (local.get $bytes) (i32.const 1))))
        (local.set $h (i32.add (local.get $h) (i32.const 1)))
        (br $nextHead)))
      (local.set $b (i32.add (local.get $b) (i32.const 1)))
      (br $nextBatch))))

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
