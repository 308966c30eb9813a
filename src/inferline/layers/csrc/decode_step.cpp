// All decoder layers of a Llama-family model for one small decode batch, in one call.
//
// A decode step of a small model is mostly overhead when it is run op by op from Python: ~45 eager
// ops a layer, each paying dispatch and an allocation, around four weight kernels that do the real
// work. Here the weight kernels are the same ATen kernels the eager path calls, and everything between
// them (RMSNorm, rotary, the KV write, attention over the paged cache, SiLU-and-multiply) is a plain
// loop over the batch's few rows. Attention reads keys and values in place through the block table:
// nothing is gathered or padded. Rounding follows the eager path step by step (norm in float32, its
// output in the model's dtype, q/k/v and attention in float32, the attention output rounded back), so
// both paths agree to the last bit or two.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

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
                  const at::Tensor& bias, int64_t kind, int64_t group_size) {
  const bool has_bias = bias.defined() && bias.numel() > 0;
  if (kind == kDense) {
    return at::linear(x, weight, has_bias ? std::optional<at::Tensor>(bias) : std::nullopt);
  }
  at::Tensor y = kind == kInt8 ? at::_weight_int8pack_mm(x, weight, scales)
                               : at::_weight_int4pack_mm_for_cpu(x, weight, group_size, scales);
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
void run_layers(at::Tensor& x, const std::vector<at::Tensor>& w, int64_t kind, int64_t group_size,
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
    at::Tensor qkv = linear(normed, lw[kQkvWeight], lw[kQkvScales], lw[kQkvBias], kind, group_size);
    write_kv(qkv.data_ptr<T>(), cos.data_ptr<float>(), signed_sin.data_ptr<float>(),
             slot_mapping.data_ptr<int64_t>(), cache.data_ptr<float>(), cache.data_ptr<float>() + half,
             queries.data_ptr<float>(), s);
    attend(queries.data_ptr<float>(), cache.data_ptr<float>(), cache.data_ptr<float>() + half,
           block_tables.data_ptr<int64_t>(), context_lens.data_ptr<int64_t>(), attended.data_ptr<T>(), s);
    x.add_(linear(attended, lw[kOutWeight], lw[kOutScales], at::Tensor(), kind, group_size));

    rms_norm(x.data_ptr<T>(), lw[kPostNorm].data_ptr<T>(), normed.data_ptr<T>(), s.batch, hidden,
             static_cast<float>(eps));
    at::Tensor gate_up = linear(normed, lw[kGateUpWeight], lw[kGateUpScales], at::Tensor(), kind, group_size);
    const int64_t intermediate = gate_up.size(1) / 2;
    if (!activated.defined()) activated = at::empty({s.batch, intermediate}, x.options());
    silu_and_mul(gate_up.data_ptr<T>(), activated.data_ptr<T>(), s.batch, intermediate);
    x.add_(linear(activated, lw[kDownWeight], lw[kDownScales], at::Tensor(), kind, group_size));
  }
}

at::Tensor decode_layers(const at::Tensor& hidden, at::TensorList weights, int64_t weight_kind,
                         int64_t group_size, at::TensorList kv_caches, const at::Tensor& slot_mapping,
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
    run_layers<scalar_t>(x, w, weight_kind, group_size, caches, slot_mapping, block_tables, context_lens,
                         cos.contiguous(), signed_sin.contiguous(), s, eps);
  });
  return x;
}

}  // namespace

TORCH_LIBRARY(inferline_cpu, m) {
  m.def(
      "decode_layers(Tensor hidden, Tensor[] weights, int weight_kind, int group_size, "
      "Tensor[] kv_caches, Tensor slot_mapping, Tensor block_tables, Tensor context_lens, Tensor cos, "
      "Tensor signed_sin, int num_heads, int num_kv_heads, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(inferline_cpu, CPU, m) { m.impl("decode_layers", decode_layers); }
