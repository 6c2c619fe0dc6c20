// Fused CPU kernels for the small operations of a decoder layer.
//
// Each one does in a single call what the reference path (plain torch) spells out op by op, so a
// one-row decode step stops paying per-op dispatch for them. Elementwise kernels round to the
// tensor's dtype wherever the reference does (bfloat16 and float16 products and sums are computed
// in float32 and rounded, as torch does); reductions accumulate in float32.
//
// Built at first use by backend/layers/fused.py and checked there against the reference path.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// The float32 loops below are compiled twice (target_clones): an AVX2 clone is picked at run time
// where the CPU has it, so the build itself stays portable.

// Eight independent lanes, so that the compiler vectorizes the sum without reassociating it;
// inlined into each clone that calls it.
inline __attribute__((always_inline)) float dot(const float* a, const float* b, int64_t n) {
  float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int t = 0; t < 8; ++t) lanes[t] += a[i + t] * b[i + t];
  }
  float tail = 0;
  for (; i < n; ++i) tail += a[i] * b[i];
  return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7])) + tail;
}

// Each of ``group`` query rows against one key row.
__attribute__((target_clones("avx2", "default"))) void dots(
    const float* queries, int64_t group, int64_t dim, const float* key, float* out) {
  for (int64_t h = 0; h < group; ++h) out[h] = dot(queries + h * dim, key, dim);
}

__attribute__((target_clones("avx2", "default"))) void accumulate(
    const float* weights, int64_t group, int64_t dim, const float* value, float* out) {
  for (int64_t h = 0; h < group; ++h) {
    const float w = weights[h];
    float* o = out + h * dim;
    for (int64_t d = 0; d < dim; ++d) o[d] += w * value[d];
  }
}

void check_cpu(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
}

// ---- rows in float32, rounded as the dtype rounds ---------------------------------------------

inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Each value rounded to bfloat16 and back, as c10::BFloat16 rounds (nearest even, NaN stays NaN),
// written so that the loop vectorizes.
__attribute__((target_clones("avx2", "default"))) void round_bf16(float* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = bits_of(v[i]);
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    v[i] = v[i] != v[i] ? float_of(0x7FC00000u) : float_of(rounded);
  }
}

__attribute__((target_clones("avx2", "default"))) float sum_of_squares(const float* v, int64_t n) {
  return dot(v, v, n);
}

__attribute__((target_clones("avx2", "default"))) void scale_by(float* v, float factor, int64_t n) {
  for (int64_t i = 0; i < n; ++i) v[i] *= factor;
}

__attribute__((target_clones("avx2", "default"))) void multiply(const float* a, const float* b, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] * b[i];
}

__attribute__((target_clones("avx2", "default"))) void add(const float* a, const float* b, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

// Loads, rounding and stores for one dtype: float32 (rounding is the identity), bfloat16 (by bits,
// vectorized) and float16 (through c10::Half, one value at a time).
template <typename T>
struct Rows {
  static void load(const T* src, int64_t n, float* dst) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  }
  static void round(float* v, int64_t n) {
    for (int64_t i = 0; i < n; ++i) v[i] = static_cast<float>(static_cast<T>(v[i]));
  }
  static void store(const float* rounded, int64_t n, T* dst) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(rounded[i]);
  }
};

template <>
struct Rows<float> {
  static void load(const float* src, int64_t n, float* dst) { std::memcpy(dst, src, n * sizeof(float)); }
  static void round(float*, int64_t) {}
  static void store(const float* rounded, int64_t n, float* dst) { std::memcpy(dst, rounded, n * sizeof(float)); }
};

template <>
struct Rows<c10::BFloat16> {
  static void load(const c10::BFloat16* src, int64_t n, float* dst) {
    const uint16_t* bits = reinterpret_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = float_of(static_cast<uint32_t>(bits[i]) << 16);
  }
  static void round(float* v, int64_t n) { round_bf16(v, n); }
  static void store(const float* rounded, int64_t n, c10::BFloat16* dst) {
    uint16_t* bits = reinterpret_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) bits[i] = static_cast<uint16_t>(bits_of(rounded[i]) >> 16);
  }
};

// ---- RMSNorm ---------------------------------------------------------------------------------

// Rows of x (and, with delta, x + delta rounded to the dtype, stored in sum) normalized in float32,
// rounded, then multiplied by the weight and rounded again: the reference's
// ``weight * rms_norm(x.float()).to(dtype)``.
template <typename T>
void rms_norm_rows(const T* x, const T* delta, T* sum, const T* weight, T* out, int64_t rows, int64_t n, double eps) {
  std::vector<float> w(n);
  Rows<T>::load(weight, n, w.data());
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> v(n), other(n);
    for (int64_t r = begin; r < end; ++r) {
      Rows<T>::load(x + r * n, n, v.data());
      if (delta != nullptr) {
        Rows<T>::load(delta + r * n, n, other.data());
        add(v.data(), other.data(), v.data(), n);
        Rows<T>::round(v.data(), n);
        Rows<T>::store(v.data(), n, sum + r * n);
      }
      const float mean = sum_of_squares(v.data(), n) / static_cast<float>(n);
      const float inv = 1.0f / std::sqrt(mean + static_cast<float>(eps));
      scale_by(v.data(), inv, n);
      Rows<T>::round(v.data(), n);
      multiply(v.data(), w.data(), v.data(), n);
      Rows<T>::round(v.data(), n);
      Rows<T>::store(v.data(), n, out + r * n);
    }
  });
}

void check_norm_args(const torch::Tensor& x, const torch::Tensor& weight) {
  check_cpu(x, "x");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be contiguous [rows, hidden]");
  TORCH_CHECK(weight.is_contiguous() && weight.numel() == x.size(1) && weight.scalar_type() == x.scalar_type(),
              "weight must be [hidden] in x's dtype");
}

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  check_norm_args(x, weight);
  auto out = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm", [&] {
    rms_norm_rows<scalar_t>(x.data_ptr<scalar_t>(), nullptr, nullptr, weight.data_ptr<scalar_t>(),
                            out.data_ptr<scalar_t>(), x.size(0), x.size(1), eps);
  });
  return out;
}

// residual + delta (rounded as the reference adds them), and the RMSNorm of that sum.
std::vector<torch::Tensor> add_rms_norm(const torch::Tensor& residual, const torch::Tensor& delta,
                                        const torch::Tensor& weight, double eps) {
  check_norm_args(residual, weight);
  TORCH_CHECK(residual.sizes() == delta.sizes() && residual.scalar_type() == delta.scalar_type() &&
                  delta.is_contiguous(),
              "delta must be contiguous and match residual");
  auto sum = torch::empty_like(residual);
  auto out = torch::empty_like(residual);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, residual.scalar_type(), "add_rms_norm", [&] {
    rms_norm_rows<scalar_t>(residual.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), sum.data_ptr<scalar_t>(),
                            weight.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), residual.size(0),
                            residual.size(1), eps);
  });
  return {sum, out};
}

// ---- rotary embedding ------------------------------------------------------------------------

// x * cos + roll(x, dim / 2) * sin over [tokens, heads, dim], with sin's first half negated by the
// caller (the reference's "rotate half" as a roll); each product and the sum rounded as torch does.
torch::Tensor rotary(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  check_cpu(x, "x");
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1, "x must be [tokens, heads, dim] with contiguous rows");
  const int64_t tokens = x.size(0), heads = x.size(1), dim = x.size(2), half = dim / 2;
  TORCH_CHECK(dim % 2 == 0, "head_dim must be even");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.numel() == tokens * dim && sin.numel() == tokens * dim,
              "cos and sin must be contiguous [tokens, 1, dim]");
  TORCH_CHECK(cos.scalar_type() == x.scalar_type() && sin.scalar_type() == x.scalar_type(),
              "cos and sin must be in x's dtype");
  auto out = torch::empty({tokens, heads, dim}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rotary", [&] {
    const scalar_t* src = x.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, tokens, 64, [&](int64_t begin, int64_t end) {
      std::vector<float> c(dim), s(dim), row(dim), rolled(dim), a(dim), b(dim);
      for (int64_t t = begin; t < end; ++t) {
        Rows<scalar_t>::load(cos.data_ptr<scalar_t>() + t * dim, dim, c.data());
        Rows<scalar_t>::load(sin.data_ptr<scalar_t>() + t * dim, dim, s.data());
        for (int64_t h = 0; h < heads; ++h) {
          Rows<scalar_t>::load(src + t * x.stride(0) + h * x.stride(1), dim, row.data());
          std::memcpy(rolled.data(), row.data() + half, half * sizeof(float));
          std::memcpy(rolled.data() + half, row.data(), half * sizeof(float));
          multiply(row.data(), c.data(), a.data(), dim);
          Rows<scalar_t>::round(a.data(), dim);
          multiply(rolled.data(), s.data(), b.data(), dim);
          Rows<scalar_t>::round(b.data(), dim);
          add(a.data(), b.data(), a.data(), dim);
          Rows<scalar_t>::round(a.data(), dim);
          Rows<scalar_t>::store(a.data(), dim, o + (t * heads + h) * dim);
        }
      }
    });
  });
  return out;
}

// ---- SwiGLU ----------------------------------------------------------------------------------

// silu(gate) * up for gate_up = [gate | up] along the last dimension: torch's own vectorized silu
// and product (bit for bit the reference), called from here so that one call from Python does both.
torch::Tensor silu_mul(const torch::Tensor& gate_up) {
  check_cpu(gate_up, "gate_up");
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.size(1) % 2 == 0, "gate_up must be [rows, 2 * intermediate]");
  const auto halves = gate_up.chunk(2, -1);
  return at::mul(at::silu(halves[0]), halves[1]);
}

// ---- paged decode attention ------------------------------------------------------------------

// One query per sequence against its cached keys and values, read in place through its block
// table: no gathered copy, no padding. q: [seqs, heads, dim]; k_cache, v_cache: [kv_heads, blocks,
// block_size, dim]; block_tables: [seqs, max_blocks] int64; context_lens: [seqs] int64.
// Scores, softmax and the weighted sum in float32; the query is scaled in its own dtype first,
// as the reference does.
torch::Tensor decode_attention(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                               const torch::Tensor& block_tables, const torch::Tensor& context_lens, double scale) {
  check_cpu(q, "q");
  TORCH_CHECK(q.dim() == 3 && q.stride(2) == 1, "q must be [seqs, heads, dim] with contiguous rows");
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  k_cache.sizes() == v_cache.sizes(),
              "k_cache and v_cache must be contiguous [kv_heads, blocks, block_size, dim]");
  TORCH_CHECK(k_cache.scalar_type() == q.scalar_type() && v_cache.scalar_type() == q.scalar_type(),
              "the cache must be in q's dtype");
  TORCH_CHECK(block_tables.scalar_type() == at::kLong && block_tables.dim() == 2 && block_tables.is_contiguous(),
              "block_tables must be contiguous int64 [seqs, max_blocks]");
  TORCH_CHECK(context_lens.scalar_type() == at::kLong && context_lens.is_contiguous(), "context_lens must be int64");
  const int64_t seqs = q.size(0), heads = q.size(1), dim = q.size(2);
  const int64_t kv_heads = k_cache.size(0), num_blocks = k_cache.size(1), block_size = k_cache.size(2);
  TORCH_CHECK(k_cache.size(3) == dim && heads % kv_heads == 0, "head counts or sizes disagree");
  TORCH_CHECK(block_tables.size(0) == seqs && context_lens.numel() == seqs, "one block table and length per query");
  const int64_t group = heads / kv_heads, max_blocks = block_tables.size(1);
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t* lens = context_lens.data_ptr<int64_t>();
  int64_t work = 0;
  for (int64_t s = 0; s < seqs; ++s) {
    TORCH_CHECK(lens[s] > 0 && lens[s] <= max_blocks * block_size, "context length out of range");
    for (int64_t b = 0; b < (lens[s] + block_size - 1) / block_size; ++b) {
      const int64_t block = tables[s * max_blocks + b];
      TORCH_CHECK(block >= 0 && block < num_blocks, "block id out of range");
    }
    work += lens[s];
  }
  auto out = torch::empty({seqs, heads, dim}, q.options());
  const float scale_f = static_cast<float>(scale);
  // Split (sequence, kv head) pairs across threads only when there is enough to split.
  const int64_t grain = work * kv_heads * group * dim < (1 << 16) ? seqs * kv_heads : 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "decode_attention", [&] {
    const scalar_t* keys = k_cache.data_ptr<scalar_t>();
    const scalar_t* values = v_cache.data_ptr<scalar_t>();
    at::parallel_for(0, seqs * kv_heads, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> queries(group * dim), row(dim), scores, acc(group * dim);
      for (int64_t pair = begin; pair < end; ++pair) {
        const int64_t s = pair / kv_heads, g = pair % kv_heads, len = lens[s];
        for (int64_t h = 0; h < group; ++h) {
          const scalar_t* qrow = q.data_ptr<scalar_t>() + s * q.stride(0) + (g * group + h) * q.stride(1);
          Rows<scalar_t>::load(qrow, dim, queries.data() + h * dim);
        }
        scale_by(queries.data(), scale_f, group * dim);
        Rows<scalar_t>::round(queries.data(), group * dim);
        scores.resize(len * group);
        const int64_t* table = tables + s * max_blocks;
        const scalar_t* head_keys = keys + g * num_blocks * block_size * dim;
        const scalar_t* head_values = values + g * num_blocks * block_size * dim;
        for (int64_t j = 0; j < len; ++j) {
          Rows<scalar_t>::load(head_keys + (table[j / block_size] * block_size + j % block_size) * dim, dim, row.data());
          dots(queries.data(), group, dim, row.data(), scores.data() + j * group);
        }
        for (int64_t h = 0; h < group; ++h) {
          float top = -INFINITY;
          for (int64_t j = 0; j < len; ++j) top = std::max(top, scores[j * group + h]);
          float total = 0;
          for (int64_t j = 0; j < len; ++j) {
            const float e = std::exp(scores[j * group + h] - top);
            scores[j * group + h] = e;
            total += e;
          }
          for (int64_t j = 0; j < len; ++j) scores[j * group + h] /= total;
        }
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t j = 0; j < len; ++j) {
          Rows<scalar_t>::load(head_values + (table[j / block_size] * block_size + j % block_size) * dim, dim, row.data());
          accumulate(scores.data() + j * group, group, dim, row.data(), acc.data());
        }
        Rows<scalar_t>::round(acc.data(), group * dim);
        Rows<scalar_t>::store(acc.data(), group * dim, out.data_ptr<scalar_t>() + (s * heads + g * group) * dim);
      }
    });
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rms_norm", &rms_norm, "RMSNorm of each row");
  m.def("add_rms_norm", &add_rms_norm, "residual + delta, and its RMSNorm");
  m.def("rotary", &rotary, "rotary embedding of [tokens, heads, dim]");
  m.def("silu_mul", &silu_mul, "silu(gate) * up");
  m.def("decode_attention", &decode_attention, "one query per sequence over its paged KV cache");
}
