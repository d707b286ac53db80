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
    for (i32 kx = 0; kx < 3; kx++) {
      const f32* ip = L->in + ((y + ky) * pw + x + kx) * ics;
      for (i32 ci = 0; ci < cin; ci++) {
        const v128_t w0 = wasm_v128_load(wp), w1 = wasm_v128_load(wp + 4);
        wp += NR;
#pragma clang loop unroll(full)
        for (i32 p = 0; p < MR; p++) {
          if (p < m) {
            const v128_t v = wasm_v128_load32_splat(ip + p * ics + ci);
            acc[p][0] = wasm_f32x4_relaxed_madd(v, w0, acc[p][0]);
            acc[p][1] = wasm_f32x4_relaxed_madd(v, w1, acc[p][1]);
          }
        }
      }
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

// Winograd F(2x2, 3x3) (Lavin & Gray 2016): a 2x2 output tile from a 4x4 input tile with 16
// products per channel pair instead of 36. Per row of tiles: the input transform V = B'dB of
// every tile into scratch ([16][tiles][cin]); then, per MR tiles x 8 output channels, the 16
// products as the direct kernel's register-blocked loop over cin (U = GgG', packed by wasm_plan.ts
// as [16][cout/8][cin][8]) into scratch, and the output transform A'MA with bias and epilogue.
// Needs cin % 4 == 0. Odd sides: the last tiles read one row past the map (wasm_plan.ts gives
// every map a spare zero row) and one column into the next row, and store only what is inside.

// `m` tiles from tile column tx0, channels [8b, 8b + 8): the 16 products into M ([16][MR][8]).
static inline __attribute__((always_inline)) void winograd_gemm(const Layer* L, i32 m, const f32* V, i32 tiles,
                                                                 i32 tx0, i32 b, f32* M) {
  const i32 cin = L->cin;
  for (i32 pos = 0; pos < 16; pos++) {
    v128_t acc[MR][2];
#pragma clang loop unroll(full)
    for (i32 p = 0; p < MR; p++) {
      if (p < m) acc[p][0] = acc[p][1] = wasm_f32x4_splat(0);
    }
    const f32* wp = L->weight + (pos * ((L->cout + NR - 1) / NR) + b) * cin * NR;
    const f32* vp = V + (pos * tiles + tx0) * cin;
    for (i32 ci = 0; ci < cin; ci++) {
      const v128_t w0 = wasm_v128_load(wp), w1 = wasm_v128_load(wp + 4);
      wp += NR;
#pragma clang loop unroll(full)
      for (i32 p = 0; p < MR; p++) {
        if (p < m) {
          const v128_t v = wasm_v128_load32_splat(vp + p * cin + ci);
          acc[p][0] = wasm_f32x4_relaxed_madd(v, w0, acc[p][0]);
          acc[p][1] = wasm_f32x4_relaxed_madd(v, w1, acc[p][1]);
        }
      }
    }
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
  const i32 tiles = (w + 1) / 2, blocks = (L->cout + NR - 1) / NR;
  f32* V = L->scratch + t * L->scratch_floats;
  f32* M = V + 16 * tiles * cin;
  for (i32 ty = ty0; ty < ty1; ty++) {
    for (i32 tx = 0; tx < tiles; tx++) {
      const f32* d = L->in + (2 * ty * pw + 2 * tx) * ics;
      f32* v = V + tx * cin;
      for (i32 c = 0; c < cin; c += 4) {
        v128_t r[4][4];
#pragma clang loop unroll(full)
        for (i32 j = 0; j < 4; j++) {
          const v128_t d0 = wasm_v128_load(d + (0 * pw + j) * ics + c), d1 = wasm_v128_load(d + (1 * pw + j) * ics + c);
          const v128_t d2 = wasm_v128_load(d + (2 * pw + j) * ics + c), d3 = wasm_v128_load(d + (3 * pw + j) * ics + c);
          r[0][j] = wasm_f32x4_sub(d0, d2);
          r[1][j] = wasm_f32x4_add(d1, d2);
          r[2][j] = wasm_f32x4_sub(d2, d1);
          r[3][j] = wasm_f32x4_sub(d1, d3);
        }
#pragma clang loop unroll(full)
        for (i32 i = 0; i < 4; i++) {
          f32* o = v + (4 * i * tiles) * cin + c;
          wasm_v128_store(o, wasm_f32x4_sub(r[i][0], r[i][2]));
          wasm_v128_store(o + tiles * cin, wasm_f32x4_add(r[i][1], r[i][2]));
          wasm_v128_store(o + 2 * tiles * cin, wasm_f32x4_sub(r[i][2], r[i][1]));
          wasm_v128_store(o + 3 * tiles * cin, wasm_f32x4_sub(r[i][1], r[i][3]));
        }
      }
    }
    for (i32 b = 0; b < blocks; b++) {
      const v128_t bias0 = wasm_v128_load(L->bias + NR * b), bias1 = wasm_v128_load(L->bias + NR * b + 4);
      for (i32 tx0 = 0; tx0 < tiles; tx0 += MR) {
        const i32 m = tiles - tx0 < MR ? tiles - tx0 : MR;
        if (m == MR) winograd_gemm(L, MR, V, tiles, tx0, b, M);
        else winograd_gemm(L, m, V, tiles, tx0, b, M);  // one tail per row: not worth specialising
        for (i32 p = 0; p < m; p++) {
          v128_t y[2][2][2];  // [row][col][channel half]
#pragma clang loop unroll(full)
          for (i32 half = 0; half < 2; half++) {
            v128_t s[4][2];
#pragma clang loop unroll(full)
            for (i32 i = 0; i < 4; i++) {
              const f32* mi = M + ((4 * i) * MR + p) * NR + 4 * half;
              const v128_t m0 = wasm_v128_load(mi), m1 = wasm_v128_load(mi + MR * NR);
              const v128_t m2 = wasm_v128_load(mi + 2 * MR * NR), m3 = wasm_v128_load(mi + 3 * MR * NR);
              s[i][0] = wasm_f32x4_add(wasm_f32x4_add(m0, m1), m2);
              s[i][1] = wasm_f32x4_sub(wasm_f32x4_sub(m1, m2), m3);
            }
            const v128_t bias = half ? bias1 : bias0;
#pragma clang loop unroll(full)
            for (i32 j = 0; j < 2; j++) {
              y[0][j][half] = wasm_f32x4_add(wasm_f32x4_add(wasm_f32x4_add(s[0][j], s[1][j]), s[2][j]), bias);
              y[1][j][half] = wasm_f32x4_add(wasm_f32x4_sub(wasm_f32x4_sub(s[1][j], s[2][j]), s[3][j]), bias);
            }
          }
          const i32 x = 2 * (tx0 + p), yy = 2 * ty;
#pragma clang loop unroll(full)
          for (i32 i = 0; i < 2; i++) {
#pragma clang loop unroll(full)
            for (i32 j = 0; j < 2; j++) {
              if (yy + i < h && x + j < w) store_pixel(L, (yy + i + 1) * pw + x + j + 1, NR * b, y[i][j][0], y[i][j][1]);
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
  const i32 rows = L->op == OP_UPSAMPLE ? 2 * L->h : L->op == OP_WINOGRAD ? (L->h + 1) / 2 : L->h;
  const i32 y0 = (i32)((long long)rows * t / threads), y1 = (i32)((long long)rows * (t + 1) / threads);
  if (L->op == OP_UPSAMPLE) upsample_rows(L, y0, y1);
  else if (L->op == OP_WINOGRAD) winograd_rows(L, t, y0, y1);
  else conv_rows(L, y0, y1);
}
