// The engine's CPU kernels: int4 weights multiplied as llama.cpp does (int8 activations, integer dot
// products), and all decoder layers of a small decode batch in one call.
//
// Int4 (Int4Linear in layers/quant_linear.py): codes [N, K/2] uint8, block b of a row in bytes
// [16b, 16b + 16), byte j holding element j in its low nibble and element j + 16 in its high one;
// value = scale * code + min with scales_and_mins [2, N, K/32] float16 (GGUF Q4_1's own layout of a
// block, so its weights carry over exactly). The activations of each block of 32 are quantized to
// int8 with their own scale, and a block's dot product is two AVX-512 VNNI instructions (a few AVX2
// ones on CPUs without VNNI): PyTorch's int4 kernel, which widens every weight to float, took 1.5x as
// long to decode a token.
//
// The decode step: run op by op, a decode step of a small model is mostly overhead: ~45 eager ops a
// layer, each paying dispatch and an allocation, around four weight kernels that do the real work.
// Here everything between the weight kernels (RMSNorm, rotary, the KV write, attention over the paged
// cache, SiLU-and-multiply) is a plain loop over the batch's few rows. Attention reads keys and values
// in place through the block table: nothing is gathered or padded. Rounding follows the eager path
// step by step (norm in float32, its output in the model's dtype, q/k/v and attention in float32, the
// attention output rounded back), so both paths agree to the last bit or two.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__F16C__)
#include <immintrin.h>
#define INFERLINE_VNNI 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define INFERLINE_AVX2 1
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

// ---- int4 weights ------------------------------------------------------------------------------

constexpr int64_t kInt4Block = 32;
constexpr int64_t kGroupBlocks = 4;  // blocks per group: one 512-bit register of packed int4 codes
constexpr int64_t kGroupCodes = kGroupBlocks * kInt4Block;

// How a group's 128 activation codes are ordered: as the nibbles of int4 weights meet them (each block's
// elements 0-15 in the group's first 64 bytes, 16-31 in its last 64), or as they come (int8 weights).
enum class CodeOrder { kNibbles, kNatural };

// Activation rows quantized per block of 32 (int8 codes, a float scale per block), stored group by
// group with the rows of a group side by side, [groups][rows][...]: a tile of rows then reads one stream
// at constant offsets (one pointer per row spilled out of registers in the first layout). The last group
// is padded with zero codes and scales, so whatever a padded weight block holds adds nothing.
struct QuantizedRows {
  int64_t rows, blocks, groups;
  int64_t lanes;  // floats a row's group has in lane_scale and lane_sum: 16 in nibble order, 32 in natural
  std::vector<int8_t> codes;       // [groups][rows][128]
  std::vector<float> scale;        // [groups][rows][4]
  std::vector<float> scaled_sum;   // [groups][rows][4]: scale times the sum of the block's codes
#ifdef INFERLINE_VNNI
  // [groups][rows][lanes] each: each block's scale repeated over the int32 lanes its dot products land in
  // (nibble order: 4 lanes a block in one register; natural order: 8 lanes a block over two), and the
  // block's term that does not depend on the weight codes in the first of its lanes, zero in the others
  // (nibble order: the scaled sum, times the weight block's minimum; natural order: -128 times the scaled
  // sum, times the weight block's scale, undoing the unsigned weights' offset), so that both go into
  // one accumulator a row.
  std::vector<float> lane_scale;
  std::vector<float> lane_sum;
#endif
  const int8_t* group_codes(int64_t group, int64_t row) const { return codes.data() + (group * rows + row) * kGroupCodes; }
  const float* group_scale(int64_t group, int64_t row) const { return scale.data() + (group * rows + row) * kGroupBlocks; }
  const float* group_sum(int64_t group, int64_t row) const { return scaled_sum.data() + (group * rows + row) * kGroupBlocks; }
  // What one row of a tile keeps in cache while the tile is multiplied by a weight row.
  int64_t bytes_per_row() const { return groups * (kGroupCodes + 2 * lanes * static_cast<int64_t>(sizeof(float))); }
};

template <typename T>
QuantizedRows quantize_rows(const T* x, int64_t rows, int64_t k, CodeOrder order) {
  QuantizedRows q;
  q.rows = rows;
  q.blocks = k / kInt4Block;
  q.groups = (q.blocks + kGroupBlocks - 1) / kGroupBlocks;
  q.lanes = order == CodeOrder::kNibbles ? 16 : 32;
  q.codes.assign(q.groups * rows * kGroupCodes, 0);
  q.scale.assign(q.groups * rows * kGroupBlocks, 0.f);
  q.scaled_sum.assign(q.groups * rows * kGroupBlocks, 0.f);
#ifdef INFERLINE_VNNI
  q.lane_scale.assign(q.groups * rows * q.lanes, 0.f);
  q.lane_sum.assign(q.groups * rows * q.lanes, 0.f);
#endif
  float values[kInt4Block];
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < q.blocks; ++b) {
      const T* block = x + r * k + b * kInt4Block;
      float max_abs = 0.f;
      for (int64_t j = 0; j < kInt4Block; ++j) {
        values[j] = static_cast<float>(block[j]);
        max_abs = std::max(max_abs, std::fabs(values[j]));
      }
      const float scale = max_abs / 127.f;
      const float inverse = scale > 0.f ? 1.f / scale : 0.f;
      const int64_t group = b / kGroupBlocks;
      const int64_t slot = b % kGroupBlocks;
      int8_t* codes = q.codes.data() + (group * rows + r) * kGroupCodes;
      int32_t sum = 0;
      for (int64_t j = 0; j < kInt4Block; ++j) {
        const auto code = static_cast<int8_t>(std::nearbyint(values[j] * inverse));
        sum += code;
        const int64_t at = order == CodeOrder::kNatural ? slot * kInt4Block + j
                           : j < 16                     ? slot * 16 + j
                                                        : 64 + slot * 16 + j - 16;
        codes[at] = code;
      }
      const int64_t at = (group * rows + r) * kGroupBlocks + slot;
      q.scale[at] = scale;
      q.scaled_sum[at] = scale * static_cast<float>(sum);
#ifdef INFERLINE_VNNI
      float* lanes = q.lane_scale.data() + (group * rows + r) * q.lanes;
      const int64_t per_block = order == CodeOrder::kNibbles ? 4 : 8;
      for (int64_t lane = slot * per_block; lane < (slot + 1) * per_block; ++lane) lanes[lane] = scale;
      q.lane_sum[(group * rows + r) * q.lanes + slot * per_block] =
          (order == CodeOrder::kNibbles ? 1.f : -128.f) * q.scaled_sum[at];
#endif
    }
  }
  return q;
}

inline float half_to_float(uint16_t bits) { return static_cast<float>(c10::Half(bits, c10::Half::from_bits())); }

#if defined(INFERLINE_VNNI) || defined(INFERLINE_AVX2)
#ifdef INFERLINE_AVX2
// AVX2 has no unsigned-by-signed dot product into int32 (VNNI's dpbusd); maddubs multiplies u8 by s8
// into saturating int16 pair sums and madd against ones widens those to int32. A 32-code block never
// saturates: int4 codes give at most 4 * 15 * 127 per int16 (both nibble halves added), int8 codes at
// most 2 * 127 * 127 = 32258 (activations stay within -127..127, so |x| fits in u8 and below 128).
inline __m256i sum_pairs_to_int32(__m256i products_s16) { return _mm256_madd_epi16(products_s16, _mm256_set1_epi16(1)); }
#endif

// 32 unsigned bytes times 32 signed bytes, summed four at a time into eight int32 lanes.
inline __m256i dot_u8_s8(__m256i unsigned_bytes, __m256i signed_bytes) {
#ifdef INFERLINE_VNNI
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), unsigned_bytes, signed_bytes);
#else
  return sum_pairs_to_int32(_mm256_maddubs_epi16(unsigned_bytes, signed_bytes));
#endif
}

inline float sum_lanes(__m256 v) {
  const __m128 quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
  return _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)));
}
#endif

#ifdef INFERLINE_VNNI
// The loops over a tile's rows are unrolled by pragma: left to itself GCC keeps 16 rows' accumulators
// in a loop over memory.

// totals[i] = the sum of acc[i]'s lanes for R <= 16 rows at once: a transpose made of adds, ~60
// instructions for 16 rows where a reduction per row takes ~10 each. Every row's adds go in one order
// (256-bit halves, then 128-bit halves, then lanes 0 + 2 and 1 + 3, then those two), a lone row's too,
// so a row's output is the same to the bit whether it is alone or in a tile: a seeded request samples
// the same tokens whatever else is in the batch.
template <int R>
inline void sum_each(const __m512* acc, float* totals) {
  constexpr int kPairs = (R + 1) / 2;
  constexpr int kQuads = (R + 3) / 4;
  __m512 halves[8];  // rows 2i and 2i + 1, each one's 256-bit halves added: [2i: 2 blocks | 2i + 1: 2]
#pragma GCC unroll 16
  for (int i = 0; i < kPairs; ++i) {
    const __m512 a = acc[2 * i];
    const __m512 b = 2 * i + 1 < R ? acc[2 * i + 1] : _mm512_setzero_ps();
    halves[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0xEE), _mm512_shuffle_f32x4(a, b, 0x44));
  }
  alignas(64) float lanes[16];
#pragma GCC unroll 16
  for (int i = 0; i < kQuads; ++i) {
    const __m512 a = halves[2 * i];
    const __m512 b = 2 * i + 1 < kPairs ? halves[2 * i + 1] : _mm512_setzero_ps();
    // Each 128-bit block: one row's four lanes, its two 128-bit halves added.
    const __m512 quads = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0xDD), _mm512_shuffle_f32x4(a, b, 0x88));
    const __m512 pairs = _mm512_add_ps(quads, _mm512_permute_ps(quads, 0x4E));  // lanes 0 + 2, 1 + 3
    const __m512 sums = _mm512_add_ps(pairs, _mm512_permute_ps(pairs, 0xB1));   // then those two
    _mm512_store_ps(lanes, sums);
#pragma GCC unroll 4
    for (int j = 0; j < 4 && 4 * i + j < R; ++j) totals[4 * i + j] = lanes[4 * j];
  }
}

// How far ahead of the codes being read the kernels ask for the next ones: one thread decoding one row
// reads weights at ~19 GB/s, the core's bandwidth, only with a prefetch ahead of the hardware's.
constexpr int64_t kPrefetchBytes = 1024;

// One group of four blocks of weight row `codes` against R activation rows, the codes unpacked once for
// all of them. `Tail`: the row's last, partial group, whose weight bytes past the row are not read.
template <int R, bool Tail>
inline void int4_group(const uint8_t* codes, const uint16_t* scales, const uint16_t* mins, int64_t left,
                       const int8_t* x_codes, const float* x_lanes, const float* x_sums, __m512* acc) {
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  const __m512i four_lanes_each = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  __m512i packed;
  __m128 w_scale, w_min;
  if constexpr (Tail) {
    const __mmask8 lane_mask = static_cast<__mmask8>((1U << left) - 1);
    packed = _mm512_maskz_loadu_epi8(_cvtu64_mask64((1ULL << (left * 16)) - 1), codes);
    w_scale = _mm_cvtph_ps(_mm_maskz_loadu_epi16(lane_mask, scales));
    w_min = _mm_cvtph_ps(_mm_maskz_loadu_epi16(lane_mask, mins));
  } else {
    packed = _mm512_loadu_si512(codes);
    w_scale = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(scales)));
    w_min = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mins)));
  }
  _mm_prefetch(reinterpret_cast<const char*>(codes) + kPrefetchBytes, _MM_HINT_T0);
  const __m512i low_codes = _mm512_and_si512(packed, nibble);
  const __m512i high_codes = _mm512_and_si512(_mm512_srli_epi16(packed, 4), nibble);
  const __m512 w_lanes = _mm512_permutexvar_ps(four_lanes_each, _mm512_castps128_ps512(w_scale));
  const __m512 w_min_lanes = _mm512_permutexvar_ps(four_lanes_each, _mm512_castps128_ps512(w_min));
  #pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
    __m512i dots = _mm512_dpbusd_epi32(_mm512_setzero_si512(), low_codes, _mm512_loadu_si512(x_codes + i * kGroupCodes));
    dots = _mm512_dpbusd_epi32(dots, high_codes, _mm512_loadu_si512(x_codes + i * kGroupCodes + 64));
    const __m512 lane_scale = _mm512_mul_ps(w_lanes, _mm512_loadu_ps(x_lanes + i * 16));
    acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), lane_scale, acc[i]);
    acc[i] = _mm512_fmadd_ps(w_min_lanes, _mm512_loadu_ps(x_sums + i * 16), acc[i]);
  }
}
#endif

// Outputs of weight row `codes` for R consecutive activation rows: the codes are unpacked once and
// used for every row (a decode batch of 16 would otherwise unpack each weight 16 times).
template <int R>
void int4_dot_rows(const uint8_t* codes, const uint16_t* scales, const uint16_t* mins, const QuantizedRows& q,
                   int64_t first_row, float* totals) {
  const int64_t blocks = q.blocks;
  #pragma GCC unroll 16
  for (int i = 0; i < R; ++i) totals[i] = 0.f;
  int64_t b = 0;
#ifdef INFERLINE_VNNI
  __m512 acc[R];
  #pragma GCC unroll 16
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  const int64_t full_groups = blocks / kGroupBlocks;
  for (int64_t g = 0; g < full_groups; ++g, b += kGroupBlocks) {
    const int64_t at = (g * q.rows + first_row) * q.lanes;
    int4_group<R, false>(codes + b * 16, scales + b, mins + b, kGroupBlocks, q.group_codes(g, first_row),
                         q.lane_scale.data() + at, q.lane_sum.data() + at, acc);
  }
  if (b < blocks) {  // K = 576 leaves two blocks
    const int64_t at = (full_groups * q.rows + first_row) * q.lanes;
    int4_group<R, true>(codes + b * 16, scales + b, mins + b, blocks - b, q.group_codes(full_groups, first_row),
                        q.lane_scale.data() + at, q.lane_sum.data() + at, acc);
    b = blocks;
  }
  sum_each<R>(acc, totals);
#elif defined(INFERLINE_AVX2)
  // Two blocks at a time: their 32 packed bytes fill one register, and the int32 result has four lanes
  // per block, so one block's scale covers half the register.
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m256i four_lanes_each = _mm256_set_epi32(1, 1, 1, 1, 0, 0, 0, 0);
  __m256 acc[R];
  __m128 min_acc[R];
  #pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
    acc[i] = _mm256_setzero_ps();
    min_acc[i] = _mm_setzero_ps();
  }
  for (; b + 2 <= blocks; b += 2) {
    const int64_t group = b / kGroupBlocks;
    const int64_t slot = b % kGroupBlocks;  // 0 or 2: a pair never straddles two groups
    const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + b * 16));
    const __m256i low_codes = _mm256_and_si256(packed, nibble);
    const __m256i high_codes = _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble);
    // Two float16 values each (lanes 2 and 3 are zero, so they add nothing to min_acc).
    const __m128 w_scale = _mm_cvtph_ps(_mm_loadu_si32(scales + b));
    const __m128 w_min = _mm_cvtph_ps(_mm_loadu_si32(mins + b));
    #pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const int8_t* x = q.group_codes(group, first_row + i) + slot * 16;
      // Codes are unsigned, activations signed: maddubs takes them as they are, no sign trick needed.
      const __m256i products = _mm256_add_epi16(
          _mm256_maddubs_epi16(low_codes, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x))),
          _mm256_maddubs_epi16(high_codes, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 64))));
      const float* x_scale = q.group_scale(group, first_row + i) + slot;
      const float* x_sum = q.group_sum(group, first_row + i) + slot;
      const __m128 x_scales = _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(x_scale)));
      const __m128 x_sums = _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(x_sum)));
      const __m256 lane_scale =
          _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_mul_ps(w_scale, x_scales)), four_lanes_each);
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum_pairs_to_int32(products)), lane_scale, acc[i]);
      min_acc[i] = _mm_fmadd_ps(w_min, x_sums, min_acc[i]);
    }
  }
  #pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
    totals[i] += sum_lanes(_mm256_add_ps(acc[i], _mm256_castps128_ps256(min_acc[i])));
  }
#endif
  for (; b < blocks; ++b) {  // what is left, and every block on CPUs without AVX2
    const uint8_t* c = codes + b * 16;
    const int64_t group = b / kGroupBlocks;
    const int64_t slot = b % kGroupBlocks;
    for (int i = 0; i < R; ++i) {
      const int8_t* low = q.group_codes(group, first_row + i) + slot * 16;
      const int8_t* high = low + 64;
      int32_t dot = 0;
      for (int64_t j = 0; j < 16; ++j) dot += (c[j] & 15) * low[j] + (c[j] >> 4) * high[j];
      totals[i] += half_to_float(scales[b]) * q.group_scale(group, first_row + i)[slot] * static_cast<float>(dot) +
                   half_to_float(mins[b]) * q.group_sum(group, first_row + i)[slot];
    }
  }
}

#ifdef INFERLINE_VNNI
constexpr int kRowTile = 16;  // 32 vector registers: 16 rows' accumulators fit beside the unpacked codes
#else
constexpr int kRowTile = 4;  // AVX2 has 16: more rows' accumulators would spill to memory
#endif

// dot(..., integral_constant<tile>) for a runtime tile of 1 .. R rows: each size its own unrolled code.
template <int R, typename Call>
inline void with_tile(int64_t tile, Call call) {
  if constexpr (R == 1) {
    call(std::integral_constant<int, 1>{});
  } else if (tile == R) {
    call(std::integral_constant<int, R>{});
  } else {
    with_tile<R - 1>(tile, call);
  }
}

constexpr int64_t kTileBytes = 32 << 10;
constexpr int64_t kWeightRowsPerBlock = 32;
// A tile's activations stay in L1 (48 KiB here) while a block of weight rows passes them; tiles of a
// down projection's 1536 inputs hold fewer rows. Weight rows go by in blocks, so a second tile meets
// them in cache: row by row, two 16-row tiles pushed each other out of L1 and 32 rows took 4x what 16 did.

// out[r, n] = dot(n, first_row, R, totals) for every weight row n (split over threads) and every tile
// of R <= kRowTile activation rows.
template <typename T, typename Dot>
void tiled_matmul(int64_t rows, int64_t n_out, int64_t bytes_per_row, T* out, Dot dot) {
  const int64_t max_tile = std::clamp<int64_t>(kTileBytes / bytes_per_row, 1, kRowTile);
  at::parallel_for(0, n_out, 16, [&](int64_t begin, int64_t end) {
    float totals[kRowTile];
    for (int64_t block = begin; block < end; block += kWeightRowsPerBlock) {
      const int64_t block_end = std::min(end, block + kWeightRowsPerBlock);
      for (int64_t r = 0; r < rows; r += max_tile) {
        const int64_t tile = std::min(max_tile, rows - r);
        with_tile<kRowTile>(tile, [&](auto size) {
          for (int64_t n = block; n < block_end; ++n) {
            dot(n, r, size, totals);
            for (int64_t i = 0; i < tile; ++i) out[(r + i) * n_out + n] = static_cast<T>(totals[i]);
          }
        });
      }
    }
  });
}

template <typename T>
void int4_matmul(const T* x, int64_t rows, int64_t k, const at::Tensor& codes, const at::Tensor& scales_and_mins,
                 T* out) {
  const int64_t n_out = codes.size(0);
  const int64_t blocks = k / kInt4Block;
  const QuantizedRows q = quantize_rows(x, rows, k, CodeOrder::kNibbles);
  const auto* code_rows = codes.data_ptr<uint8_t>();
  const auto* scales = reinterpret_cast<const uint16_t*>(scales_and_mins.data_ptr<at::Half>());
  const uint16_t* mins = scales + n_out * blocks;
  tiled_matmul(rows, n_out, q.bytes_per_row(), out, [&](int64_t n, int64_t first, auto tile, float* totals) {
    int4_dot_rows<decltype(tile)::value>(code_rows + n * k / 2, scales + n * blocks, mins + n * blocks, q, first,
                                         totals);
  });
}

void check_activations(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.size(1) % kInt4Block == 0,
              "quantized-weight activations must be a contiguous [M, K] with K a multiple of 32");
}

void check_int4(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales_and_mins) {
  check_activations(x);
  TORCH_CHECK(codes.scalar_type() == at::kByte && codes.is_contiguous() && codes.size(1) * 2 == x.size(1),
              "int4 codes must be a contiguous uint8 [N, K/2]");
  TORCH_CHECK(scales_and_mins.scalar_type() == at::kHalf && scales_and_mins.is_contiguous() &&
                  scales_and_mins.size(1) == codes.size(0) && scales_and_mins.size(2) * kInt4Block == x.size(1),
              "int4 scales_and_mins must be a contiguous float16 [2, N, K/32]");
}

at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales_and_mins) {
  check_int4(x, codes, scales_and_mins);
  at::Tensor out = at::empty({x.size(0), codes.size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "int4_linear", [&] {
    int4_matmul(x.data_ptr<scalar_t>(), x.size(0), x.size(1), codes, scales_and_mins, out.data_ptr<scalar_t>());
  });
  return out;
}

// The weights as a dense [N, K] matrix, for a GEMM over many rows (prefill).
at::Tensor int4_dequantize(const at::Tensor& codes, const at::Tensor& scales_and_mins, at::ScalarType dtype) {
  const int64_t n_out = codes.size(0);
  const int64_t k = codes.size(1) * 2;
  const int64_t blocks = k / kInt4Block;
  at::Tensor weight = at::empty({n_out, k}, codes.options().dtype(dtype));
  const auto* code_rows = codes.data_ptr<uint8_t>();
  const auto* scales = reinterpret_cast<const uint16_t*>(scales_and_mins.data_ptr<at::Half>());
  const uint16_t* mins = scales + n_out * blocks;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "int4_dequantize", [&] {
    scalar_t* out = weight.data_ptr<scalar_t>();
    at::parallel_for(0, n_out * blocks, 64, [&](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; ++block) {
        const float scale = half_to_float(scales[block]);
        const float min = half_to_float(mins[block]);
        const uint8_t* c = code_rows + block * 16;
        scalar_t* o = out + block * kInt4Block;
        for (int64_t j = 0; j < 16; ++j) {
          o[j] = static_cast<scalar_t>(scale * static_cast<float>(c[j] & 15) + min);
          o[j + 16] = static_cast<scalar_t>(scale * static_cast<float>(c[j] >> 4) + min);
        }
      }
    });
  });
  return weight;
}

// ---- int8 weights ------------------------------------------------------------------------------
// Layout (Int8Linear): codes [N, K] int8 in -127..127, scales [N, K/32] float16 (GGUF's Q8_0).
// Activations are quantized per block of 32 as for int4, in natural order.

#ifdef INFERLINE_VNNI
// One group of four blocks (two registers of weights) against R activation rows. VNNI multiplies
// unsigned by signed bytes, so the weights go in as w + 128 (a flipped sign bit, once for all rows) and
// the 128 * sum(x) this adds to a block comes off through the rows' lane sums.
template <int R, bool Tail>
inline void int8_group(const int8_t* codes, const uint16_t* scales, int64_t left, const int8_t* x_codes,
                       const float* x_lanes, const float* x_sums, __m512* acc) {
  const __m512i sign_bit = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i first_half = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i second_half = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);
  __m512i w0, w1;
  __m128 w_scale;
  if constexpr (Tail) {
    const int64_t bytes = left * kInt4Block;
    w0 = _mm512_maskz_loadu_epi8(_cvtu64_mask64(bytes >= 64 ? ~0ULL : (1ULL << bytes) - 1), codes);
    w1 = bytes > 64 ? _mm512_maskz_loadu_epi8(_cvtu64_mask64((1ULL << (bytes - 64)) - 1), codes + 64)
                    : _mm512_setzero_si512();
    w_scale = _mm_cvtph_ps(_mm_maskz_loadu_epi16(static_cast<__mmask8>((1U << left) - 1), scales));
  } else {
    w0 = _mm512_loadu_si512(codes);
    w1 = _mm512_loadu_si512(codes + 64);
    w_scale = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(scales)));
  }
  _mm_prefetch(reinterpret_cast<const char*>(codes) + kPrefetchBytes, _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(codes) + kPrefetchBytes + 64, _MM_HINT_T0);
  w0 = _mm512_xor_si512(w0, sign_bit);
  w1 = _mm512_xor_si512(w1, sign_bit);
  const __m512 w_lanes0 = _mm512_permutexvar_ps(first_half, _mm512_castps128_ps512(w_scale));
  const __m512 w_lanes1 = _mm512_permutexvar_ps(second_half, _mm512_castps128_ps512(w_scale));
  #pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
    const int8_t* x = x_codes + i * kGroupCodes;
    const float* lanes = x_lanes + i * 32;
    const float* sums = x_sums + i * 32;
    const __m512i dots0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w0, _mm512_loadu_si512(x));
    const __m512i dots1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w1, _mm512_loadu_si512(x + 64));
    // (dots + sums / scales) * scales, with the lane sums added where a block's first lane is.
    const __m512 sum0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots0), _mm512_loadu_ps(lanes), _mm512_loadu_ps(sums));
    const __m512 sum1 =
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots1), _mm512_loadu_ps(lanes + 16), _mm512_loadu_ps(sums + 16));
    acc[i] = _mm512_fmadd_ps(sum0, w_lanes0, acc[i]);
    acc[i] = _mm512_fmadd_ps(sum1, w_lanes1, acc[i]);
  }
}
#endif

template <int R>
void int8_dot_rows(const int8_t* codes, const uint16_t* scales, const QuantizedRows& q, int64_t first_row,
                   float* totals) {
  const int64_t blocks = q.blocks;
  #pragma GCC unroll 16
  for (int i = 0; i < R; ++i) totals[i] = 0.f;
  int64_t b = 0;
#ifdef INFERLINE_VNNI
  __m512 acc[R];
  #pragma GCC unroll 16
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  const int64_t full_groups = blocks / kGroupBlocks;
  for (int64_t g = 0; g < full_groups; ++g, b += kGroupBlocks) {
    const int64_t at = (g * q.rows + first_row) * q.lanes;
    int8_group<R, false>(codes + b * kInt4Block, scales + b, kGroupBlocks, q.group_codes(g, first_row),
                         q.lane_scale.data() + at, q.lane_sum.data() + at, acc);
  }
  if (b < blocks) {
    const int64_t at = (full_groups * q.rows + first_row) * q.lanes;
    int8_group<R, true>(codes + b * kInt4Block, scales + b, blocks - b, q.group_codes(full_groups, first_row),
                        q.lane_scale.data() + at, q.lane_sum.data() + at, acc);
    b = blocks;
  }
  sum_each<R>(acc, totals);
#elif defined(INFERLINE_AVX2)
  __m256 acc[R];
  #pragma GCC unroll 16
  for (int i = 0; i < R; ++i) acc[i] = _mm256_setzero_ps();
  for (; b < blocks; ++b) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + b * kInt4Block));
    const float w_scale = half_to_float(scales[b]);
    const int64_t group = b / kGroupBlocks;
    const int64_t slot = b % kGroupBlocks;
    #pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const __m256i x =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q.group_codes(group, first_row + i) + slot * kInt4Block));
      // Both operands are signed but the dot product takes its first as unsigned: |x| goes first and
      // x's signs move onto w (sign_epi8 also zeroes w where x is zero).
      const __m256i dots = dot_u8_s8(_mm256_abs_epi8(x), _mm256_sign_epi8(w, x));
      const float x_scale = q.group_scale(group, first_row + i)[slot];
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), _mm256_set1_ps(w_scale * x_scale), acc[i]);
    }
  }
  #pragma GCC unroll 16
  for (int i = 0; i < R; ++i) totals[i] = sum_lanes(acc[i]);
#endif
  for (; b < blocks; ++b) {  // every block on CPUs without AVX2
    const int8_t* c = codes + b * kInt4Block;
    const int64_t group = b / kGroupBlocks;
    const int64_t slot = b % kGroupBlocks;
    for (int i = 0; i < R; ++i) {
      const int8_t* x = q.group_codes(group, first_row + i) + slot * kInt4Block;
      int32_t dot = 0;
      for (int64_t j = 0; j < kInt4Block; ++j) dot += c[j] * x[j];
      totals[i] += half_to_float(scales[b]) * q.group_scale(group, first_row + i)[slot] * static_cast<float>(dot);
    }
  }
}

template <typename T>
void int8_matmul(const T* x, int64_t rows, int64_t k, const at::Tensor& codes, const at::Tensor& scales, T* out) {
  const int64_t n_out = codes.size(0);
  const int64_t blocks = k / kInt4Block;
  const QuantizedRows q = quantize_rows(x, rows, k, CodeOrder::kNatural);
  const auto* code_rows = codes.data_ptr<int8_t>();
  const auto* scale_rows = reinterpret_cast<const uint16_t*>(scales.data_ptr<at::Half>());
  tiled_matmul(rows, n_out, q.bytes_per_row(), out, [&](int64_t n, int64_t first, auto tile, float* totals) {
    int8_dot_rows<decltype(tile)::value>(code_rows + n * k, scale_rows + n * blocks, q, first, totals);
  });
}

void check_int8(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales) {
  check_activations(x);
  TORCH_CHECK(codes.scalar_type() == at::kChar && codes.is_contiguous() && codes.size(1) == x.size(1),
              "int8 codes must be a contiguous int8 [N, K]");
  TORCH_CHECK(scales.scalar_type() == at::kHalf && scales.is_contiguous() && scales.size(0) == codes.size(0) &&
                  scales.size(1) * kInt4Block == x.size(1),
              "int8 scales must be a contiguous float16 [N, K/32]");
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales) {
  check_int8(x, codes, scales);
  at::Tensor out = at::empty({x.size(0), codes.size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "int8_linear", [&] {
    int8_matmul(x.data_ptr<scalar_t>(), x.size(0), x.size(1), codes, scales, out.data_ptr<scalar_t>());
  });
  return out;
}

// ---- the decode step ---------------------------------------------------------------------------

// Per layer, `weights` holds these tensors in this order (an empty tensor where a layer has none).
enum LayerTensor : int64_t {
  kInputNorm,
  kQkvWeight,
  kQkvScales,
  kQkvBias,
  kOutWeight,
  kOutScales,
  kPostNorm,
  kGateUpWeight,
  kGateUpScales,
  kDownWeight,
  kDownScales,
  kTensorsPerLayer,
};

// Weight formats, as layers/quant_linear.py stores them.
enum WeightKind : int64_t { kDense = 0, kInt8 = 1, kInt4 = 2 };

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales,
                  const at::Tensor& bias, int64_t kind) {
  const bool has_bias = bias.defined() && bias.numel() > 0;
  if (kind == kDense) {
    return at::linear(x, weight, has_bias ? std::optional<at::Tensor>(bias) : std::nullopt);
  }
  at::Tensor y = kind == kInt8 ? int8_linear(x, weight, scales) : int4_linear(x, weight, scales);
  return has_bias ? y.add_(bias) : y;
}

// e^x as 2^n e^r with |r| <= ln(2)/2 and a degree-6 polynomial for e^r (Cephes' coefficients), about
// 1 ulp from expf: plain arithmetic, so the loops that call it vectorise where libm's expf does not.
inline float vector_exp(float x) {
  x = std::min(88.37f, std::max(-87.33f, x));  // e^-87.33 is float's smallest normal: softmax's "zero"
  const float n = std::floor(x * 1.44269504f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const int32_t exponent_bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_to_n;
  std::memcpy(&two_to_n, &exponent_bits, sizeof two_to_n);
  return p * two_to_n;
}

template <typename T>
void rms_norm(const T* x, const T* weight, T* out, int64_t rows, int64_t dim, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = x + r * dim;
    float sum_sq = 0.f;
    for (int64_t i = 0; i < dim; ++i) {
      const float v = static_cast<float>(row[i]);
      sum_sq += v * v;
    }
    const float inv_rms = 1.f / std::sqrt(sum_sq / static_cast<float>(dim) + eps);
    T* out_row = out + r * dim;
    for (int64_t i = 0; i < dim; ++i) {
      const T normed = static_cast<T>(static_cast<float>(row[i]) * inv_rms);
      out_row[i] = static_cast<T>(static_cast<float>(weight[i]) * static_cast<float>(normed));
    }
  }
}

// Rotate-half rotary on one head: out[i] = x[i] cos[i] + x[i +- D/2] signed_sin[i] (sign in the table).
template <typename T>
void rotate(const T* x, const float* cos, const float* signed_sin, float* out, int64_t head_dim) {
  const int64_t half = head_dim / 2;
  for (int64_t i = 0; i < head_dim; ++i) {
    const int64_t partner = i < half ? i + half : i - half;
    out[i] = static_cast<float>(x[i]) * cos[i] + static_cast<float>(x[partner]) * signed_sin[i];
  }
}

struct Shapes {
  int64_t batch, num_heads, num_kv_heads, head_dim, block_size, max_blocks;
};

// Rotary on q and k, k and v written to their cache slots; q (rotated, float32) into `queries`.
template <typename T>
void write_kv(const T* qkv, const float* cos, const float* signed_sin, const int64_t* slots,
              float* key_cache, float* value_cache, float* queries, const Shapes& s) {
  const int64_t d = s.head_dim;
  const int64_t row_size = (s.num_heads + 2 * s.num_kv_heads) * d;
  for (int64_t b = 0; b < s.batch; ++b) {
    const T* row = qkv + b * row_size;
    const float* c = cos + b * d;
    const float* sn = signed_sin + b * d;
    for (int64_t h = 0; h < s.num_heads; ++h) {
      rotate(row + h * d, c, sn, queries + (b * s.num_heads + h) * d, d);
    }
    float* key_slot = key_cache + slots[b] * s.num_kv_heads * d;
    float* value_slot = value_cache + slots[b] * s.num_kv_heads * d;
    for (int64_t h = 0; h < s.num_kv_heads; ++h) {
      rotate(row + (s.num_heads + h) * d, c, sn, key_slot + h * d, d);
      const T* v = row + (s.num_heads + s.num_kv_heads + h) * d;
      for (int64_t i = 0; i < d; ++i) value_slot[h * d + i] = static_cast<float>(v[i]);
    }
  }
}

// Softmax attention of each query head over its sequence's context, read through the block table.
template <typename T>
void attend(const float* queries, const float* key_cache, const float* value_cache,
            const int64_t* block_tables, const int64_t* context_lens, T* out, const Shapes& s) {
  const int64_t d = s.head_dim;
  const int64_t group = s.num_heads / s.num_kv_heads;
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  const int64_t work = s.batch * s.num_heads;
  // One unit of work is a (sequence, head) pair; short contexts stay on one thread.
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, context_lens[0] * d));
  at::parallel_for(0, work, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<float> acc(d);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t b = unit / s.num_heads;
      const int64_t h = unit % s.num_heads;
      const int64_t kv_head = h / group;
      const int64_t context = context_lens[b];
      const int64_t* table = block_tables + b * s.max_blocks;
      const float* q = queries + unit * d;
      scores.resize(context);
      // Walk the context block by block: no division per key.
      float max_score = -std::numeric_limits<float>::infinity();
      for (int64_t start = 0; start < context; start += s.block_size) {
        const int64_t first_slot = table[start / s.block_size] * s.block_size;
        const int64_t count = std::min(s.block_size, context - start);
        for (int64_t j = 0; j < count; ++j) {
          const float* k = key_cache + ((first_slot + j) * s.num_kv_heads + kv_head) * d;
          float dot = 0.f;
          for (int64_t i = 0; i < d; ++i) dot += q[i] * k[i];
          scores[start + j] = dot * scale;
          max_score = std::max(max_score, scores[start + j]);
        }
      }
      float* p = scores.data();
      float total = 0.f;
      for (int64_t t = 0; t < context; ++t) {  // a loop of its own, so it vectorises
        p[t] = vector_exp(p[t] - max_score);
        total += p[t];
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t start = 0; start < context; start += s.block_size) {
        const int64_t first_slot = table[start / s.block_size] * s.block_size;
        const int64_t count = std::min(s.block_size, context - start);
        for (int64_t j = 0; j < count; ++j) {
          const float* v = value_cache + ((first_slot + j) * s.num_kv_heads + kv_head) * d;
          const float weight = p[start + j];
          for (int64_t i = 0; i < d; ++i) acc[i] += weight * v[i];
        }
      }
      T* o = out + unit * d;
      for (int64_t i = 0; i < d; ++i) o[i] = static_cast<T>(acc[i] / total);
    }
  });
}

template <typename T>
void silu_and_mul(const T* gate_up, T* out, int64_t rows, int64_t intermediate) {
  std::vector<float> gate(intermediate);
  std::vector<float> sigmoid(intermediate);
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = gate_up + r * 2 * intermediate;
    const T* up = row + intermediate;
    T* o = out + r * intermediate;
    for (int64_t i = 0; i < intermediate; ++i) gate[i] = static_cast<float>(row[i]);
    for (int64_t i = 0; i < intermediate; ++i) {  // plain floats only, so it vectorises
      sigmoid[i] = 1.f / (1.f + vector_exp(-gate[i]));
    }
    for (int64_t i = 0; i < intermediate; ++i) {
      const T activated = static_cast<T>(gate[i] * sigmoid[i]);
      o[i] = static_cast<T>(static_cast<float>(activated) * static_cast<float>(up[i]));
    }
  }
}

template <typename T>
void run_layers(at::Tensor& x, const std::vector<at::Tensor>& w, int64_t kind,
                const std::vector<at::Tensor>& kv_caches, const at::Tensor& slot_mapping,
                const at::Tensor& block_tables, const at::Tensor& context_lens, const at::Tensor& cos,
                const at::Tensor& signed_sin, Shapes s, double eps) {
  const int64_t hidden = x.size(1);
  const int64_t q_size = s.num_heads * s.head_dim;
  at::Tensor normed = at::empty_like(x);
  at::Tensor queries = at::empty({s.batch, s.num_heads, s.head_dim}, x.options().dtype(at::kFloat));
  at::Tensor attended = at::empty({s.batch, q_size}, x.options());
  at::Tensor activated;
  for (size_t layer = 0; layer < kv_caches.size(); ++layer) {
    const at::Tensor* lw = w.data() + layer * kTensorsPerLayer;
    const at::Tensor& cache = kv_caches[layer];  // [2, num_blocks, block_size, KVH, D] float32
    const int64_t half = cache.numel() / 2;

    rms_norm(x.data_ptr<T>(), lw[kInputNorm].data_ptr<T>(), normed.data_ptr<T>(), s.batch, hidden,
             static_cast<float>(eps));
    at::Tensor qkv = linear(normed, lw[kQkvWeight], lw[kQkvScales], lw[kQkvBias], kind);
    write_kv(qkv.data_ptr<T>(), cos.data_ptr<float>(), signed_sin.data_ptr<float>(),
             slot_mapping.data_ptr<int64_t>(), cache.data_ptr<float>(), cache.data_ptr<float>() + half,
             queries.data_ptr<float>(), s);
    attend(queries.data_ptr<float>(), cache.data_ptr<float>(), cache.data_ptr<float>() + half,
           block_tables.data_ptr<int64_t>(), context_lens.data_ptr<int64_t>(), attended.data_ptr<T>(), s);
    x.add_(linear(attended, lw[kOutWeight], lw[kOutScales], at::Tensor(), kind));

    rms_norm(x.data_ptr<T>(), lw[kPostNorm].data_ptr<T>(), normed.data_ptr<T>(), s.batch, hidden,
             static_cast<float>(eps));
    at::Tensor gate_up = linear(normed, lw[kGateUpWeight], lw[kGateUpScales], at::Tensor(), kind);
    const int64_t intermediate = gate_up.size(1) / 2;
    if (!activated.defined()) activated = at::empty({s.batch, intermediate}, x.options());
    silu_and_mul(gate_up.data_ptr<T>(), activated.data_ptr<T>(), s.batch, intermediate);
    x.add_(linear(activated, lw[kDownWeight], lw[kDownScales], at::Tensor(), kind));
  }
}

at::Tensor decode_layers(const at::Tensor& hidden, at::TensorList weights, int64_t weight_kind,
                         at::TensorList kv_caches, const at::Tensor& slot_mapping,
                         const at::Tensor& block_tables, const at::Tensor& context_lens,
                         const at::Tensor& cos, const at::Tensor& signed_sin, int64_t num_heads,
                         int64_t num_kv_heads, double eps) {
  TORCH_CHECK(hidden.dim() == 2 && hidden.is_contiguous(), "hidden must be a contiguous [B, hidden]");
  TORCH_CHECK(static_cast<int64_t>(weights.size()) ==
                  static_cast<int64_t>(kv_caches.size()) * kTensorsPerLayer,
              "expected ", kTensorsPerLayer, " weight tensors per layer");
  const at::Tensor& cache = kv_caches[0];
  TORCH_CHECK(cache.scalar_type() == at::kFloat && cache.is_contiguous(), "the KV cache must be float32");
  Shapes s{hidden.size(0), num_heads, num_kv_heads, cache.size(4), cache.size(2), block_tables.size(1)};
  std::vector<at::Tensor> w(weights.begin(), weights.end());
  std::vector<at::Tensor> caches(kv_caches.begin(), kv_caches.end());
  at::Tensor x = hidden.clone();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "decode_layers", [&] {
    run_layers<scalar_t>(x, w, weight_kind, caches, slot_mapping, block_tables, context_lens,
                         cos.contiguous(), signed_sin.contiguous(), s, eps);
  });
  return x;
}

}  // namespace

TORCH_LIBRARY(inferline_cpu, m) {
  m.def(
      "decode_layers(Tensor hidden, Tensor[] weights, int weight_kind, "
      "Tensor[] kv_caches, Tensor slot_mapping, Tensor block_tables, Tensor context_lens, Tensor cos, "
      "Tensor signed_sin, int num_heads, int num_kv_heads, float eps) -> Tensor");
  m.def("int4_linear(Tensor x, Tensor codes, Tensor scales_and_mins) -> Tensor");
  m.def("int4_dequantize(Tensor codes, Tensor scales_and_mins, ScalarType dtype) -> Tensor");
  m.def("int8_linear(Tensor x, Tensor codes, Tensor scales) -> Tensor");
}

TORCH_LIBRARY_IMPL(inferline_cpu, CPU, m) {
  m.impl("decode_layers", decode_layers);
  m.impl("int4_linear", int4_linear);
  m.impl("int4_dequantize", int4_dequantize);
  m.impl("int8_linear", int8_linear);
}
