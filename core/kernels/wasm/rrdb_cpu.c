// RRDBNet inference kernels for the CPU: WebAssembly SIMD128 with relaxed-SIMD FMA, built by
// core/kernels/wasm/build.ts into rrdb_cpu_wasm.ts. Driven by core/kernels/wasm_plan.ts, which
// lays out the buffers and the list of layers; several threads share the memory and each runs
// every layer on its own band of rows.
//
// Feature maps are NHWC with a one-pixel zero border ((H+2) x (W+2) pixels), so a 3x3 "same"
// convolution reads without bounds checks. A pixel's channels may sit inside a wider pixel
// (`cs`, the pixel stride in floats): the dense blocks' concatenations are channel slices of one
// buffer that the growth convolutions write into, never copies.
#include <wasm_simd128.h>

typedef float f32;
typedef int i32;

// Register blocking: MR output pixels of a row x 8 output channels, 2*MR accumulators. 6 leaves
// V8 (16 xmm registers on x64) room for the two weight vectors and the broadcast input; measured
// on a Zen 4 core: 4 px 42, 5 px 51, 6 px 54, 7 px 31 GFLOP/s (spills).
#define MR 6
#define NR 8

enum { OP_CONV = 0, OP_UPSAMPLE = 1, OP_WINOGRAD = 2 };

// One layer, as wasm_plan.ts writes it (all fields 4 bytes; pointers are byte offsets).
typedef struct {
  i32 op;
  const f32* in;  // the input's padded origin (pixel (-1, -1)), channel offset included
  i32 ics;        // input pixel stride (floats)
  i32 cin;
  i32 h, w;       // the input's interior size (conv: also the output's)
  const f32* weight;  // packed: [cout/8][3][3][cin][8], zero-padded past cout
  const f32* bias;    // cout rounded up to 8, zero-padded
  f32* out;       // padded origin, channel offset included
  i32 ocs;
  i32 cout;
  i32 lrelu;      // LeakyReLU 0.2 after the bias
  f32 s0;         // out = act(conv + bias) * s0 + r1 * s1 + r2 * s2
  const f32* r1;  // padded origins with the output's geometry; null: absent
  i32 r1cs;
  f32 s1;
  const f32* r2;
  i32 r2cs;
  f32 s2;
  f32* scratch;   // OP_WINOGRAD: per-thread work space, `scratch_floats` apart
  i32 scratch_floats;
} Layer;

static inline __attribute__((always_inline)) void store_lanes(f32* p, v128_t v, i32 n) {
  if (n > 0) p[0] = wasm_f32x4_extract_lane(v, 0);
  if (n > 1) p[1] = wasm_f32x4_extract_lane(v, 1);
  if (n > 2) p[2] = wasm_f32x4_extract_lane(v, 2);
  if (n > 3) p[3] = wasm_f32x4_extract_lane(v, 3);
}

static inline __attribute__((always_inline)) v128_t epilogue(const Layer* L, v128_t v, i32 pix, i32 c) {
  if (L->lrelu) v = wasm_f32x4_max(v, wasm_f32x4_mul(v, wasm_f32x4_splat(0.2f)));
  v = wasm_f32x4_mul(v, wasm_f32x4_splat(L->s0));
  // the residuals: loaded lane-wise when fewer than 4 channels remain (no reads past a pixel)
  if (L->r1) {
    const f32* r = L->r1 + pix * L->r1cs + c;
    v128_t x = L->cout - c >= 4 ? wasm_v128_load(r)
                                : wasm_f32x4_make(r[0], L->cout - c > 1 ? r[1] : 0, L->cout - c > 2 ? r[2] : 0, 0);
    v = wasm_f32x4_relaxed_madd(x, wasm_f32x4_splat(L->s1), v);
  }
  if (L->r2) {
    const f32* r = L->r2 + pix * L->r2cs + c;
    v128_t x = L->cout - c >= 4 ? wasm_v128_load(r)
                                : wasm_f32x4_make(r[0], L->cout - c > 1 ? r[1] : 0, L->cout - c > 2 ? r[2] : 0, 0);
    v = wasm_f32x4_relaxed_madd(x, wasm_f32x4_splat(L->s2), v);
  }
  return v;
}

// Channels [c, c + 8) of padded pixel `pix` through the epilogue (those below cout only).
static inline __attribute__((always_inline)) void store_pixel(const Layer* L, i32 pix, i32 c, v128_t a0, v128_t a1) {
  f32* op = L->out + pix * L->ocs + c;
  const i32 left = L->cout - c;
  const v128_t v0 = epilogue(L, a0, pix, c);
  if (left >= 8) {
    wasm_v128_store(op, v0);
    wasm_v128_store(op + 4, epilogue(L, a1, pix, c + 4));
  } else if (left > 4) {
    wasm_v128_store(op, v0);
    store_lanes(op + 4, epilogue(L, a1, pix, c + 4), left - 4);
  } else {
    store_lanes(op, v0, left);
  }
}

// Channels [c, c + 4) of padded pixel `pix` through the epilogue (those below cout only).
static inline __attribute__((always_inline)) void store_quad(const Layer* L, i32 pix, i32 c, v128_t a) {
  f32* op = L->out + pix * L->ocs + c;
  const v128_t v = epilogue(L, a, pix, c);
  if (L->cout - c >= 4) wasm_v128_store(op, v);
  else store_lanes(op, v, L->cout - c);
}

// The register block both convolutions share: acc[p] += sum over k < n of in[p * stride + k] times
// the 8 weights at w[8k]; `m` (a constant after inlining) of the MR rows are live.
static inline __attribute__((always_inline)) void multiply_add(v128_t acc[MR][2], i32 m, const f32* in, i32 stride,
                                                               const f32* w, i32 n) {
  // a bumped pointer, not w + 8k: V8's code for the indexed form took 1.7 s instead of 1.15 s
  for (i32 k = 0; k < n; k++) {
    const v128_t w0 = wasm_v128_load(w), w1 = wasm_v128_load(w + 4);
    w += NR;
#pragma clang loop unroll(full)
    for (i32 p = 0; p < MR; p++) {
      if (p < m) {
        const v128_t v = wasm_v128_load32_splat(in + p * stride + k);
        acc[p][0] = wasm_f32x4_relaxed_madd(v, w0, acc[p][0]);
        acc[p][1] = wasm_f32x4_relaxed_madd(v, w1, acc[p][1]);
      }
    }
  }
}

// `m` (a constant after inlining) output pixels from (y, x) for output channels [8b, 8b + 8).
static inline __attribute__((always_inline)) void conv_tile(const Layer* L, i32 m, i32 y, i32 x, i32 b) {
  const i32 ics = L->ics, cin = L->cin, pw = L->w + 2;
  v128_t acc[MR][2];
  const v128_t b0 = wasm_v128_load(L->bias + NR * b), b1 = wasm_v128_load(L->bias + NR * b + 4);
#pragma clang loop unroll(full)
  for (i32 p = 0; p < MR; p++) {
    if (p < m) acc[p][0] = b0, acc[p][1] = b1;
  }
  const f32* wp = L->weight + b * 9 * cin * NR;
  for (i32 ky = 0; ky < 3; ky++) {
    for (i32 kx = 0; kx < 3; kx++, wp += cin * NR) {
      multiply_add(acc, m, L->in + ((y + ky) * pw + x + kx) * ics, ics, wp, cin);
    }
  }
  const i32 pix0 = (y + 1) * pw + x + 1;
#pragma clang loop unroll(full)
  for (i32 p = 0; p < MR; p++) {
    if (p < m) store_pixel(L, pix0 + p, NR * b, acc[p][0], acc[p][1]);
  }
}

static void conv_rows(const Layer* L, i32 y0, i32 y1) {
  const i32 blocks = (L->cout + NR - 1) / NR, w = L->w;
  for (i32 y = y0; y < y1; y++) {
    for (i32 b = 0; b < blocks; b++) {
      i32 x = 0;
      for (; x + MR <= w; x += MR) conv_tile(L, MR, y, x, b);
      switch (w - x) {
        case 5: conv_tile(L, 5, y, x, b); break;
        case 4: conv_tile(L, 4, y, x, b); break;
        case 3: conv_tile(L, 3, y, x, b); break;
        case 2: conv_tile(L, 2, y, x, b); break;
        case 1: conv_tile(L, 1, y, x, b); break;
      }
    }
  }
}

// Winograd F(4x4, 3x3) (Lavin & Gray 2016, points 0, ±1, ±2): a 4x4 output tile from a 6x6 input
// tile with 36 products per channel pair instead of 144. Per row of tiles: the input transform
// V = B'dB of every tile into scratch ([36][tiles][cin], positions padded apart); per MR tiles x 8
// output channels, the 36 products as the direct kernel's register-blocked loop over cin (U = GgG',
// packed by wasm_plan.ts as [36][cout/8][cin][8]) into scratch M; the output transform A'MA with
// bias and epilogue. The transforms pass through a small buffer T (columns, then rows) so that no
// more values are live than x64's 16 vector registers hold: the module must not spill to a stack,
// which its threads would share (build.ts refuses a module that does). Needs cin % 4 == 0. Sides
// that are no multiple of 4: the last tiles read up to four rows past the border (wasm_plan.ts
// gives every map spare zero rows; a nonzero there would not cancel exactly in the transform) and
// up to four columns into the next row, and store only what lies inside. Measured on one thread
// (64x64 forward): F(2x2, 3x3) 2.11 s, this 1.43 s, 1.30 s with constant tail widths, 1.12 s with
// V's positions padded apart; all give the same PSNR against PyTorch fp32 (to 0.01 dB) on Set5 and
// Set14. Tried and slower: positions as the outer loop (1.60 s), the cin loop unrolled by 4 (1.47 s).

#define F32(x) wasm_f32x4_splat(x)
#define ADD wasm_f32x4_add
#define SUB wasm_f32x4_sub
#define MUL wasm_f32x4_mul
#define MADD(a, b, c) wasm_f32x4_relaxed_madd(a, b, c)  // a * b + c

// B'x for 6 values at p[0], p[s], ..., p[5s] into q[0], q[t], ..., q[5t].
static inline __attribute__((always_inline)) void input_1d(const f32* p, i32 s, f32* q, i32 t) {
  const v128_t d0 = wasm_v128_load(p), d1 = wasm_v128_load(p + s), d2 = wasm_v128_load(p + 2 * s);
  const v128_t d3 = wasm_v128_load(p + 3 * s), d4 = wasm_v128_load(p + 4 * s), d5 = wasm_v128_load(p + 5 * s);
  const v128_t a = SUB(d4, d2), b = SUB(d3, d1);  // used by r1..r4
  wasm_v128_store(q, ADD(MADD(F32(4), d0, MUL(F32(-5), d2)), d4));
  wasm_v128_store(q + t, MADD(F32(-4), ADD(d1, d2), ADD(d3, d4)));
  wasm_v128_store(q + 2 * t, MADD(F32(4), SUB(d1, d2), SUB(d4, d3)));
  wasm_v128_store(q + 3 * t, MADD(F32(2), b, a));
  wasm_v128_store(q + 4 * t, MADD(F32(-2), b, a));
  wasm_v128_store(q + 5 * t, ADD(MADD(F32(4), d1, MUL(F32(-5), d3)), d5));
}

// A'x for 6 values at p[0], ..., p[5s]: 4 values.
static inline __attribute__((always_inline)) void output_1d(const f32* p, i32 s, v128_t* y) {
  const v128_t m0 = wasm_v128_load(p), m1 = wasm_v128_load(p + s), m2 = wasm_v128_load(p + 2 * s);
  const v128_t m3 = wasm_v128_load(p + 3 * s), m4 = wasm_v128_load(p + 4 * s), m5 = wasm_v128_load(p + 5 * s);
  const v128_t a = ADD(m1, m2), b = SUB(m1, m2), c = ADD(m3, m4), d = SUB(m3, m4);
  y[0] = ADD(ADD(m0, a), c);
  y[1] = MADD(F32(2), d, b);
  y[2] = MADD(F32(4), c, a);
  y[3] = ADD(MADD(F32(8), d, b), m5);
}

// Floats from one position's transformed tiles to the next's in V: padded by 64 bytes, as a
// multiple of 4 KiB (cin 64 or 128 with 16 tiles) put all 36 in one set of the 8-way L1 and made
// conv3 (cin 128) slower than conv4 (cin 160).
static inline i32 vstride(i32 tiles, i32 cin) {
  return tiles * cin + 16;
}

// Products of all 36 positions for `m` tiles from tx0, channels [8b, 8b + 8), into M ([36][MR][8]).
static inline __attribute__((always_inline)) void winograd_gemm(const Layer* L, i32 m, const f32* V, i32 tiles,
                                                                  i32 tx0, i32 b, f32* M) {
  const i32 cin = L->cin, blocks = (L->cout + NR - 1) / NR;
  for (i32 pos = 0; pos < 36; pos++) {
    v128_t acc[MR][2];
#pragma clang loop unroll(full)
    for (i32 p = 0; p < MR; p++) {
      if (p < m) acc[p][0] = acc[p][1] = wasm_f32x4_splat(0);
    }
    const f32* wp = L->weight + (pos * blocks + b) * cin * NR;
    multiply_add(acc, m, V + pos * vstride(tiles, cin) + tx0 * cin, cin, wp, cin);
#pragma clang loop unroll(full)
    for (i32 p = 0; p < MR; p++) {
      if (p < m) {
        wasm_v128_store(M + (pos * MR + p) * NR, acc[p][0]);
        wasm_v128_store(M + (pos * MR + p) * NR + 4, acc[p][1]);
      }
    }
  }
}

static void winograd_rows(const Layer* L, i32 t, i32 ty0, i32 ty1) {
  const i32 cin = L->cin, ics = L->ics, pw = L->w + 2, h = L->h, w = L->w;
  const i32 tiles = (w + 3) / 4, blocks = (L->cout + NR - 1) / NR;
  f32* V = L->scratch + t * L->scratch_floats;
  f32* M = V + 36 * vstride(tiles, cin);
  f32* T = M + 36 * MR * NR;  // [6][6][4]
  for (i32 ty = ty0; ty < ty1; ty++) {
    for (i32 tx = 0; tx < tiles; tx++) {
      const f32* d = L->in + (4 * ty * pw + 4 * tx) * ics;
      for (i32 c = 0; c < cin; c += 4) {
        // columns: T[i][j] = (B'd)[i][j]; rows: V[6i + k] = (T B)[i][k]
        for (i32 j = 0; j < 6; j++) input_1d(d + j * ics + c, pw * ics, T + 4 * j, 24);
        for (i32 i = 0; i < 6; i++) {
          input_1d(T + 24 * i, 4, V + 6 * i * vstride(tiles, cin) + tx * cin + c, vstride(tiles, cin));
        }
      }
    }
    for (i32 b = 0; b < blocks; b++) {
      for (i32 tx0 = 0; tx0 < tiles; tx0 += MR) {
        const i32 m = tiles - tx0 < MR ? tiles - tx0 : MR;
        // constant block widths, so that the accumulators stay in registers in the tails too
        switch (m) {
          case 6: winograd_gemm(L, 6, V, tiles, tx0, b, M); break;
          case 5: winograd_gemm(L, 5, V, tiles, tx0, b, M); break;
          case 4: winograd_gemm(L, 4, V, tiles, tx0, b, M); break;
          case 3: winograd_gemm(L, 3, V, tiles, tx0, b, M); break;
          case 2: winograd_gemm(L, 2, V, tiles, tx0, b, M); break;
          default: winograd_gemm(L, 1, V, tiles, tx0, b, M); break;
        }
        for (i32 p = 0; p < m; p++) {
          for (i32 half = 0; half < 2; half++) {
            const i32 c = NR * b + 4 * half;
            if (c >= L->cout) break;
            const v128_t bias = wasm_v128_load(L->bias + c);
            // columns: T[k][j] = (A'M)[k][j]; rows: y[k][l] = (T A)[k][l]
            for (i32 j = 0; j < 6; j++) {
              v128_t y[4];
              output_1d(M + (j * MR + p) * NR + 4 * half, 6 * MR * NR, y);
              for (i32 k = 0; k < 4; k++) wasm_v128_store(T + 4 * (6 * k + j), y[k]);
            }
            const i32 x = 4 * (tx0 + p);
            for (i32 k = 0; k < 4 && 4 * ty + k < h; k++) {
              v128_t y[4];
              output_1d(T + 24 * k, 4, y);
              const i32 row = (4 * ty + k + 1) * pw + x + 1;
#pragma clang loop unroll(full)
              for (i32 l = 0; l < 4; l++) {
                if (x + l < w) store_quad(L, row + l, c, ADD(y[l], bias));
              }
            }
          }
        }
      }
    }
  }
}

// Nearest x2: output rows [y0, y1) of the (2h x 2w) interior from the (h x w) input.
static void upsample_rows(const Layer* L, i32 y0, i32 y1) {
  const i32 w = L->w, c = L->cin, ipw = w + 2, opw = 2 * w + 2;
  for (i32 y = y0; y < y1; y++) {
    const f32* src = L->in + ((y / 2 + 1) * ipw + 1) * L->ics;
    f32* dst = L->out + ((y + 1) * opw + 1) * L->ocs;
    for (i32 x = 0; x < 2 * w; x++) {
      const f32* s = src + (x / 2) * L->ics;
      f32* d = dst + x * L->ocs;
      i32 k = 0;
      for (; k + 4 <= c; k += 4) wasm_v128_store(d + k, wasm_v128_load(s + k));
      for (; k < c; k++) d[k] = s[k];
    }
  }
}

// Runs thread `t` of `threads`' share of a layer: a contiguous band of output rows.
__attribute__((export_name("run_layer"))) void run_layer(const Layer* L, i32 t, i32 threads) {
  const i32 rows = L->op == OP_UPSAMPLE ? 2 * L->h : L->op == OP_WINOGRAD ? (L->h + 3) / 4 : L->h;
  const i32 y0 = (i32)((long long)rows * t / threads), y1 = (i32)((long long)rows * (t + 1) / threads);
  if (L->op == OP_UPSAMPLE) upsample_rows(L, y0, y1);
  else if (L->op == OP_WINOGRAD) winograd_rows(L, t, y0, y1);
  else conv_rows(L, y0, y1);
}
