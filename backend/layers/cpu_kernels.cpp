// Fused CPU kernels for the small operations of a decoder layer.
//
// Each one does in a single call what the reference path (plain torch) spells out op by op, so a
// one-row decode step stops paying per-op dispatch for them. Elementwise kernels round to the
// tensor's dtype wherever the reference does (bfloat16 and float16 products and sums are computed
// in float32 and rounded, as torch does); reductions accumulate in float32 or wider.
//
// Built at first use by backend/layers/fused.py and checked there against the reference path.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

template <typename T>
inline float widen(T value) {
  return static_cast<float>(value);
}

template <typename T>
inline T narrow(float value) {
  return static_cast<T>(value);  // round to nearest even for BFloat16 and Half
}

// The inner loops over head_dim: independent lanes so that the compiler vectorizes them without
// reassociating a sum; a clone for AVX2 is picked at run time where the CPU has it.
__attribute__((target_clones("avx2", "default"))) void dots(
    const float* queries, int64_t group, int64_t dim, const float* key, float* out) {
  for (int64_t h = 0; h < group; ++h) {
    const float* q = queries + h * dim;
    float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t d = 0;
    for (; d + 8 <= dim; d += 8) {
      for (int t = 0; t < 8; ++t) lanes[t] += q[d + t] * key[d + t];
    }
    float tail = 0;
    for (; d < dim; ++d) tail += q[d] * key[d];
    out[h] = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7])) + tail;
  }
}

__attribute__((target_clones("avx2", "default"))) void accumulate(
    const float* weights, int64_t group, int64_t dim, const float* value, float* out) {
  for (int64_t h = 0; h < group; ++h) {
    const float w = weights[h];
    float* o = out + h * dim;
    for (int64_t d = 0; d < dim; ++d) o[d] += w * value[d];
  }
}

template <typename T>
inline void widen_row(const T* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = widen(src[i]);
}

void check_cpu(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
}

// ---- RMSNorm ---------------------------------------------------------------------------------

template <typename T>
void rms_norm_rows(const T* x, int64_t x_stride, const T* weight, T* out, int64_t rows, int64_t n, double eps) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* row = x + r * x_stride;
      double squares = 0;
      for (int64_t i = 0; i < n; ++i) {
        const float v = widen(row[i]);
        squares += static_cast<double>(v) * v;
      }
      const float mean = static_cast<float>(squares / static_cast<double>(n));
      const float inv = 1.0f / std::sqrt(mean + static_cast<float>(eps));
      T* o = out + r * n;
      for (int64_t i = 0; i < n; ++i) {
        // weight * normalized.to(dtype), both products as the reference rounds them
        const T normalized = narrow<T>(widen(row[i]) * inv);
        o[i] = narrow<T>(widen(weight[i]) * widen(normalized));
      }
    }
  });
}

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  check_cpu(x, "x");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "x must be [rows, hidden] with contiguous rows");
  TORCH_CHECK(weight.is_contiguous() && weight.numel() == x.size(1) && weight.scalar_type() == x.scalar_type(),
              "weight must be [hidden] in x's dtype");
  auto out = torch::empty({x.size(0), x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm", [&] {
    rms_norm_rows<scalar_t>(x.data_ptr<scalar_t>(), x.stride(0), weight.data_ptr<scalar_t>(),
                            out.data_ptr<scalar_t>(), x.size(0), x.size(1), eps);
  });
  return out;
}

// residual + delta (rounded as the reference adds them), and the RMSNorm of that sum.
std::vector<torch::Tensor> add_rms_norm(const torch::Tensor& residual, const torch::Tensor& delta,
                                        const torch::Tensor& weight, double eps) {
  check_cpu(residual, "residual");
  TORCH_CHECK(residual.sizes() == delta.sizes() && residual.scalar_type() == delta.scalar_type(),
              "residual and delta must match");
  TORCH_CHECK(residual.dim() == 2 && residual.is_contiguous() && delta.is_contiguous(),
              "residual and delta must be contiguous [rows, hidden]");
  auto sum = torch::empty_like(residual);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, residual.scalar_type(), "add_rms_norm", [&] {
    const scalar_t* a = residual.data_ptr<scalar_t>();
    const scalar_t* b = delta.data_ptr<scalar_t>();
    scalar_t* s = sum.data_ptr<scalar_t>();
    const int64_t total = residual.numel();
    for (int64_t i = 0; i < total; ++i) s[i] = narrow<scalar_t>(widen(a[i]) + widen(b[i]));
  });
  return {sum, rms_norm(sum, weight, eps)};
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
    const scalar_t* c = cos.data_ptr<scalar_t>();
    const scalar_t* s = sin.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, tokens, 64, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const scalar_t* ct = c + t * dim;
        const scalar_t* st = s + t * dim;
        for (int64_t h = 0; h < heads; ++h) {
          const scalar_t* row = src + t * x.stride(0) + h * x.stride(1);
          scalar_t* dst = o + (t * heads + h) * dim;
          for (int64_t i = 0; i < dim; ++i) {
            const int64_t j = i < half ? i + half : i - half;
            const scalar_t a = narrow<scalar_t>(widen(row[i]) * widen(ct[i]));
            const scalar_t b = narrow<scalar_t>(widen(row[j]) * widen(st[i]));
            dst[i] = narrow<scalar_t>(widen(a) + widen(b));
          }
        }
      }
    });
  });
  return out;
}

// ---- SwiGLU ----------------------------------------------------------------------------------

// silu(gate) * up for gate_up = [gate | up] along the last dimension.
torch::Tensor silu_mul(const torch::Tensor& gate_up) {
  check_cpu(gate_up, "gate_up");
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.is_contiguous() && gate_up.size(1) % 2 == 0,
              "gate_up must be contiguous [rows, 2 * intermediate]");
  const int64_t rows = gate_up.size(0), width = gate_up.size(1) / 2;
  auto out = torch::empty({rows, width}, gate_up.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gate_up.scalar_type(), "silu_mul", [&] {
    const scalar_t* src = gate_up.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* gate = src + r * 2 * width;
        const scalar_t* up = gate + width;
        for (int64_t i = 0; i < width; ++i) {
          const float g = widen(gate[i]);
          const scalar_t activated = narrow<scalar_t>(g / (1.0f + std::exp(-g)));
          o[r * width + i] = narrow<scalar_t>(widen(activated) * widen(up[i]));
        }
      }
    });
  });
  return out;
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
      std::vector<float> queries(group * dim), row(dim), scores, acc(group * dim), weights(group);
      for (int64_t pair = begin; pair < end; ++pair) {
        const int64_t s = pair / kv_heads, g = pair % kv_heads, len = lens[s];
        for (int64_t h = 0; h < group; ++h) {
          const scalar_t* qrow = q.data_ptr<scalar_t>() + s * q.stride(0) + (g * group + h) * q.stride(1);
          for (int64_t d = 0; d < dim; ++d) queries[h * dim + d] = widen(narrow<scalar_t>(widen(qrow[d]) * scale_f));
        }
        scores.resize(len * group);
        const int64_t* table = tables + s * max_blocks;
        const scalar_t* head_keys = keys + g * num_blocks * block_size * dim;
        const scalar_t* head_values = values + g * num_blocks * block_size * dim;
        for (int64_t j = 0; j < len; ++j) {
          widen_row(head_keys + (table[j / block_size] * block_size + j % block_size) * dim, dim, row.data());
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
          widen_row(head_values + (table[j / block_size] * block_size + j % block_size) * dim, dim, row.data());
          accumulate(scores.data() + j * group, group, dim, row.data(), acc.data());
        }
        scalar_t* o = out.data_ptr<scalar_t>() + (s * heads + g * group) * dim;
        for (int64_t i = 0; i < group * dim; ++i) o[i] = narrow<scalar_t>(acc[i]);
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
